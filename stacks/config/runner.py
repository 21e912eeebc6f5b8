"""The model runner: engine, model, cache, resources, probes, scaling and exposure."""

from __future__ import annotations

from typing import Literal

from .base import Section


class RunnerConfig(Section):
    """The model runner: engine, model, cache, resources, probes, scaling and exposure."""

    workload: Literal["deployment", "knative"] = "deployment"
    """How the model runner runs on Kubernetes: a Deployment with Service, autoscaler and disruption budget, or a
    Knative Service (scale to zero, request-driven autoscaling; Knative Serving is installed when any workload
    uses it)."""
