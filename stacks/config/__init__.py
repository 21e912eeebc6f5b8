"""The stack config schema and its loader.

`load()` reads every key of this project's namespace from the stack config, validates all of it, and either
returns a `StackConfig` plus the stack's secrets, or raises one `ConfigError` listing every problem, before any
resource has been registered.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Literal

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import ValidationError

from .base import ImageReference, Problem, Section, image_fields, join_key, join_keys, section_at, unknown_key_problem
from .cluster import ClusterConfig
from .docker import DockerConfig
from .gateway import GatewayConfig
from .images import ImagesConfig
from .knative import KnativeConfig
from .runner import RunnerConfig
from .secrets import SECRET_KEYS, StackSecrets


class ConfigError(pulumi.RunError):
    """Bad stack config. A RunError makes Pulumi print just the message, without a Python traceback."""

    def __init__(self, stack: str, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"Stack '{stack}' has {len(problems)} configuration problem(s); nothing was created.\n{lines}\n"
            f"Fix with `pulumi config set --path <key> <value>` (`--secret` for secrets) or edit Pulumi.{stack}.yaml."
        )


class StackConfig(Section):
    """Everything a stack can configure. Each top-level field is one `pulumi config` key of this project."""

    environment: Literal["development", "production"] = "development"
    """How strict the stack is. `production` deploys only digest-pinned images and requires redundancy
    (see each section); `development` trades both for speed and cost."""

    runtime: Literal["kubernetes", "docker"] = "kubernetes"
    """Where the model runner and gateway run: a Kubernetes cluster, or Docker containers on one host."""

    cluster: ClusterConfig = ClusterConfig()
    """The Kubernetes cluster (ignored when `runtime` is `docker`)."""

    images: ImagesConfig = ImagesConfig()
    """Image builds, registries and mirrors."""

    knative: KnativeConfig = KnativeConfig()
    """Knative Serving and Kourier (installed when a workload is served through Knative, or `install: true`)."""

    runner: RunnerConfig = RunnerConfig()
    """The model runner."""

    gateway: GatewayConfig = GatewayConfig()
    """The gateway in front of the model runner."""

    docker: DockerConfig = DockerConfig()
    """The single-host Docker runtime (used when `runtime` is `docker`)."""

    @property
    def knative_workloads(self) -> list[str]:
        return [section for section in ("runner", "gateway") if getattr(self, section).workload == "knative"]

    @property
    def knative_installed(self) -> bool:
        return self.runtime == "kubernetes" and (
            bool(self.knative_workloads) if self.knative.install is None else self.knative.install)

    def check(self, path: str) -> Iterator[Problem]:
        if self.knative.install is False and self.knative_workloads:
            yield Problem(
                join_keys(path, "knative.install"),
                f"cannot be false while {' and '.join(self.knative_workloads)} "
                f"{'is' if len(self.knative_workloads) == 1 else 'are'} served through Knative "
                "(workload: knative); set it to true or remove it",
                False,
            )
        if self.environment == "production" and self.runtime == "kubernetes" and self.cluster.provider == "kind":
            yield Problem(
                join_key(join_key(path, "cluster"), "provider"),
                "production stacks need a real cluster: use existing or eks (kind runs on one machine)",
                "kind",
            )
        building_gateway = self.gateway.image is None
        if building_gateway and self.images.registry.server is None and self.cluster.provider != "kind" and self.runtime == "kubernetes":
            yield Problem(
                join_keys(path, "images.registry.server"),
                "is required to push the gateway build to a registry the cluster can pull from "
                "(or set gateway.image to a prebuilt image)",
            )
        if self.environment == "production":
            if building_gateway and self.images.gateway_build.base_image is None:
                yield Problem(
                    join_keys(path, "images.gatewayBuild.baseImage"),
                    "production builds need a digest-pinned base image, so a rebuild cannot pick up a different one",
                )
            deployed = [*image_fields(self, path), *self.runner.profile_images(join_key(path, "runner"))]
            for key, reference in deployed:
                if not ImageReference.parse(reference).pinned:
                    yield Problem(
                        key,
                        "production stacks deploy digest-pinned images only; use name[:tag]@sha256:<digest> "
                        "(`docker buildx imagetools inspect <image>` prints the digest)",
                        reference,
                    )
            for section in ("runner", "gateway"):
                scaling = getattr(self, section).scaling
                if scaling.min_replicas < 2:
                    yield Problem(
                        join_keys(path, f"{section}.scaling.minReplicas"),
                        "must be at least 2 in production: one replica can be drained or lost while the other serves",
                        scaling.min_replicas,
                    )
            if self.runner.cache.existing_claim is None and not self.runner.cache.protect:
                yield Problem(
                    join_keys(path, "runner.cache.protect"),
                    "must be true in production: a destroy or replacement must never delete downloaded models",
                    False,
                )


def load(project: str | None = None, stack: str | None = None) -> tuple[StackConfig, StackSecrets]:
    """Reads and validates this stack's config; raises ConfigError naming every problem."""
    project = project or pulumi.get_project()
    stack = stack or pulumi.get_stack()
    raw, problems = _read_raw(project)
    config: StackConfig | None = None
    try:
        config = StackConfig.model_validate(raw)
    except ValidationError as error:
        problems.extend(_from_validation_error(error))
    secrets = StackSecrets.read(pulumi.Config(project))
    problems.extend(_secret_problems(project))
    if config is not None and not problems:
        problems.extend(config.problems(""))
        problems.extend(secrets.problems(config))
    if problems:
        raise ConfigError(stack, problems)
    assert config is not None
    return config, secrets


