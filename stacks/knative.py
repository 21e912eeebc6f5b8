"""The Knative layer: Knative Serving with Kourier, when the stack serves anything through Knative or asks for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pulumi

from components.knative_serving import KnativeServing, KnativeServingArgs, load_manifests, release_images

from .cluster import ClusterHandle
from .config import StackConfig
from .images import ImageHandle

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KIND_DOMAIN = "127.0.0.1.sslip.io"
KOURIER_INGRESS_CLASS = "kourier.ingress.networking.knative.dev"
# Knative's own defaults: registries it never resolves tags in.
DEFAULT_SKIPPED_REGISTRIES = ["kind.local", "ko.local", "dev.local"]


@dataclass(frozen=True)
class KnativeHandle:
    ready: list[pulumi.Resource] = field(default_factory=list)
    """The install (CRDs, controllers and webhook awaited): Knative resources depend on it."""

    domain: Optional[str] = None
    """Domain external Knative Services are published under; None: cluster-local only."""


def manifests_dir(config: StackConfig) -> Optional[str]:
    return str(PROJECT_ROOT / config.knative.manifests_dir) if config.knative.manifests_dir is not None else None


def release_images_of(config: StackConfig) -> list[str]:
    """The images Knative's release deploys (none when Knative is not installed). Reads the release before
    anything is registered, so a download that fails or a directory that lacks a file stops the program with
    nothing created; the install reuses what was read."""
    if not config.knative_installed:
        return []
    knative = config.knative
    return release_images(load_manifests(knative.serving_version, knative.kourier_version, manifests_dir(config)))


def install_knative(
    config: StackConfig,
    cluster: ClusterHandle,
    images: ImageHandle,
    workload_settings: dict[str, dict[str, str]],
) -> Optional[KnativeHandle]:
    """Installs Knative when a workload runs on it or the config asks for it. `workload_settings` are what the workloads need from
    Knative's ConfigMaps (feature flags, timeout ceilings), merged over this layer's settings."""
    if not config.knative_installed:
        return None
    knative = config.knative
    domain = knative.domain or (KIND_DOMAIN if cluster.ingress_node_ports else None)
    skipped = [*DEFAULT_SKIPPED_REGISTRIES, *([cluster.local_registry] if cluster.local_registry else []),
               *knative.registries_skipping_tag_resolving]
    settings: dict[str, dict[str, str]] = {
        "config-network": {"ingress-class": KOURIER_INGRESS_CLASS},
        # Knative fills in the restricted Pod Security settings (seccomp, non-root, no capabilities) wherever a
        # container leaves them out, its own queue proxy included.
        "config-features": {"secure-pod-defaults": "enabled"},
        "config-autoscaler": {
            "enable-scale-to-zero": str(knative.scale_to_zero).lower(),
            "scale-to-zero-grace-period": f"{knative.scale_to_zero_grace_period_seconds}s",
            "stable-window": f"{knative.stable_window_seconds}s",
        },
        "config-deployment": {
            "registries-skipping-tag-resolving": ",".join(dict.fromkeys(skipped)),
            "progress-deadline": f"{knative.progress_deadline_seconds}s",
        },
        "config-defaults": {"revision-timeout-seconds": str(knative.revision_timeout_seconds)},
        **({"config-domain": {domain: ""}} if domain else {}),
    }
    for config_map, data in workload_settings.items():
        settings[config_map] = {**settings.get(config_map, {}), **data}
    service_type = knative.kourier_service_type or ("NodePort" if cluster.ingress_node_ports else "LoadBalancer")
    args: KnativeServingArgs = {
        "serving_version": knative.serving_version,
        "kourier_version": knative.kourier_version,
        "rewrite_rules": dict(images.rewrite_rules),
        "config": settings,
        "kourier_service_type": service_type,
        "min_replicas": 2 if config.environment == "production" else 1,
    }
    if knative.manifests_dir is not None:
        args["manifests_dir"] = manifests_dir(config)
    if service_type == "NodePort" and cluster.ingress_node_ports:
        http, https = cluster.ingress_node_ports
        args["kourier_node_ports"] = {"http": http, "https": https}
    if knative.registry_ca_bundle is not None:
        args["registry_ca_bundle"] = knative.registry_ca_bundle
    install = KnativeServing(
        "knative",
        args,
        opts=pulumi.ResourceOptions(providers=[cluster.provider], depends_on=[*cluster.ready, *images.ready]),
    )
    return KnativeHandle(ready=[install], domain=domain)
