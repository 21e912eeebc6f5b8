"""How loaded a served model is, per engine, as PromQL over what the stack scrapes.

The load of a model is its requests waiting plus its requests running, summed over its replicas; the autoscaler
divides it by the replica count and aims for a target per replica. Where each number comes from:
- vLLM exports both on its API port's /metrics (`vllm:num_requests_waiting`: queued for a batch slot or KV cache;
  `vllm:num_requests_running`: in the running batch), from vllm/v1/metrics/loggers.py.
- llama.cpp's server exports them with `--metrics` (`llamacpp:requests_deferred`: waiting for a free slot;
  `llamacpp:requests_processing`: holding a slot), from tools/server (`server_task_result_metrics::to_metrics`).
- Ollama and Docker Model Runner export nothing, so the gateway's per-model gauges stand in:
  `gateway_requests_waiting{model}` (held by the gateway, e.g. while the model has no ready replica) and
  `gateway_replica_requests_in_flight{model}` (relayed to the engine, queued there or decoding; per replica).

Targets are each engine's batch capacity per replica: a replica at its target decodes every request it holds,
and above it requests queue, which is when another replica pays for its start. Where a deployment knows its
capacity better (`--max-num-seqs`, `--parallel`, `OLLAMA_NUM_PARALLEL`, a bigger GPU), `scaling.targetRequests`
says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Labels the scrape configuration puts on every scraped series: the pod's namespace and its workload name (the
# pod's `app.kubernetes.io/name`), so a query selects one model's replicas without knowing pod names.
NAMESPACE_LABEL = "namespace"
WORKLOAD_LABEL = "workload"
# The gateway labels its per-model series with the model id clients send.
MODEL_LABEL = "model"
GATEWAY_WAITING = "gateway_requests_waiting"
GATEWAY_IN_FLIGHT = "gateway_replica_requests_in_flight"


@dataclass(frozen=True)
class EngineSignal:
    source: Literal["engine", "gateway"]
    """`engine`: the engine's own /metrics; `gateway`: the gateway's per-model gauges."""

    waiting: str
    running: str
    target: int
    """Default requests waiting + running per replica."""

    basis: str
    """Why that target: the batch capacity it stands for."""


SIGNALS: dict[str, EngineSignal] = {
    "vllm": EngineSignal(
        "engine", "vllm:num_requests_waiting", "vllm:num_requests_running", 32,
        "the sequences one replica batches: the KV cache, not --max-num-seqs (256), bounds it; a 7B model in bf16 "
        "on one 24 GB GPU at --gpu-memory-utilization 0.9 keeps about 85k tokens of KV cache, 32 sequences of "
        "2.5k tokens"),
    "llama.cpp": EngineSignal(
        "engine", "llamacpp:requests_deferred", "llamacpp:requests_processing", 4,
        "the server's slots: --parallel defaults to auto, which is 4 slots with the unified KV cache"),
    "ollama": EngineSignal(
        "gateway", GATEWAY_WAITING, GATEWAY_IN_FLIGHT, 1,
        "OLLAMA_NUM_PARALLEL defaults to 1: a second request per replica waits for the first to finish"),
    "docker-model-runner": EngineSignal(
        "gateway", GATEWAY_WAITING, GATEWAY_IN_FLIGHT, 4,
        "its llama.cpp backend's slots (llama.cpp's default of 4 is assumed; Docker Model Runner does not "
        "document its own)"),
}


@dataclass(frozen=True)
class ServedModelRef:
    """What a query needs to select one model's series."""

    namespace: str
    workload: str
    """Name of the model's engine workload (its pods' `app.kubernetes.io/name`)."""

    model: str
    """The model id clients send (the gateway's `model` label)."""

    engine: str


def _selector(ref: ServedModelRef, source: str) -> str:
    if source == "gateway":
        return f'{{{NAMESPACE_LABEL}="{ref.namespace}",{MODEL_LABEL}="{ref.model}"}}'
    return f'{{{NAMESPACE_LABEL}="{ref.namespace}",{WORKLOAD_LABEL}="{ref.workload}"}}'


def waiting_query(ref: ServedModelRef) -> str:
    signal = SIGNALS[ref.engine]
    return f"sum({signal.waiting}{_selector(ref, signal.source)}) or vector(0)"


def running_query(ref: ServedModelRef) -> str:
    signal = SIGNALS[ref.engine]
    return f"sum({signal.running}{_selector(ref, signal.source)}) or vector(0)"


def load_query(ref: ServedModelRef) -> str:
    """Requests waiting plus running for the model, over all its replicas (0 when none is scraped)."""
    return f"({waiting_query(ref)}) + ({running_query(ref)})"


def held_query(ref: ServedModelRef) -> str:
    """Requests the gateway holds for the model: what wakes a model scaled to zero, whose engine exports nothing
    while it has no replica."""
    return f"sum({GATEWAY_WAITING}{_selector(ref, 'gateway')}) or vector(0)"
