"""Knative Serving with Kourier: release, manifests source and the cluster-wide serving config."""

import binascii
import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field

from .base import RegistryHost, Section, matching, unique

# RFC 7468 armour around the base64 DER of each certificate; only whitespace may come between them.
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\s*(?P<body>[A-Za-z0-9+/=\s]*?)\s*-----END CERTIFICATE-----")
_ASN1_SEQUENCE = 0x30


def _pem_certificates(value: str) -> str:
    """PEM certificates: the armour, strict base64, and DER that starts as every X.509 certificate does (a
    SEQUENCE). The `cryptography` package would parse them fully; it is no dependency of this project."""
    if "PRIVATE KEY-----" in value:
        return value  # the credential rule (credentials.py) refuses it already, saying where a key belongs
    blocks = list(_PEM_CERTIFICATE.finditer(value))
    between = _PEM_CERTIFICATE.sub("", value)
    problem = None
    if not blocks:
        problem = "holds no -----BEGIN CERTIFICATE----- ... -----END CERTIFICATE----- block"
    elif between.strip():
        problem = "holds something besides certificate blocks (a private key or text outside the armour?)"
    for number, block in enumerate(blocks, start=1):
        try:
            der = binascii.a2b_base64("".join(block["body"].split()), strict_mode=True)
        except binascii.Error:
            der = b""
        if problem is None and (len(der) < 2 or der[0] != _ASN1_SEQUENCE):
            problem = f"certificate {number} is not base64 of a DER certificate"
    if problem is not None:
        raise ValueError(f"{problem}; it must be PEM certificates (one or more -----BEGIN CERTIFICATE----- blocks)")
    return value


PemCertificates = Annotated[str, AfterValidator(_pem_certificates)]

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

    registries_skipping_tag_resolving: Annotated[list[RegistryHost], unique("each registry is listed once")] = []
    """Registry hosts (with their port, as image references name them: `registry.internal:5000`) whose tags
    Knative must not resolve to digests (unreachable from the controller); the kind local registry is added
    automatically. Digest-pinned images skip resolution anyway."""

    registry_ca_bundle: Optional[PemCertificates] = None
    """PEM CA bundle of a private registry, for the controller's tag resolution."""
