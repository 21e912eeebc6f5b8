"""The Knative layer: Knative Serving with Kourier, when the stack serves anything through Knative."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi

from .cluster import ClusterHandle
from .config import StackConfig
from .images import ImageHandle


@dataclass(frozen=True)
class KnativeHandle:
    ready: list[pulumi.Resource] = field(default_factory=list)
    """The install (CRDs, controllers and webhook awaited): Knative resources depend on it."""


def install_knative(config: StackConfig, cluster: ClusterHandle, images: ImageHandle) -> Optional[KnativeHandle]:
    return None
