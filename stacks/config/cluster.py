"""Which Kubernetes cluster the stack deploys into."""

from __future__ import annotations

from typing import Annotated, Literal

from .base import Section, matching


class ClusterConfig(Section):
    provider: Literal["kind", "existing"] = "kind"
    """`kind` creates a local multi-node cluster; `existing` deploys into a cluster you already run."""

    kubernetes_version: Annotated[str, matching(r"1\.[0-9]{2}", "a Kubernetes minor version such as 1.32")] = "1.32"
    """Minor Kubernetes version the cluster runs (`1.32`): picks the kind node image and the schema every
    emitted object is validated against."""
