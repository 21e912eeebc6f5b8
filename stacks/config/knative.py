"""Knative Serving with Kourier: release, manifests source and the cluster-wide serving config."""

from typing import Annotated, Literal, Optional

from pydantic import Field

from .base import Section, matching

Version = Annotated[str, matching(r"1\.[0-9]+\.[0-9]+", "a release version such as 1.15.2")]
Domain = Annotated[
    str,
    matching(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]*[a-z0-9])?", "a DNS domain such as models.example.com"),
]


class KnativeConfig(Section):
    """Knative Serving with Kourier: release, manifests source and the cluster-wide serving config."""

    install: Optional[bool] = None
    """Install Knative Serving and Kourier. Unset: exactly when the runner or the gateway is served through
    Knative; `true` installs it ahead of moving a workload onto it (or for other teams' Knative Services);
    `false` is refused while a workload is served through Knative."""

    serving_version: Version = "1.15.2"
    """Knative Serving release; pinned so every `pulumi up` applies the same manifests."""

    kourier_version: Version = "1.15.1"
    """net-kourier release matching the Serving release."""

    manifests_dir: Optional[str] = None
    """Directory with `serving-crds.yaml`, `serving-core.yaml` and `kourier.yaml` for air-gapped installs (relative
    to the project or absolute); unset downloads them from the GitHub releases at every run."""

    domain: Optional[Domain] = None
    """Domain Knative Services are published under (`<service>.<namespace>.<domain>`). Unset: `127.0.0.1.sslip.io`
    on kind (magic DNS to the mapped ingress port), otherwise Knative's cluster-local default."""

    scale_to_zero: bool = True
    """Let Knative workloads with `scaling.minReplicas: 0` scale to zero when idle; off keeps every revision warm
    cluster-wide."""

    scale_to_zero_grace_period_seconds: Annotated[int, Field(ge=6, le=3600)] = 60
    """How long an idle revision's last pod stays after traffic stops."""

    stable_window_seconds: Annotated[int, Field(ge=6, le=3600)] = 120
    """Window the autoscaler averages concurrency over; longer than Knative's 60 s because a new model replica
    is expensive and slow to start."""

    progress_deadline_seconds: Annotated[int, Field(ge=60, le=7200)] = 1500
    """Default time a new revision may take to become ready (each workload sets its own from its load budget)."""

    revision_timeout_seconds: Annotated[int, Field(ge=30, le=3600)] = 600
    """Default request timeout; streamed completions need minutes, not Knative's 300 s."""

    kourier_service_type: Optional[Literal["LoadBalancer", "NodePort", "ClusterIP"]] = None
    """Kourier's external Service. Unset: NodePort on kind (on the node ports kind maps host ports to),
    LoadBalancer elsewhere."""

    registries_skipping_tag_resolving: list[str] = []
    """Registries whose tags Knative must not resolve to digests (unreachable from the controller); the kind local
    registry is added automatically. Digest-pinned images skip resolution anyway."""

    registry_ca_bundle: Optional[str] = None
    """PEM CA bundle of a private registry, for the controller's tag resolution."""
