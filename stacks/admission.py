"""Admission of only signed images into the model namespace (`images.verification`)."""

from __future__ import annotations

import pulumi

from components.signed_images_policy import NAMESPACE_LABEL, WEBHOOK_IMAGE, SignedImagesPolicy

from .cluster import ClusterHandle
from .config import StackConfig
from .images import ImageHandle

# images.verification.mode -> policy-controller's ClusterImagePolicy mode
POLICY_MODES = {"enforce": "enforce", "audit": "warn"}


def admission_images(config: StackConfig) -> list[str]:
    """Images the admission controller deploys, for the registry mapping to mirror."""
    return [WEBHOOK_IMAGE] if config.images.verification.enabled else []


def guarded_namespace_labels(config: StackConfig) -> dict[str, str]:
    """Labels that put a namespace under the signature policy; none while verification is off."""
    return dict(NAMESPACE_LABEL) if config.images.verification.enabled else {}


def admit_signed_images(config: StackConfig, cluster: ClusterHandle, images: ImageHandle) -> list[pulumi.Resource]:
    """Installs the controller and the policy; returns what workloads must wait for (nothing while off)."""
    verification = config.images.verification
    if not verification.enabled:
        return []
    return [SignedImagesPolicy(
        "signed-images",
        {
            "public_keys": verification.keys(),
            "keyless_identities": [identity.model_dump(exclude_none=True) for identity in verification.keyless_identities],
            "mode": POLICY_MODES[verification.mode],
            "webhook_image": images.rewrite(WEBHOOK_IMAGE),
        },
        # The signatures the policy checks are pushed with the images (images.ready).
        opts=pulumi.ResourceOptions(providers=[cluster.provider], depends_on=[*cluster.ready, *images.ready]),
    )]
