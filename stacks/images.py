"""The image layer: images the stack builds and mirrors, and where the cluster pulls every image from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import pulumi

from .cluster import ClusterHandle
from .config import StackConfig
from .config.secrets import StackSecrets


@dataclass(frozen=True)
class ImageHandle:
    rewrite: Callable[[str], str]
    """Maps any upstream image reference to the one the cluster pulls (registry mirrors); applied to every
    image the stack deploys, third-party manifests included."""

    gateway_image: Optional[pulumi.Output[str]] = None
    """Digest-pinned reference of the built gateway image."""

    ready: list[pulumi.Resource] = field(default_factory=list)
    """Pushes and mirror copies that must finish before workloads pull (pass as depends_on)."""

    def pull_secret(self, namespace: str, opts: pulumi.ResourceOptions) -> Optional[str]:
        """Name of a dockerconfigjson Secret in `namespace` for imagePullSecrets, created on first use;
        None when the registry needs no credentials."""
        return None


def publish_images(config: StackConfig, secrets: StackSecrets, cluster: ClusterHandle) -> ImageHandle:
    return ImageHandle(rewrite=lambda reference: reference)
