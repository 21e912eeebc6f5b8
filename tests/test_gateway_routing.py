"""Promise: the gateway routes each model over its replicas as the model's `routing` says, on every runtime:
Deployment runners get a headless Service the gateway finds the ready pods through, a policy (prefix affinity by
default, prod included) and an admission limit derived from the engine's batch capacity; Knative runners and the
Docker runtime keep one upstream; settings that cannot apply are refused by key."""

from __future__ import annotations

import json

import pytest

from components.engines import ENGINES
from harness import Evaluation, assert_rejected, evaluate
from stacks.config.runner import ModelConfig
from test_gateway_settings import gateway_env


def routing(evaluation: Evaluation) -> dict:
    return json.loads(gateway_env(evaluation)["GATEWAY_ROUTING"])


def test_prod_routes_by_prefix_over_the_ready_pods_of_a_headless_service():
    prod = evaluate("prod")
    chat, embed = "Qwen/Qwen2.5-7B-Instruct", "nomic-ai/nomic-embed-text-v1.5-GGUF/nomic-embed-text-v1.5.Q8_0.gguf"
    assert routing(prod) == {
        chat: {"policy": "prefix", "loadFactor": 1.25, "maxInFlightPerReplica": 256, "maxWaitSeconds": 30.0,
               "holdSeconds": 900, "replicasHost": "replicas-model-runner-chat.models.svc.cluster.local."},
        embed: {"policy": "prefix", "loadFactor": 1.25, "maxInFlightPerReplica": 4, "maxWaitSeconds": 30.0,
                "holdSeconds": 300, "replicasHost": "replicas-model-runner-embed.models.svc.cluster.local."},
    }
    services = {obj["metadata"]["name"]: obj for _, obj in prod.kubernetes_objects() if obj["kind"] == "Service"}
    headless = services["replicas-model-runner-chat"]["spec"]
    runner = services["model-runner-chat"]["spec"]
    # The same pods and port as the runner's own Service, listed one by one in DNS instead of behind one IP.
    assert headless["clusterIP"] == "None" and "publishNotReadyAddresses" not in headless
    assert headless["selector"] == runner["selector"] and headless["ports"] == runner["ports"]
    assert "replicas-gateway" not in services


def test_the_in_flight_limit_follows_the_engines_batch_capacity_unless_set():
    assert routing(evaluate("prod", set={"models.chat.args": ["--max-num-seqs=32", "--max-model-len=8192"]}))[
        "Qwen/Qwen2.5-7B-Instruct"]["maxInFlightPerReplica"] == 32
    vllm = {"engine": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct"}
    assert ModelConfig(**vllm, args=["--max-num-seqs", "64"]).in_flight_limit() == 64
    assert ModelConfig(**vllm, args=["--max-num-seqs", "64"], routing={"maxInFlightPerReplica": 8}).in_flight_limit() == 8


@pytest.mark.parametrize("engine,args,env,capacity", [
    ("llama.cpp", [], {}, 4),
    ("llama.cpp", ["-np", "2"], {}, 2),
    ("llama.cpp", ["--parallel=3"], {"LLAMA_ARG_N_PARALLEL": "8"}, 3),
    ("llama.cpp", [], {"LLAMA_ARG_N_PARALLEL": "6"}, 6),
    ("llama.cpp", ["-np", "-1"], {}, 4),  # automatic
    ("vllm", [], {}, 256),
    ("ollama", [], {}, 1),
    ("ollama", [], {"OLLAMA_NUM_PARALLEL": "4"}, 4),
    ("docker-model-runner", [], {}, 4),
])
def test_batch_capacity_is_read_from_the_engines_own_flags_and_variables(engine, args, env, capacity):
    assert ENGINES[engine].batch_capacity(args, env) == capacity


def test_knative_runners_keep_one_upstream_and_refuse_routing_settings():
    dev = evaluate("dev", set={"models.chat.workload": "knative", "models.chat.scaling": {"minReplicas": 0}})
    models = json.loads(gateway_env(dev)["GATEWAY_MODELS"])
    chat = next(model for model, url in models.items() if "model-runner-chat" in url)
    assert chat not in routing(dev)
    assert_rejected("dev", {"models.chat.workload": "knative", "models.chat.routing.policy": "random"},
                    "models.chat.routing.policy", "Knative")


def test_the_docker_runtime_admits_to_its_one_engine_without_a_policy():
    local = evaluate("local", set={"runner.routing.maxWaitSeconds": 5})
    [entry] = routing(local).values()
    assert entry == {"maxInFlightPerReplica": 4, "maxWaitSeconds": 5.0, "holdSeconds": 120}
    assert_rejected("local", {"runner.routing.policy": "least-loaded"}, "runner.routing.policy", "one engine per model")
    assert_rejected("local", {"runner.routing.loadFactor": 2}, "runner.routing.loadFactor", "one engine per model")


def test_the_load_factor_reaches_the_gateway_for_prefix_affinity_only():
    chat = "Qwen/Qwen2.5-7B-Instruct"
    assert routing(evaluate("prod", set={"models.chat.routing.loadFactor": 2}))[chat]["loadFactor"] == 2.0
    assert "loadFactor" not in routing(evaluate("prod", set={"models.chat.routing.policy": "least-loaded"}))[chat]
    assert_rejected("prod", {"models.chat.routing.policy": "random", "models.chat.routing.loadFactor": 2},
                    "models.chat.routing.loadFactor", "applies to routing.policy prefix only (the policy is random)")


@pytest.mark.parametrize("key,value,text", [
    ("models.chat.routing.policy", "connection", "prefix"),
    ("models.chat.routing.maxInFlightPerReplica", 0, "greater than or equal to 1"),
    ("models.chat.routing.maxWaitSeconds", -1, "greater than or equal to 0"),
    ("models.chat.routing.loadFactor", 0.5, "greater than or equal to 1"),
    ("models.chat.routing.loadFactor", 11, "less than or equal to 10"),
    ("models.chat.routing.maxInflight", 2, "unknown key"),
])
def test_bad_routing_settings_are_refused_by_key(key, value, text):
    assert_rejected("prod", {key: value}, key, text)
