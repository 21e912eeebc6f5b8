"""How the gateway routes each served model's requests, from the models' config (GATEWAY_ROUTING), for every
runtime."""

from __future__ import annotations

from typing import Any, Callable, Optional

from .config import ServedModel, StackConfig


def gateway_routing(config: StackConfig, replicas_host: Optional[Callable[[ServedModel], str]] = None) -> dict[str, dict[str, Any]]:
    """The gateway's routing of each model (GATEWAY_ROUTING): admission and wait for every model with a
    replica of its own to admit to (Deployment runners, the Docker runtime's engine), and the policy and the
    headless Service's name (`replicas_host`) where the gateway finds the replicas itself. Knative runners are
    left to Knative."""
    routing: dict[str, dict[str, Any]] = {}
    for model in config.served_models:
        model_config = model.config
        if model_config.workload == "knative":
            continue
        entry: dict[str, Any] = {
            "maxInFlightPerReplica": model_config.in_flight_limit(),
            "maxWaitSeconds": model_config.routing.max_wait_seconds,
            # A model with no ready replica (scaled to zero, or every pod restarting) is worth waiting for as long
            # as a replica may take to load it.
            "holdSeconds": model_config.load_budget_seconds,
        }
        if replicas_host is not None:
            entry["policy"] = model_config.routing.policy
            if model_config.routing.policy == "prefix":
                entry["loadFactor"] = model_config.routing.load_factor
            entry["replicasHost"] = replicas_host(model)
        routing[model_config.model] = entry
    return routing
