"""Admission of only signed images into the model namespace (`images.verification`)."""

from __future__ import annotations

import re
from typing import Iterator, Optional

import pulumi

from components.engines import ENGINES
from components.image_rewrite import longest_matching_prefix, rewrite_image
from components.signed_images_policy import NAMESPACE_LABEL, WEBHOOK_IMAGE, SignedImagesPolicy

from .cluster import ClusterHandle
from .config import StackConfig
from .config.base import ImageReference, Problem, join_keys
from .images import ImageHandle

# images.verification.mode -> policy-controller's ClusterImagePolicy mode
POLICY_MODES = {"enforce": "enforce", "audit": "warn"}
PRODUCTION_WEBHOOK_REPLICAS = 2


def admission_images(config: StackConfig) -> list[str]:
    """Images the admission controller deploys, for the registry mapping to mirror."""
    return [WEBHOOK_IMAGE] if config.images.verification.enabled else []


def guarded_namespace_labels(config: StackConfig) -> dict[str, str]:
    """Labels that put a namespace under the signature policy; none while verification is off."""
    return dict(NAMESPACE_LABEL) if config.images.verification.enabled else {}


def queue_proxy_image(config: StackConfig) -> Optional[str]:
    """The queue proxy Knative's release injects beside every Knative workload; None when none runs on Knative."""
    if config.runtime != "kubernetes" or not config.knative_workloads:
        return None
    from components.knative_serving import QUEUE_SIDECAR_KEY, load_manifests

    from .knative import manifests_dir

    knative = config.knative
    manifests = load_manifests(knative.serving_version, knative.kourier_version, manifests_dir(config))
    return next((obj["data"][QUEUE_SIDECAR_KEY] for objects in manifests.values() for obj in objects
                 if obj["kind"] == "ConfigMap" and QUEUE_SIDECAR_KEY in obj.get("data", {})), None)


def guarded_images(config: StackConfig, queue_proxy: Optional[str]) -> list[tuple[str, Optional[str]]]:
    """(config key that chooses it, image as configured) of every container the stack runs in the guarded
    namespace: each model's engine and pull sidecar, a prebuilt gateway, and Knative's queue proxy (`queue_proxy`,
    from the release) beside each Knative workload. The gateway the stack builds is None: it is always pushed, and
    signed whenever signing is on."""
    images: list[tuple[str, Optional[str]]] = []
    for model in config.served_models:
        engine = ENGINES[model.config.engine]
        images.append((join_keys(model.key, "image"), model.config.engine_image()))
        sidecar = engine.render(model.config.model).pull.image
        if sidecar is not None:
            images.append((join_keys(model.key, "pullSidecarImage"), model.config.pull_sidecar_image or sidecar))
    images.append(("gateway.image", config.gateway.image))
    if queue_proxy is not None:
        images.append(("knative.servingVersion", queue_proxy))
    return images


def unverifiable_image_problems(config: StackConfig, queue_proxy: Optional[str]) -> Iterator[Problem]:
    """Every image an enforcing policy would deny: one nothing signs where the cluster pulls it from, and no keyless
    identity covers. The stack signs what it pushes (the gateway build, and each pinned image a rewrite rule copies
    into the registry), verifiable when the policy holds a key (key signing) or an identity (keyless); an image
    pulled from its publisher verifies when `publisherSignatures` names its signer and a keyless identity matches
    it (a copy carries no publisher signature: `imagetools create` copies the image alone)."""
    images = config.images
    verification, signing = images.verification, images.signing
    if config.runtime != "kubernetes" or not verification.enabled or verification.mode != "enforce":
        return
    if not signing.enabled:
        unsigned = "images.signing.enabled is false, so the stack signs nothing"
    elif signing.keyless and not verification.keyless_identities:
        unsigned = ("the stack signs it keyless, and images.verification.keylessIdentities names no identity to "
                    "verify that signature with")
    elif not signing.keyless and not verification.public_keys:
        unsigned = ("the stack signs it with the cosignPrivateKey secret, and images.verification.publicKeys holds "
                    "no key to verify that signature with")
    else:
        unsigned = None
    for key, image in guarded_images(config, queue_proxy):
        if image is None:
            if unsigned is not None:
                yield Problem(join_keys("images", "verification.mode"),
                              f"would deny the gateway build (images.gatewayBuild): {unsigned}; sign it and let the "
                              "policy verify that signature, or use mode audit", "enforce")
            continue
        copied = ImageReference.parse(image).pinned and rewrite_image(image, images.rewrite) != image
        if (copied and unsigned is None) or _publisher_verified(config, image):
            continue
        reason = unsigned if copied else (
            "it is pulled from where it is published, no images.rewrite rule copies it pinned by digest into the "
            "registry (where the stack would sign it), and no images.publisherSignatures entry whose signer "
            "images.verification.keylessIdentities accepts covers it")
        yield Problem(key, f"would be denied at admission by images.verification (mode enforce): {reason}; sign it "
                           "(images.signing, and a rewrite rule that copies it pinned by digest), have the policy "
                           "accept its publisher's keyless signature, or use mode audit", image)


def _publisher_verified(config: StackConfig, image: str) -> bool:
    """Whether `image` is pulled from its publisher, whose keyless signer one of the policy's identities accepts."""
    images = config.images
    if rewrite_image(image, images.rewrite) != image:
        return False
    prefix = longest_matching_prefix(image, images.publisher_signatures)
    if prefix is None:
        return False
    signer = images.publisher_signatures[prefix]
    # Go's RE2 and Python agree on the expressions an identity needs (anchors, classes, repetition).
    return any(identity.issuer == signer.issuer and (
        identity.subject == signer.identity if identity.subject is not None
        else re.search(identity.subject_reg_exp or "", signer.identity) is not None)
        for identity in images.verification.keyless_identities)


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
            # Production keeps admission up through a node drain or loss.
            "webhook_replicas": PRODUCTION_WEBHOOK_REPLICAS if config.environment == "production" else 1,
        },
        # The signatures the policy checks are pushed with the images (images.ready).
        opts=pulumi.ResourceOptions(providers=[cluster.provider], depends_on=[*cluster.ready, *images.ready]),
    )]
