"""The stack's Grafana dashboard, as code: one row per served model.

Each row shows, for its model: requests and errors (the gateway's), time to first token p50/p95, tokens per
second, requests waiting and running (the autoscaling signal, from the engine or the gateway: see
`inference_signals`), and replicas wanted and ready (kube-state-metrics). Every query reads a series something in
the stack exports; tests/test_inference_metrics.py checks each name against the exporters.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from .inference_signals import MODEL_LABEL, NAMESPACE_LABEL, ServedModelRef, running_query, waiting_query

DASHBOARD_UID = "model-stack"
# Grafana's dashboard sidecar (kube-prometheus-stack, the Grafana chart) loads every ConfigMap with this label.
SIDECAR_LABEL = ("grafana_dashboard", "1")
RATE_WINDOW = "5m"
_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# TTFT per model: vLLM measures it itself; for other engines the gateway's first-byte histogram of streamed answers
# (all models together: it carries no model label).
_ENGINE_TTFT = {"vllm": "vllm:time_to_first_token_seconds_bucket"}
_GATEWAY_TTFT = "gateway_stream_first_byte_seconds_bucket"


def _gateway(ref: ServedModelRef, extra: str = "") -> str:
    return f'{{{NAMESPACE_LABEL}="{ref.namespace}",{MODEL_LABEL}="{ref.model}"{extra}}}'


def _engine(ref: ServedModelRef) -> str:
    return f'{{{NAMESPACE_LABEL}="{ref.namespace}",workload="{ref.workload}"}}'


def _deployment(ref: ServedModelRef) -> str:
    # A Knative model's Deployments are its revisions', `<service>-<generation>-deployment`.
    return f'{{namespace="{ref.namespace}",deployment=~"{ref.workload}(-[0-9]+-deployment)?"}}'


def model_queries(ref: ServedModelRef) -> dict[str, dict[str, str]]:
    """Panel title -> legend -> PromQL, for one model."""
    if ref.engine in _ENGINE_TTFT:
        bucket = f"sum by (le) (rate({_ENGINE_TTFT[ref.engine]}{_engine(ref)}[{RATE_WINDOW}]))"
        ttft_title = "Time to first token (engine)"
    else:
        bucket = f'sum by (le) (rate({_GATEWAY_TTFT}{{{NAMESPACE_LABEL}="{ref.namespace}"}}[{RATE_WINDOW}]))'
        ttft_title = "Time to first token (gateway, all models)"
    errors, completion, prompt = (_gateway(ref, ',status=~"5.."'), _gateway(ref, ',kind="completion"'),
                                  _gateway(ref, ',kind="prompt"'))
    return {
        "Requests and errors per second": {
            "requests": f"sum(rate(gateway_model_requests_total{_gateway(ref)}[{RATE_WINDOW}]))",
            "errors (5xx)": f"sum(rate(gateway_model_requests_total{errors}[{RATE_WINDOW}]))",
            "upstream failures": f"sum(rate(gateway_upstream_errors_total{_gateway(ref)}[{RATE_WINDOW}]))",
        },
        ttft_title: {
            "p50": f"histogram_quantile(0.5, {bucket})",
            "p95": f"histogram_quantile(0.95, {bucket})",
        },
        "Tokens per second": {
            "completion": f"sum(rate(gateway_tokens_total{completion}[{RATE_WINDOW}]))",
            "prompt": f"sum(rate(gateway_tokens_total{prompt}[{RATE_WINDOW}]))",
        },
        "Requests waiting and running": {
            "waiting": waiting_query(ref),
            "running": running_query(ref),
        },
        "Replicas": {
            "wanted": f"sum(kube_deployment_spec_replicas{_deployment(ref)})",
            "ready": f"sum(kube_deployment_status_replicas_ready{_deployment(ref)})",
        },
    }


def dashboard(title: str, models: Iterable[ServedModelRef]) -> dict[str, Any]:
    """A Grafana dashboard (schema 39) with a row of panels per model."""
    panels: list[dict[str, Any]] = []
    y = 0
    for ref in models:
        panels.append({"type": "row", "title": f"{ref.model} ({ref.engine})", "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "id": len(panels) + 1, "panels": []})
        y += 1
        queries = model_queries(ref)
        width = 24 // len(queries)
        for index, (panel_title, targets) in enumerate(queries.items()):
            unit = "s" if panel_title.startswith("Time to first token") else "short"
            panels.append({
                "type": "timeseries",
                "title": panel_title,
                "id": len(panels) + 1,
                "datasource": _DATASOURCE,
                "gridPos": {"h": 8, "w": width, "x": index * width, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + number), "datasource": _DATASOURCE, "expr": expr, "legendFormat": legend}
                    for number, (legend, expr) in enumerate(targets.items())
                ],
            })
        y += 8
    return {
        "uid": DASHBOARD_UID,
        "title": title,
        "schemaVersion": 39,
        "editable": False,
        "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s",
        "tags": ["model-stack"],
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
        }]},
        "panels": panels,
    }


def dashboard_json(title: str, models: Iterable[ServedModelRef]) -> str:
    return json.dumps(dashboard(title, models), indent=2, sort_keys=True) + "\n"


def queries_of(document: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard."""
    return [target["expr"] for panel in document["panels"] for target in panel.get("targets", [])]
