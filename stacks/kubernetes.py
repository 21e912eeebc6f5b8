"""The Kubernetes runtime: cluster, registry, Knative, model runner and gateway."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from .config import StackConfig
from .config.secrets import StackSecrets


def deploy_kubernetes(config: StackConfig, secrets: StackSecrets) -> None:
    provider = k8s.Provider("cluster", kubeconfig=secrets.kubeconfig)
    k8s.core.v1.Namespace(
        "models",
        metadata=k8s.meta.v1.ObjectMetaArgs(name="models"),
        opts=pulumi.ResourceOptions(provider=provider),
    )
