"""Credentials: top-level config keys that must be set with `pulumi config set --secret`.

They are kept out of the structured sections so that no section ever holds a plaintext credential, and each is
read with `get_secret`, so it stays an encrypted Pulumi secret wherever it flows.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Iterator, Optional

import pulumi
from pulumi.runtime import config as runtime_config

from components.engines import ENGINES

from .base import Problem
from .cluster import kubeconfig_problems

if TYPE_CHECKING:
    from . import StackConfig


@dataclass(frozen=True)
class StackSecrets:
    hf_token: Optional[pulumi.Output[str]] = None
    """Hugging Face token for gated or private models (`hfToken`)."""

    gateway_api_keys: Optional[pulumi.Output[str]] = None
    """API keys the gateway accepts (`gatewayApiKeys`), comma- or newline-separated; a line `<key> <model>,<model>`
    limits that key to those models (their `model` ids; others are answered 403). Unset disables gateway auth."""

    runner_api_key: Optional[pulumi.Output[str]] = None
    """Key the model runners served through Knative require on their OpenAI API (`runnerApiKey`); the gateway
    sends it, and nothing else has it. Knative's ingress (`kourier-internal`) admits every pod in the cluster, so
    without a key any pod could call those engines past the gateway's keys and model scopes. Required when a
    vllm or llama.cpp model runs with workload knative; one key of visible ASCII without spaces:
    `pulumi config set --secret runnerApiKey "$(openssl rand -hex 32)"`."""

    registry_push_password: Optional[pulumi.Output[str]] = None
    """Password or token for pushing built and mirrored images (`registryPushPassword`)."""

    registry_pull_password: Optional[pulumi.Output[str]] = None
    """Password or token the cluster pulls images with (`registryPullPassword`)."""

    kubeconfig: Optional[pulumi.Output[str]] = None
    """Kubeconfig contents of an existing cluster (`kubeconfig`)."""

    cosign_private_key: Optional[pulumi.Output[str]] = None
    """Cosign private key (PEM, as `cosign generate-key-pair` writes cosign.key) that signs the images the stack
    pushes when images.signing.enabled is true, unless images.signing.keyless is (`cosignPrivateKey`)."""

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
        signing = config.images.signing
        if signing.keyless:
            # Refused rather than ignored: a key that signs nothing would suggest the images are signed with it.
            for key, value in (("cosignPrivateKey", self.cosign_private_key), ("cosignPassword", self.cosign_password)):
                if value is not None:
                    yield Problem(key, "is not used with images.signing.keyless: true (cosign signs with the OIDC "
                                       "identity where `pulumi up` runs); unset it, or sign with the key instead")
        elif signing.enabled and self.cosign_private_key is None:
            yield Problem("cosignPrivateKey", "is required: images.signing.enabled is true (or sign keyless: "
                                              "images.signing.keyless: true)")
        keyed = [model.key for model in config.served_models if model.config.workload == "knative"
                 and ENGINES[model.config.engine].api_key_env is not None] if config.runtime == "kubernetes" else []
        if keyed and self.runner_api_key is None:
            yield Problem("runnerApiKey", f"is required: {' and '.join(keyed)} {'is' if len(keyed) == 1 else 'are'} "
                                          "served through Knative, whose ingress every pod in the cluster reaches; the "
                                          "engine must require a key only the gateway holds (`pulumi config set "
                                          "--secret runnerApiKey \"$(openssl rand -hex 32)\"`)")
        elif self.runner_api_key is not None and not keyed:
            yield Problem("runnerApiKey", "is used only by vllm and llama.cpp models served through Knative "
                                          "(workload: knative), and this stack has none; unset it")
        elif self.runner_api_key is not None:
            try:
                _gateway_settings()._token(_plaintext("runnerApiKey"))
            except ValueError:
                yield Problem("runnerApiKey", "must be one key of visible ASCII characters without spaces (what the "
                                              "gateway sends in `Authorization: Bearer`)")
        if self.gateway_api_keys is not None:
            yield from _api_key_problems(_plaintext("gatewayApiKeys"), [model.config.model for model in config.served_models])
        cluster = config.cluster
        if config.runtime == "kubernetes" and cluster.provider == "existing":
            sources = {
                "kubeconfig": self.kubeconfig is not None,
                "cluster.existing.kubeconfigPath": cluster.existing.kubeconfig_path is not None,
                "cluster.existing.stackReference": cluster.existing.stack_reference is not None,
            }
            given = [key for key, present in sources.items() if present]
            choice = ("an existing cluster takes exactly one kubeconfig source: the `kubeconfig` secret, "
                      "cluster.existing.kubeconfigPath or cluster.existing.stackReference")
            if not given:
                yield Problem("cluster.existing", f"needs a kubeconfig source: {choice}", "none")
            for key in given[1:]:
                yield Problem(key, f"is a second kubeconfig source besides {given[0]}; {choice}")
            if len(given) == 1 and self.kubeconfig is not None:
                yield from kubeconfig_problems(_plaintext("kubeconfig"), "kubeconfig", None, cluster.existing.context,
                                               "cluster.existing.context")


def _plaintext(key: str) -> str:
    """A secret's plaintext, read where the program reads config (get() would warn that it is secret)."""
    return runtime_config.get_config(f"{pulumi.get_project()}:{key}") or ""


def _api_key_problems(text: str, served_models: list[str]) -> Iterator[Problem]:
    """What the gateway would refuse at startup in the keys text: its grammar, and keys limited to models the stack
    does not serve. The messages never quote a key."""
    settings = _gateway_settings()
    try:
        keys = settings.parse_api_keys(text)
    except ValueError as error:
        yield Problem("gatewayApiKeys", str(error))
        return
    try:
        settings.check_key_scopes(keys, served_models)
    except ValueError as error:
        yield Problem("gatewayApiKeys", str(error).replace("the gateway does not serve", "the stack does not serve"))


@cache
def _gateway_settings() -> ModuleType:
    """The gateway's own settings module (standard library only), so the stack refuses exactly the keys text the
    gateway would; loaded from app/, which is the gateway image's source, not a package of this project."""
    path = Path(__file__).resolve().parents[2] / "app" / "model_gateway" / "settings.py"
    spec = importlib.util.spec_from_file_location("model_gateway_settings", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_FIELDS = {_camel(field.name): field for field in fields(StackSecrets)}
SECRET_KEYS = frozenset(_FIELDS)
