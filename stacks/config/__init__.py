"""The stack config schema and its loader.

`load()` reads every key of this project's namespace from the stack config, validates all of it, and either
returns a `StackConfig` plus the stack's secrets, or raises one `ConfigError` listing every problem, before any
resource has been registered.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterator, Literal, Optional

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import Field, PrivateAttr, ValidationError

from components.engines import ENGINES

from .base import (
    ImageReference, InapplicableSetting, Invalid, Namespace, Problem, Section, image_fields, join_key, join_keys, matching,
    only_on, section_at, set_keys, settings_for_other_runtimes, unaffected, unknown_key_problem, without_moot,
)
from .cluster import ClusterConfig
from .credentials import credential_problems
from .docker import DockerConfig
from .gateway import GatewayConfig
from .images import ImagesConfig
from .knative import KnativeConfig
from .metrics import MetricsConfig
from .runner import ModelConfig, RoutingConfig, RunnerConfig
from .secrets import SECRET_KEYS, StackSecrets


# The one-model shorthand's runner keeps the names it has always had, so upgrading deploys change nothing.
RUNNER = "model-runner"
# Each model's workload is `model-runner-<name>`; Knative adds `-00001-deployment` to a revision's Deployment and
# the whole must stay a DNS label (63).
ModelName = Annotated[str, Field(max_length=24), matching(
    r"[a-z](?:[-a-z0-9]*[a-z0-9])?",
    "a model name: at most 24 lowercase letters, digits and '-', starting with a letter and ending with a letter "
    "or digit (it names the model's workload, model-runner-<name>)")]


@dataclass(frozen=True)
class ServedModel:
    """One model the stack serves, whichever way the config lists it."""

    key: str
    """Its config section: `runner`, or `models.<name>`."""

    workload_name: str
    """Name of its engine workload and every object of it."""

    config: ModelConfig

    @property
    def top_level_key(self) -> str:
        """The `pulumi config` key holding it (`runner` or `models`), which may be stored encrypted."""
        return self.key.partition(".")[0]

    @property
    def docker_containers(self) -> dict[str, str]:
        """The containers the Docker runtime runs for it, by role: its engine and the one-shot jobs before it."""
        return {"runner": self.workload_name, "cache owner": f"{self.workload_name}-cache-owner",
                "model pull": f"{self.workload_name}-pull"}

    def knative_derived(self, other: "ServedModel") -> Optional[str]:
        """What Knative names after this Knative workload that `other`'s own objects would be named too: each
        revision's Service (`<name>-00001`, counting up) and its `-private` Service, and its `-deployment`
        Deployment, which a Deployment workload's own would clash with (knative.dev/serving's resource names)."""
        revision = re.fullmatch(rf"{re.escape(self.workload_name)}-[0-9]{{5,}}(?P<suffix>-private|-deployment)?",
                                other.workload_name)
        if revision is None or (revision["suffix"] == "-deployment" and other.config.workload != "deployment"):
            return None
        return "Deployment" if revision["suffix"] == "-deployment" else "Service"


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

    cluster: Annotated[ClusterConfig, only_on("kubernetes")] = ClusterConfig()
    """The Kubernetes cluster."""

    images: ImagesConfig = ImagesConfig()
    """Image builds, registries and mirrors."""

    knative: Annotated[KnativeConfig, only_on("kubernetes")] = KnativeConfig()
    """Knative Serving and Kourier (installed when a workload is served through Knative, or `install: true`)."""

    namespace: Annotated[Optional[Namespace], only_on("kubernetes")] = None
    """Namespace of the model runners and the gateway; unset: `models` (or runner.namespace, which says the same
    in the one-model shorthand: set one of the two)."""

    runner: RunnerConfig = RunnerConfig()
    """The model runner of a stack that serves one model: the shorthand for `models` with one entry, kept so
    one-model stacks read simply. Set `runner` or `models`, not both."""

    models: dict[ModelName, ModelConfig] = {}
    """The models the stack serves, by name: each entry takes every `runner.*` setting except `namespace`, and gets
    its own engine workload, cache, scaling and network policy; the gateway routes each request to the engine of the model it names (the
    model's `model` id, which `/v1/models` lists). Size each on its own: a GPU chat model beside a CPU embedding
    model."""

    gateway: GatewayConfig = GatewayConfig()
    """The gateway in front of the model runners."""

    docker: Annotated[DockerConfig, only_on("docker")] = DockerConfig()
    """The single-host Docker runtime: Compose-style settings of its containers."""

    metrics: MetricsConfig = MetricsConfig()
    """The metrics pipeline autoscaling and the dashboard read: a Prometheus the stack installs or an existing
    one, and KEDA (Kubernetes runtime only)."""

    _secret_sections: frozenset[str] = PrivateAttr(default=frozenset())

    def is_secret(self, key: str) -> bool:
        """Whether a top-level key is stored encrypted, so what it sets must reach its object as a secret."""
        return key in self._secret_sections

    @property
    def served_models(self) -> list[ServedModel]:
        """Every model the stack serves, in config order."""
        if self.models:
            return [ServedModel(join_key("models", name), f"{RUNNER}-{name}", model) for name, model in self.models.items()]
        return [ServedModel("runner", RUNNER, self.runner)]

    @property
    def serving_namespace(self) -> str:
        """The namespace of the model runners and the gateway."""
        return self.namespace or self.runner.namespace

    def _workloads(self) -> list[tuple[str, Any]]:
        """(config key, section) of every served workload: each model's, then the gateway's."""
        return [*((model.key, model.config) for model in self.served_models), ("gateway", self.gateway)]

    @property
    def knative_workloads(self) -> list[str]:
        """The config keys of the workloads served through Knative."""
        return [key for key, section in self._workloads() if section.workload == "knative"]

    @property
    def request_scaled_models(self) -> list[ServedModel]:
        """The models a KEDA ScaledObject scales (Kubernetes runtime)."""
        if self.runtime != "kubernetes":
            return []
        return [model for model in self.served_models if model.config.scales_on_requests]

    @property
    def installs_keda(self) -> bool:
        return self.metrics.install_keda and bool(self.request_scaled_models)

    @property
    def knative_installed(self) -> bool:
        return self.runtime == "kubernetes" and (
            bool(self.knative_workloads) if self.knative.install is None else self.knative.install)

    @property
    def gpu_models(self) -> list[ServedModel]:
        """The models that ask for GPUs, in config order."""
        return [model for model in self.served_models if model.config.gpu.count]

    def docker_gpus(self) -> dict[str, str]:
        """Docker's `--gpus` for each model that uses GPUs on the Docker runtime, by config key. One such model gets
        docker.runner.gpus, or every GPU; several get distinct devices, gpu.count each in config order
        (`device=0`, `device=1,2`, ...), because two engines on one GPU each size their memory for all of it
        and the second one fails out of memory."""
        gpu_models = self.gpu_models
        if len(gpu_models) == 1:
            return {gpu_models[0].key: self.docker.runner.gpus or "all"}
        devices: dict[str, str] = {}
        first = 0
        for model in gpu_models:
            count = model.config.gpu.count
            devices[model.key] = "device=" + ",".join(str(index) for index in range(first, first + count))
            first += count
        return devices

    def check(self, path: str) -> Iterator[Problem]:
        for key, given, runtime in settings_for_other_runtimes(self, path, self.runtime):
            yield InapplicableSetting(key, f"applies to the {runtime.capitalize()} runtime only, and does nothing on "
                                           f"this stack's runtime {self.runtime}; remove it (or set runtime: {runtime})",
                                      given)
        yield from self._model_list_problems(path)
        yield from self._generated_name_problems(path)
        yield from self._knative_problems(path)
        yield from self._wiring_problems(path)
        if self.knative.install is False and self.knative_workloads:
            yield Problem(
                join_keys(path, "knative.install"),
                f"cannot be false while {' and '.join(self.knative_workloads)} "
                f"{'is' if len(self.knative_workloads) == 1 else 'are'} served through Knative "
                "(workload: knative); set it to true or remove it",
                False,
            )
        if self.metrics.installs_prometheus and self.metrics.namespace == self.serving_namespace:
            yield Problem(join_keys(path, "metrics.namespace"),
                          "must differ from the models' namespace: the installed Prometheus gets a namespace of its "
                          "own, with its own pod security and network rules", self.metrics.namespace)
        configured_metrics = sorted(self.metrics.model_dump(by_alias=True, exclude_unset=True))
        if self.runtime == "docker" and configured_metrics:
            yield Problem(join_key(path, "metrics"), "the Docker runtime has no metrics pipeline or autoscaler; "
                          "remove these settings", ", ".join(configured_metrics))
        if self.runtime == "docker":
            for section, reason in (
                ("signing", "loads its build into the local engine: no registry holds a digest to sign"),
                ("verification", "has no admission control to verify signatures with"),
            ):
                if getattr(self.images, section).enabled:
                    yield Problem(join_keys(path, f"images.{section}.enabled"),
                                  f"the Docker runtime {reason}; it needs runtime: kubernetes", True)
        if self.runtime == "kubernetes" and self.images.verification.enabled and self.images.registry.server is None:
            yield Problem(
                join_keys(path, "images.verification.enabled"),
                "needs images.registry.server: the admission webhook runs inside the cluster, where the local "
                "registry's localhost address does not reach the signatures",
                True,
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
            deployed = [*image_fields(self, path), *(image for model in self.served_models
                                                     for image in model.config.profile_images(join_keys(path, model.key))),
                        *(self.metrics.installed_images(join_key(path, "metrics")) if self.runtime == "kubernetes" else ())]
            for key, reference in deployed:
                if not ImageReference.parse(reference).pinned:
                    yield Problem(
                        key,
                        "production stacks deploy digest-pinned images only; use name[:tag]@sha256:<digest> "
                        "(`docker buildx imagetools inspect <image>` prints the digest)",
                        reference,
                    )
            if self.installs_keda:
                yield Problem(
                    join_keys(path, "metrics.installKeda"),
                    "must be false in production: KEDA's release refers to its images by tag, and production stacks "
                    "deploy digest-pinned images only; install KEDA 2.17 with pinned images (its Helm chart takes "
                    "digests) and set this to false, or scale these models on cpu: "
                    + ", ".join(f"{model.key}.scaling.signal" for model in self.request_scaled_models),
                    True,
                )
        # Replicas and volume claims are Kubernetes objects; the Docker runtime keeps its cache volumes anyway.
        if self.environment == "production" and self.runtime == "kubernetes":
            for key, section in self._workloads():
                if section.scaling.min_replicas < 2:
                    yield Problem(
                        join_keys(path, f"{key}.scaling.minReplicas"),
                        "must be at least 2 in production: one replica can be drained or lost while the other serves",
                        section.scaling.min_replicas,
                    )
            for model in self.served_models:
                if model.config.workload == "knative" and ENGINES[model.config.engine].api_key_env is None:
                    yield Problem(
                        join_keys(path, f"{model.key}.workload"),
                        f"cannot be knative in production with engine {model.config.engine}: Knative's ingress lets "
                        "every pod in the cluster call the engine past the gateway's keys and model scopes, and "
                        f"{model.config.engine} takes no API key to refuse them (use workload deployment, or vllm or "
                        "llama.cpp, which require runnerApiKey on Knative)",
                        "knative",
                    )
                if model.config.cache.existing_claim is None and not model.config.cache.protect:
                    yield Problem(
                        join_keys(path, f"{model.key}.cache.protect"),
                        "must be true in production: a destroy or replacement must never delete downloaded models",
                        False,
                    )

    def _model_list_problems(self, path: str) -> Iterator[Problem]:
        if self.models and "runner" in self.model_fields_set:
            yield Problem(join_key(path, "runner"),
                          "is the one-model shorthand of `models`, which this stack sets too; move it into `models` "
                          "as one more entry, or remove one of them", ", ".join(sorted(self.models)))
        if self.namespace is not None and "namespace" in self.runner.model_fields_set:
            yield Problem(join_keys(path, "runner.namespace"),
                          f"says the same as the top-level `namespace` ({self.namespace!r}); set one of them",
                          self.runner.namespace)
        # The gateway routes by the model id a request names: two engines cannot share one.
        first_with: dict[str, str] = {}
        for model in self.served_models:
            earlier = first_with.setdefault(model.config.model, model.key)
            if earlier != model.key:
                yield Problem(join_keys(path, f"{model.key}.model"),
                              f"is served by {earlier} already: the gateway routes each request by the model id it "
                              "names, so every model needs its own id", model.config.model)


    def _generated_name_problems(self, path: str) -> Iterator[Problem]:
        """Models whose objects would be named alike: the second would take over, or fail on, the first's."""
        if self.runtime == "docker":
            first: dict[str, tuple[str, str]] = {}
            for model in self.served_models:
                for role, name in model.docker_containers.items():
                    other, other_role = first.setdefault(name, (model.key, role))
                    if other != model.key:
                        yield Problem(join_keys(path, model.key),
                                      f"its {role} container would be named {name}, like the {other_role} container "
                                      f"of {other}; rename one of the two models", name)
            return
        for knative in (model for model in self.served_models if model.config.workload == "knative"):
            for model in self.served_models:
                kind = knative.knative_derived(model)
                if kind is not None:
                    yield Problem(join_keys(path, model.key),
                                  f"its workload {model.workload_name} is a {kind} name Knative gives a revision of "
                                  f"{knative.key} (workload knative); rename one of the two models", model.workload_name)

    def _knative_problems(self, path: str) -> Iterator[Problem]:
        knative = self.knative
        if self.runtime == "kubernetes" and not self.knative_installed:
            for key, given in set_keys(knative, join_key(path, "knative")):
                if key != join_keys(path, "knative.install"):
                    yield InapplicableSetting(key, "configures a Knative that this stack does not install: no workload "
                                                   "is served through Knative (set a model's workload or "
                                                   "gateway.workload to knative, or knative.install: true)", given)
        if self.knative_installed:
            if not knative.scale_to_zero:
                asking = [f"{key}.scaling.minReplicas" for key, section in self._workloads()
                          if section.workload == "knative" and section.scaling.min_replicas == 0]
                if asking:
                    yield Problem(join_keys(path, "knative.scaleToZero"),
                                  f"cannot be false while {' and '.join(asking)} {'asks' if len(asking) == 1 else 'ask'} for 0 replicas "
                                  "(set it true, or minReplicas to 1 or more)", False)
            if knative.serving_version.split(".")[:2] != knative.kourier_version.split(".")[:2]:
                yield Problem(join_keys(path, "knative.kourierVersion"),
                              f"must be a release of the same minor version as knative.servingVersion "
                              f"({knative.serving_version}): net-kourier is released in step with Serving",
                              knative.kourier_version)

    def _wiring_problems(self, path: str) -> Iterator[Problem]:
        # A production stack on kind is refused as such; its GPUs are then no separate problem.
        for model in self.served_models:
            key = join_keys(path, model.key)
            if self.runtime == "kubernetes" and self.cluster.provider == "kind" and model.config.gpu.count \
                    and self.environment != "production":
                yield Problem(join_keys(key, "gpu.count"),
                              "must be 0 on kind: its nodes have no GPUs (use provider eks or existing)",
                              model.config.gpu.count)
            if self.runtime == "docker" and self.docker.runner.gpus and model.config.runs_a_cpu_build():
                yield Problem(join_keys(path, "docker.runner.gpus"),
                              f"the engine image {model.config.engine_image()!r} of {model.key} is a CPU build and "
                              f"cannot use a GPU (set {join_key(key, 'image')} to a GPU build, such as a -cuda tag)",
                              self.docker.runner.gpus)
            routing = model.config.routing
            if self.runtime == "docker":
                for name in sorted({"policy", "load_factor"} & routing.model_fields_set):
                    yield Problem(join_keys(key, f"routing.{RoutingConfig.model_fields[name].alias}"),
                                  "the Docker runtime runs one engine per model, so there is no replica to choose; "
                                  "remove it (routing.maxInFlightPerReplica and maxWaitSeconds still apply)",
                                  getattr(routing, name))
            elif model.config.workload == "deployment" and "load_factor" in routing.model_fields_set \
                    and routing.policy != "prefix":
                yield Problem(join_keys(key, "routing.loadFactor"),
                              f"applies to routing.policy prefix only (the policy is {routing.policy})",
                              routing.load_factor)
        gpu_models = [model.key for model in self.gpu_models]
        if self.runtime == "docker" and self.docker.runner.gpus is not None and len(gpu_models) > 1:
            yield Problem(join_keys(path, "docker.runner.gpus"),
                          f"would give every model's runner container the same GPUs, and {' and '.join(gpu_models)} "
                          "each ask for their own (gpu.count): remove it, and each gets gpu.count devices of its own",
                          self.docker.runner.gpus)
        if self.runtime == "docker":
            yield from self.docker.wiring_problems(
                join_key(path, "docker"), {model.key: model.config.wired_env(model.key) for model in self.served_models})


def load(
    project: str | None = None, stack: str | None = None,
    deployment_checks: Callable[[StackConfig], Iterator[Problem]] | None = None,
) -> tuple[StackConfig, StackSecrets]:
    """Reads and validates this stack's config; raises ConfigError naming every problem. `deployment_checks` are
    rules that need what the stack deploys (known before anything is registered), reported with the rest."""
    project = project or pulumi.get_project()
    stack = stack or pulumi.get_stack()
    raw, problems, unreadable = _read_raw(project)
    encrypted = secret_sections(project)
    problems.extend(credential_problems(raw, encrypted))
    config, validation_problems, invalid_locs = _validate(raw)
    problems.extend(validation_problems)
    secrets = StackSecrets.read(pulumi.Config(project))
    problems.extend(_secret_problems(project))
    if config is not None:
        invalid = _invalid_fields(config, [*((key,) for key in unreadable), *invalid_locs])
        problems.extend(config.problems("", invalid))
        problems.extend(unaffected(secrets.problems(config), invalid))
        if deployment_checks is not None:
            problems.extend(unaffected(deployment_checks(config), invalid))
    if problems:
        raise ConfigError(stack, without_moot(problems))
    assert config is not None
    config._secret_sections = encrypted
    return config, secrets


# Each pass drops what failed and validates the rest again; a nested value that fails shows up in its own pass.
_MAX_VALIDATION_PASSES = 20


def _validate(raw: dict[str, Any]) -> tuple[StackConfig | None, list[Problem], list[tuple]]:
    """Validates `raw`, leaving out whatever fails until the rest validates, so that every field error is
    reported and the cross-field checks still run on the rest. Returns the config (None if nothing could be
    salvaged), the field problems, and the locations of the fields that were left out."""
    problems: list[Problem] = []
    invalid: list[tuple] = []
    for _ in range(_MAX_VALIDATION_PASSES):
        try:
            return StackConfig.model_validate(raw), problems, invalid
        except ValidationError as error:
            locations = []
            for item in error.errors(include_url=False):
                location = _present_prefix(raw, item["loc"])
                # A required value left out in an earlier pass is reported already, as what was wrong with it.
                if not (item["type"] == "missing" and tuple(item["loc"]) in invalid):
                    problems.append(_problem(item, location))
                if item["type"] == "extra_forbidden":
                    parent = section_at(StackConfig, location[:-1])
                    close = parent and difflib.get_close_matches(str(location[-1]), _aliases(parent), n=1)
                    if close:
                        invalid.append((*location[:-1], close[0]))
                elif not location:
                    return None, problems, invalid
                else:
                    invalid.append(location)
                locations.append(location)
            raw = _without(raw, set(locations))
    return None, problems, invalid


def _aliases(section: type[Section]) -> list[str]:
    return [field.alias or name for name, field in section.model_fields.items()]


def _present_prefix(raw: Any, loc: tuple) -> tuple:
    """The longest start of a pydantic error location that exists in the document (a missing field points at
    its section; a union's member tags are not keys)."""
    present: list[str | int] = []
    current = raw
    for part in loc:
        if isinstance(current, dict) and isinstance(part, str) and part in current:
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        else:
            break
        present.append(part)
    return tuple(present)


def _without(value: Any, locations: set[tuple], here: tuple = ()) -> Any:
    if isinstance(value, dict):
        return {key: _without(item, locations, (*here, key)) for key, item in value.items() if (*here, key) not in locations}
    if isinstance(value, list):
        return [_without(item, locations, (*here, index)) for index, item in enumerate(value) if (*here, index) not in locations]
    return value


def _invalid_fields(config: StackConfig, locations: list[tuple]) -> Invalid:
    """(section id, field name) of every location: the field at it, or the field holding the map or list entry
    at it."""
    fields: set[tuple[int, str]] = set()
    for location in locations:
        section: Any = config
        deepest = None
        for part in location:
            if isinstance(section, dict) and part in section:  # an entry of a map of sections (`models.<name>`)
                section = section[part]
                continue
            if not isinstance(section, Section):
                break
            name = next((name for name, field in type(section).model_fields.items() if (field.alias or name) == part), None)
            if name is None:
                break
            deepest = (id(section), name)
            section = getattr(section, name)
        if deepest is not None:
            fields.add(deepest)
    return frozenset(fields)


def _configured_keys(project: str) -> set[str]:
    # pulumi.Config has no way to list keys; the runtime's config map is the only place that knows a key the
    # program never asks for, and an unknown key is exactly what a typo produces.
    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = f"{project}:"
    return {key[len(prefix):] for key in keys if key.startswith(prefix)}


def _read_raw(project: str) -> tuple[dict[str, Any], list[Problem], list[str]]:
    """The project's keys as a document (secrets excluded), problems reading it, and the keys that could not be
    read."""
    fields = {field.alias or name: field for name, field in StackConfig.model_fields.items()}
    raw: dict[str, Any] = {}
    problems: list[Problem] = []
    unreadable: list[str] = []
    for key in sorted(_configured_keys(project)):
        if key in SECRET_KEYS:
            continue
        if key not in fields:
            problems.append(unknown_key_problem("", key, [*fields, *SECRET_KEYS]))
            continue
        text = runtime_config.get_config(f"{project}:{key}")
        if isinstance(fields[key].default, (Section, dict)):
            try:
                raw[key] = json.loads(text)
            except json.JSONDecodeError:
                problems.append(Problem(key, "must be a map of settings (set its parts with `--path`)", text))
                unreadable.append(key)
        else:
            raw[key] = text
    return raw, problems, unreadable


def secret_sections(project: str) -> frozenset[str]:
    """Top-level keys stored encrypted: `pulumi config set --secret --path runner.env.X` encrypts inside
    `runner`, and Pulumi then hands the whole `runner` key to the program as a secret."""
    return frozenset(key for key in _configured_keys(project) if key not in SECRET_KEYS
                     and runtime_config.is_config_secret(f"{project}:{key}"))


def _secret_problems(project: str) -> Iterator[Problem]:
    for key in sorted(_configured_keys(project) & set(SECRET_KEYS)):
        if not runtime_config.is_config_secret(f"{project}:{key}"):
            yield Problem(key, "holds a credential and must be stored encrypted: `pulumi config set --secret " + key + " <value>`")


def _config_key(loc: tuple) -> str:
    key = ""
    for part in loc:
        key = join_key(key, part)
    return key


def _problem(item: Any, location: tuple) -> Problem:
    """One pydantic error as a Problem keyed by where it is in the document."""
    loc = item["loc"]
    if item["type"] == "extra_forbidden":
        parent = section_at(StackConfig, loc[:-1])
        return unknown_key_problem(_config_key(loc[:-1]), str(loc[-1]), _aliases(parent) if parent else [])
    if item["type"] == "missing":
        return Problem(_config_key(loc), "is required")
    message = item["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    message = re.sub(r"^(String|List|Dictionary) should have", "must have", message)
    return Problem(_config_key(location), message, item.get("input"))
