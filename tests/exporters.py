"""The series each exporter in the stack serves, as Prometheus stores them, with where each list comes from.

The gateway's are read from its metrics module itself (every sample name its registry exposes); the engines' and
kube-state-metrics' are copied from their sources (cited), since none of them runs here.
"""

from __future__ import annotations

import re

import pytest

# vLLM 0.11, vllm/v1/metrics/loggers.py (PrometheusStatLogger): gauges, counters (prometheus_client adds `_total`)
# and the TTFT histogram (`_bucket`, `_sum`, `_count`); every series carries `model_name` and `engine`.
VLLM = frozenset({
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    *(f"vllm:time_to_first_token_seconds{suffix}" for suffix in ("_bucket", "_sum", "_count")),
})

# llama.cpp server (ggml-org/llama.cpp tools/server, `server_task_result_metrics::to_metrics`), with `--metrics`:
# the `llamacpp:` prefix, counters and gauges without labels.
LLAMA_CPP = frozenset(f"llamacpp:{name}" for name in (
    "prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total", "tokens_predicted_total",
    "tokens_predicted_seconds_total", "n_decode_total", "n_tokens_max", "prompt_tokens_seconds",
    "predicted_tokens_seconds", "requests_processing", "requests_deferred", "n_busy_slots_per_decode",
))

# kube-state-metrics v2 (docs/metrics/workload/deployment-metrics.md), labels `namespace` and `deployment`.
KUBE_STATE_METRICS = frozenset({
    "kube_deployment_spec_replicas", "kube_deployment_status_replicas", "kube_deployment_status_replicas_ready",
    "kube_deployment_status_replicas_available",
})


def gateway_series() -> dict[str, frozenset[str]]:
    """Each sample name the gateway exposes -> its label names."""
    # The gateway's own pinned requirements (app/requirements.txt), which the run at the dependency floors
    # (.ci/test-lowest-versions) leaves out; the whole suite has them.
    pytest.importorskip("prometheus_client", reason="the gateway's requirements (app/requirements.txt) are not installed")
    from prometheus_client.metrics import MetricWrapperBase

    from app.model_gateway.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    # A labelled family has no samples until a child is made, so its label names come from its declaration.
    declared = {metric._name: metric._labelnames for metric in vars(metrics).values()
                if isinstance(metric, MetricWrapperBase)}
    series: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        labels = family.samples[0].labels.keys() if family.samples else declared.get(family.name, ())
        names = {family.name, f"{family.name}_total", *(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count", "_created"))}
        for name in names:
            series[name] = frozenset(labels) - {"le"}
        for sample in family.samples:
            series[sample.name] = frozenset(sample.labels) - {"le"}
    return series


def exported_names() -> frozenset[str]:
    return frozenset({*VLLM, *LLAMA_CPP, *KUBE_STATE_METRICS, *gateway_series()})


# PromQL words that are not metric names: functions and aggregations (followed by `(`) are skipped by position;
# these are the keywords and modifiers.
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                       "offset", "vector", "inf", "nan"})
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[[^\]]*\]|\{[^}]*\}|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)")
_SELECTOR = re.compile(r"(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)\{(?P<matchers>[^}]*)\}")
_MATCHER = re.compile(r'(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, label matchers, ranges and grouping lists skipped)."""
    names = set()
    for match in _TOKEN.finditer(_GROUPING.sub(" ", expression)):
        name = match["name"]
        if name and not match["call"] and name not in _KEYWORDS:
            names.add(name)
    return names


def selected_labels(expression: str) -> dict[str, set[str]]:
    """Metric name -> the label names its selectors match on."""
    selected: dict[str, set[str]] = {}
    for match in _SELECTOR.finditer(expression):
        selected.setdefault(match["name"], set()).update(m["label"] for m in _MATCHER.finditer(match["matchers"]))
    return selected