def _configured_keys(project: str) -> set[str]:
    # pulumi.Config has no way to list keys; the runtime's config map is the only place that knows a key the
    # program never asks for, and an unknown key is exactly what a typo produces.
    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = f"{project}:"
    return {key[len(prefix):] for key in keys if key.startswith(prefix)}


def _read_raw(project: str) -> tuple[dict[str, Any], list[Problem]]:
    fields = {field.alias or name: field for name, field in StackConfig.model_fields.items()}
    raw: dict[str, Any] = {}
    problems: list[Problem] = []
    for key in sorted(_configured_keys(project)):
        if key in SECRET_KEYS:
            continue
        if key not in fields:
            problems.append(unknown_key_problem("", key, [*fields, *SECRET_KEYS]))
            continue
        text = runtime_config.get_config(f"{project}:{key}")
        if isinstance(fields[key].default, Section):
            try:
                raw[key] = json.loads(text)
            except json.JSONDecodeError:
                problems.append(Problem(key, "must be a map of settings (set its parts with `--path`)", text))
        else:
            raw[key] = text
    return raw, problems


def _secret_problems(project: str) -> Iterator[Problem]:
    for key in sorted(_configured_keys(project) & set(SECRET_KEYS)):
        if not runtime_config.is_config_secret(f"{project}:{key}"):
            yield Problem(key, "holds a credential and must be stored encrypted: `pulumi config set --secret " + key + " <value>`")


def _config_key(loc: tuple) -> str:
    key = ""
    for part in loc:
        key = join_key(key, part)
    return key


def _from_validation_error(error: ValidationError) -> Iterator[Problem]:
    for item in error.errors(include_url=False):
        loc = item["loc"]
        if item["type"] == "extra_forbidden":
            parent = section_at(StackConfig, loc[:-1])
            allowed = [field.alias or name for name, field in parent.model_fields.items()] if parent else []
            yield unknown_key_problem(_config_key(loc[:-1]), str(loc[-1]), allowed)
        elif item["type"] == "missing":
            yield Problem(_config_key(loc), "is required")
        else:
            message = item["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
            yield Problem(_config_key(loc), message, item.get("input"))
