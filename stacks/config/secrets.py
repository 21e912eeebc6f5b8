"""Credentials: top-level config keys that must be set with `pulumi config set --secret`.

They are kept out of the structured sections so that no section ever holds a plaintext credential, and each is
read with `get_secret`, so it stays an encrypted Pulumi secret wherever it flows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Iterator, Optional

import pulumi
from pulumi.runtime import config as runtime_config

from .base import Problem
from .cluster import kubeconfig_problems

if TYPE_CHECKING:
    from . import StackConfig


@dataclass(frozen=True)
class StackSecrets:
    hf_token: Optional[pulumi.Output[str]] = None
    """Hugging Face token for gated or private models (`hfToken`)."""

    gateway_api_keys: Optional[pulumi.Output[str]] = None
    """Comma-separated API keys the gateway accepts (`gatewayApiKeys`); unset disables gateway auth."""

    registry_push_password: Optional[pulumi.Output[str]] = None
    """Password or token for pushing built and mirrored images (`registryPushPassword`)."""

    registry_pull_password: Optional[pulumi.Output[str]] = None
    """Password or token the cluster pulls images with (`registryPullPassword`)."""

    kubeconfig: Optional[pulumi.Output[str]] = None
    """Kubeconfig contents of an existing cluster (`kubeconfig`)."""

    cosign_private_key: Optional[pulumi.Output[str]] = None
    """Cosign private key (PEM, as `cosign generate-key-pair` writes cosign.key) that signs the images the stack
    pushes when images.signing.enabled is true (`cosignPrivateKey`)."""

    cosign_password: Optional[pulumi.Output[str]] = None
    """Password of `cosignPrivateKey` (`cosignPassword`); unset for a key without one."""

    @classmethod
    def read(cls, config: pulumi.Config) -> "StackSecrets":
        return cls(**{field.name: config.get_secret(key) for key, field in _FIELDS.items()})

    def problems(self, config: "StackConfig") -> Iterator[Problem]:
        """Secrets that the rest of the config requires."""
        registry = config.images.registry
        if registry.push_username and self.registry_push_password is None:
            yield Problem("registryPushPassword", f"is required: images.registry.pushUsername is {registry.push_username!r}")
        if registry.pull_username and self.registry_pull_password is None:
            yield Problem("registryPullPassword", f"is required: images.registry.pullUsername is {registry.pull_username!r}")
        if config.images.signing.enabled and self.cosign_private_key is None:
            yield Problem("cosignPrivateKey", "is required: images.signing.enabled is true")
        cluster = config.cluster
        if config.runtime == "kubernetes" and cluster.provider == "existing":
            sources = {
                "kubeconfig": self.kubeconfig is not None,
                "cluster.existing.kubeconfigPath": cluster.existing.kubeconfig_path is not None,
                "cluster.existing.stackReference": cluster.existing.stack_reference is not None,
            }
            given = [key for key, present in sources.items() if present]
            if len(given) != 1:
                yield Problem(
                    "cluster.existing",
                    "an existing cluster needs exactly one kubeconfig source: the `kubeconfig` secret, "
                    "cluster.existing.kubeconfigPath or cluster.existing.stackReference",
                    ", ".join(given) or "none",
                )
            elif self.kubeconfig is not None:
                # The secret's plaintext, read where the program reads config (get() would warn that it is secret).
                text = runtime_config.get_config(f"{pulumi.get_project()}:kubeconfig") or ""
                yield from kubeconfig_problems(text, "kubeconfig", None, cluster.existing.context, "cluster.existing.context")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_FIELDS = {_camel(field.name): field for field in fields(StackSecrets)}
SECRET_KEYS = frozenset(_FIELDS)
