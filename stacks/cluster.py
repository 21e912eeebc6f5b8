"""The cluster layer: which cluster the stack deploys into, and the provider every Kubernetes resource uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from .config import StackConfig
from .config.secrets import StackSecrets


@dataclass(frozen=True)
class ClusterHandle:
    provider: k8s.Provider
    """Every Kubernetes resource of the stack is created through this provider."""

    kubeconfig: pulumi.Output[str]
    """Secret."""

    ready: list[pulumi.Resource] = field(default_factory=list)
    """Resources that must exist before anything is applied to the cluster (pass as depends_on)."""

    model_cache_storage_class: Optional[str] = None
    """Storage class for the model cache when its config names none; None means the cluster default."""

    ingress_node_ports: Optional[tuple[int, int]] = None
    """(http, https) node ports the ingress must use because the cluster maps host ports to them (kind)."""


def provision_cluster(config: StackConfig, secrets: StackSecrets) -> ClusterHandle:
    kubeconfig = secrets.kubeconfig or pulumi.Output.secret("")
    provider = k8s.Provider("cluster", kubeconfig=kubeconfig)
    return ClusterHandle(provider=provider, kubeconfig=kubeconfig)
