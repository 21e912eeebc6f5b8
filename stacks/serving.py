"""The serving layer: the model runner and the gateway in front of it, as Deployments or Knative Services."""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from .cluster import ClusterHandle
from .config import StackConfig
from .config.secrets import StackSecrets
from .images import ImageHandle
from .knative import KnativeHandle


def serve_models(
    config: StackConfig,
    secrets: StackSecrets,
    cluster: ClusterHandle,
    images: ImageHandle,
    knative: Optional[KnativeHandle],
) -> None:
    k8s.core.v1.Namespace(
        "models",
        metadata=k8s.meta.v1.ObjectMetaArgs(name="models"),
        opts=pulumi.ResourceOptions(provider=cluster.provider, depends_on=cluster.ready),
    )
