"""The OpenAI-compatible gateway in front of the model runner."""

from __future__ import annotations

from typing import Literal

from .base import Section


class GatewayConfig(Section):
    """The OpenAI-compatible gateway in front of the model runner."""

    workload: Literal["deployment", "knative"] = "deployment"
    """How the gateway runs on Kubernetes: a Deployment with Service, autoscaler and disruption budget, or a
    Knative Service (scale to zero, request-driven autoscaling; Knative Serving is installed when any workload
    uses it)."""
