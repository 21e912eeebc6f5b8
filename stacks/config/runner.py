"""The model runner: engine, model, cache, resources, probes, scaling and exposure."""

from __future__ import annotations

import re
from typing import Annotated, Iterator, Literal, Optional

from pydantic import Field

from components.engines import ENGINES, PULL_SIDECAR_IMAGE, EngineContainer
from components.model_runner import IMAGE_PULL_ALLOWANCE_SECONDS

from .base import (
    ImageReference,
    ByteQuantity, DnsSubdomain, EnvValue, ImageRef, KubernetesEnvName, LabelKey, LabelValue, Namespace, Problem,
    Section, join_key, join_keys, matching, only_on,
)
from .workload import AllowedNamespaces, ServedWorkload, ResourcesConfig, ScalingConfig

EngineName = Literal["docker-model-runner", "vllm", "ollama", "llama.cpp"]
# The address every engine profile binds to, so the Service, the probes and the gateway reach it.
BIND_HOST = "0.0.0.0"
# Flags that move the engine's OpenAI API under another path (llama.cpp `--api-prefix`, vLLM `--root-path`), which
# the gateway's upstream URL and the probes would no longer find.
API_PATH_FLAGS = frozenset({"--api-prefix", "--root-path"})
# Engines whose images are CPU builds unless a GPU variant's tag says otherwise (Docker Model Runner's
# `latest-cuda`, llama.cpp's `server-cuda`, `server-rocm`, `server-vulkan`, ...).
CPU_BUILD_ENGINES = frozenset({"docker-model-runner", "llama.cpp"})
_GPU_BUILD_TAG = re.compile(r"cuda|rocm|vulkan|musa|gpu|intel|sycl", re.IGNORECASE)
Port = Annotated[int, Field(ge=1, le=65535)]
# An http(s) base URL without query, fragment or trailing slash. A user:password part parses here so that the
# credential rule (config/credentials.py) names it once, as a credential.
HubUrl = Annotated[
    str,
    matching(r"https?://([^/@\s]+@)?[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%-]+)*",
             "an http(s) base URL such as https://hf-mirror.example.com"),
]
HttpPath = Annotated[str, matching(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*", "an absolute URL path such as /v1")]


class ModelScalingConfig(ScalingConfig):
    signal: Literal["requests", "cpu"] = "requests"
    """Deployment workloads: what the autoscaler follows. `requests` (default): the model's requests waiting +
    running per replica, from the engine's metrics (vLLM, llama.cpp) or the gateway's (Ollama, Docker Model
    Runner), through a KEDA ScaledObject on Prometheus (`metrics`); it also allows `minReplicas: 0`. `cpu`: a
    HorizontalPodAutoscaler on CPU utilisation (`targetCpuUtilization`, and `podsMetric` where a metrics adapter
    serves one). Knative workloads scale on Knative's concurrency instead."""

    target_requests: Optional[Annotated[int, Field(ge=1, le=10000)]] = None
    """`requests`: requests waiting + running per replica the autoscaler aims for; unset: the engine's batch
    capacity per replica (vLLM 32, llama.cpp 4, Ollama 1, Docker Model Runner 4; README, "Autoscaling on
    inference signals"). Set it from the engine's own setting (`--max-num-seqs`, `--parallel`,
    `OLLAMA_NUM_PARALLEL`) or a load test."""

    def signal_problems(self, path: str) -> Iterator[Problem]:
        """Settings of the other signal (a Deployment workload's: Knative ignores the signal)."""
        ignored = {"requests": ("target_cpu_utilization", "pods_metric"), "cpu": ("target_requests",)}[self.signal]
        for name in ignored:
            if name in self.model_fields_set:
                value = getattr(self, name)
                yield Problem(join_key(path, type(self).model_fields[name].alias or name),
                              f"applies to another scaling.signal than {self.signal!r}; remove it or set signal",
                              value.name if isinstance(value, Section) else value)


class CacheConfig(Section):
    size: ByteQuantity = "10Gi"
    """Capacity of the model cache volume; leave room for the model plus one upgrade of it."""

    storage_class: Optional[DnsSubdomain] = None
    """Storage class of the cache volume; unset uses the cluster layer's choice (kind: local-path `standard`,
    EKS: the EFS class that supports ReadWriteMany)."""

    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = "ReadWriteOnce"
    """`ReadWriteOnce`: one node mounts the cache, so the runner is limited to one replica, and an update stops it
    before its replacement starts (a replacement started beside it could land on another node and wait forever
    for the volume). `ReadWriteMany`: replicas on any node share one cache and updates roll with zero downtime."""

    existing_claim: Optional[DnsSubdomain] = None
    """Use this PersistentVolumeClaim (in the runner's namespace) instead of creating one."""

    protect: bool = False
    """Keep the cache volume whatever happens to the stack: `pulumi destroy` completes and leaves the claim (and
    the runner's namespace, whose deletion would take the claim with it) in the cluster, and the next `pulumi up`
    adopts both with the models still there. On EKS the EFS file system under it is retained too."""

    def check(self, path: str) -> Iterator[Problem]:
        if self.existing_claim is not None and self.storage_class is not None:
            yield Problem(
                join_key(path, "storageClass"),
                "applies to a volume this stack creates; remove it or existingClaim",
                self.storage_class,
            )


class GpuConfig(Section):
    count: Annotated[int, Field(ge=0, le=16)] = 0
    """NVIDIA GPUs per replica (`nvidia.com/gpu`); 0 runs on CPU."""

    node_selector: Annotated[dict[LabelKey, LabelValue], only_on("kubernetes")] = {}
    """Extra labels GPU nodes must carry (added to what the cluster layer knows about its GPU nodes)."""

    runtime_class_name: Annotated[Optional[DnsSubdomain], only_on("kubernetes")] = None
    """RuntimeClass for GPU pods, where the cluster uses one for the NVIDIA runtime (e.g. `nvidia`)."""


class RoutingConfig(Section):
    """How the gateway spreads the model's requests over its replicas and how many each takes at once."""

    policy: Literal["prefix", "least-loaded", "random"] = "prefix"
    """Which replica gets a request: `prefix` sends requests whose prompts start alike (a conversation's turns,
    one system prompt) to the replica that holds that prompt in its cache, unless it carries more than `loadFactor`
    times the mean load; `least-loaded` the one with the fewest requests in flight; `random` any."""

    load_factor: Annotated[float, Field(ge=1, le=10)] = 1.25
    """`prefix` only: a replica keeps the prompts that map to it while it carries at most this many times the mean
    load (requests in flight and waiting for it); beyond that the next replica takes them. Higher keeps more turns
    where their prompt is cached (less evaluated again) and makes more of them wait for a busy replica; 1.25 is
    HAProxy's `hash-balance-factor` 125, from consistent hashing with bounded loads."""

    max_in_flight_per_replica: Optional[Annotated[int, Field(ge=1, le=4096)]] = None
    """Requests the gateway sends a replica at once; more wait in the gateway for the first replica with room, so
    no engine is pushed past its batch capacity. Unset: the engine's own batch capacity, read from `args` and
    `env`: vLLM's `--max-num-seqs` (default 256), llama.cpp's `--parallel` slots (default 4), Ollama's
    `OLLAMA_NUM_PARALLEL` (default 1), Docker Model Runner's bundled llama.cpp (4)."""

    max_wait_seconds: Annotated[float, Field(ge=0, le=3600)] = 30
    """Longest a request waits in the gateway for a replica with room before it gets 429 with `Retry-After`
    (0: at once)."""


class ModelConfig(ServedWorkload):
    """One served model and the engine workload serving it: engine, model, cache, resources, probes, scaling and
    exposure."""

    engine: EngineName = "docker-model-runner"
    """Serving engine. `docker-model-runner` and `llama.cpp` run GGUF models on CPU; `vllm` needs a GPU;
    `ollama` runs on either."""

    model: str = "ai/smollm2:360M-Q4_K_M"
    """Model to serve, in the engine's own naming: an OCI reference such as `ai/smollm2:360M-Q4_K_M` (Docker
    Model Runner); a Hugging Face repository such as `Qwen/Qwen2.5-7B-Instruct` (vLLM); an Ollama name,
    `[host/][namespace/]model[:tag]` such as `llama3.2:3b`, or a GGUF repository on Hugging Face as
    `hf.co/<user>/<repo>:<quantization>` (also `huggingface.co/...`) (Ollama); a GGUF file in a Hugging Face
    repository, `<owner>/<repo>/[<folder>/...]<file>.gguf` (llama.cpp), where a model split into parts is named by
    its first (`<name>-00001-of-00003.gguf`) and every part is downloaded. No path segment may be empty, `.` or
    `..`."""

    image: Optional[ImageRef] = None
    """Engine image; unset uses the engine profile's image. Production needs it digest-pinned. For
    `docker-model-runner` and `llama.cpp`, whose images are CPU builds unless the tag names a GPU variant
    (`-cuda`, `-rocm`, `-vulkan`, ...), `gpu.count` is refused with a CPU tag; an image pinned by digest alone
    (`name@sha256:...`) shows no build, so there the stack takes `gpu.count` as you set it."""

    model_hub: Optional[HubUrl] = None
    """Base URL of a Hugging Face-compatible hub the engine downloads weights from, for sites behind a firewall
    or air-gapped ones with a mirror (`https://hf-mirror.internal`); unset: https://huggingface.co. vLLM gets it as
    `HF_ENDPOINT`; llama.cpp downloads `<modelHub>/<owner>/<repo>/resolve/main/<path in the repository>`. Ollama
    pulls from its own registry and Docker Model Runner from an OCI registry, so neither takes it."""

    pull_sidecar_image: Optional[ImageRef] = None
    """Image of the pull sidecar for engines that pull through their own API (Docker Model Runner); unset uses
    a small curl image. Production needs it digest-pinned."""

    port: Optional[Port] = None
    """Port the engine listens on; unset uses the engine's default."""

    api_base_path: Optional[HttpPath] = None
    """OpenAI API path of the engine (the gateway's upstream URL ends in it); unset uses the engine's
    (`/engines/v1` for Docker Model Runner, `/v1` for the others)."""

    liveness_path: Optional[HttpPath] = None
    """Path that answers while the engine process is alive; unset uses the engine's."""

    ready_path: Optional[HttpPath] = None
    """Path that answers 200 only once the model can serve (startup and readiness probes); unset uses the
    engine's own model-ready check."""

    args: list[str] = []
    """Extra engine arguments, appended to the profile's (e.g. `--max-model-len=8192` for vLLM)."""

    env: dict[KubernetesEnvName, EnvValue] = {}
    """Extra non-secret environment for the engine (credentials belong in secrets such as `hfToken`)."""

    resources: Annotated[ResourcesConfig, only_on("kubernetes")] = ResourcesConfig(
        requests={"cpu": "1", "memory": "2Gi"}, limits={"memory": "4Gi"}
    )
    """CPU and memory per replica; size memory for the weights plus the KV cache."""

    gpu: GpuConfig = GpuConfig()
    """GPUs per replica and how GPU nodes are selected."""

    cache: Annotated[CacheConfig, only_on("kubernetes")] = CacheConfig()
    """The persistent model cache (on the Docker runtime, the `docker.cacheVolume` volume, always kept)."""

    scaling: Annotated[ModelScalingConfig, only_on("kubernetes")] = ModelScalingConfig()
    """Replica bounds, the signal the autoscaler follows and its target."""

    load_budget_seconds: Annotated[int, Field(ge=30, le=7200)] = 600
    """Longest a replica may take from start to serving the model (weights read from the cache, loaded to the
    device). The startup probe allows exactly this long before restarting the pod; readiness follows within one
    probe period of the model being ready."""

    image_pull_seconds: Annotated[int, Field(ge=0, le=3600), only_on("kubernetes")] = IMAGE_PULL_ALLOWANCE_SECONDS
    """Time a new replica gets on top of `loadBudgetSeconds` to pull its images, after which its rollout has
    failed (the Deployment's progress deadline; `pulumi up` reports the pod's reason). Engine images run to
    gigabytes (vLLM's about 10 GB) and a node the autoscaler adds has none cached. Lower it where the nodes pull
    from a registry beside them, so a model that cannot start fails its update sooner."""

    probe_period_seconds: Annotated[int, Field(ge=1, le=60), only_on("kubernetes")] = 5
    """How often the startup and readiness probes ask whether the model can answer."""

    allowed_namespaces: Annotated[AllowedNamespaces, only_on("kubernetes")] = []
    """Deployment workloads: namespaces whose pods may call the model runner directly; the gateway always may, and
    nothing else can. A Knative runner is reached through Knative's ingress, which every pod can reach, so no
    namespace can be singled out there: vLLM and llama.cpp runners on Knative answer only the key the gateway holds
    (`runnerApiKey`)."""

    routing: RoutingConfig = RoutingConfig()
    """How the gateway routes the model's requests over its replicas and admits them. On Knative the gateway sees
    one upstream (Knative spreads requests and limits them with `scaling.targetConcurrency`), so it applies to
    Deployment runners and, for the admission limit and wait, to the Docker runtime's one engine."""

    def in_flight_limit(self) -> int:
        """Requests the gateway sends one replica at once: the setting, or the engine's batch capacity."""
        return self.routing.max_in_flight_per_replica or ENGINES[self.engine].batch_capacity(self.args, self.env)

    def profile_images(self, path: str) -> Iterator[tuple[str, str]]:
        """Images the runner deploys that this config leaves to the engine profile, keyed by the setting that
        would override each."""
        profile = ENGINES[self.engine]
        if self.image is None:
            yield join_key(path, "image"), profile.image
        if profile.render(self.model).pull.mode == "sidecar" and self.pull_sidecar_image is None:
            yield join_key(path, "pullSidecarImage"), PULL_SIDECAR_IMAGE

    def engine_image(self) -> str:
        return self.image or ENGINES[self.engine].image

    def runs_a_cpu_build(self) -> bool:
        """Whether the engine image is known to use no GPU at all: a CPU engine's tag that names no GPU variant.
        An image pinned by digest alone says nothing about its build, so the user's GPU settings are taken at
        their word there."""
        tag = ImageReference.parse(self.engine_image()).tag
        return self.engine in CPU_BUILD_ENGINES and tag is not None and not _GPU_BUILD_TAG.search(tag)

    def wired_env(self, path: str) -> dict[str, str]:
        """Engine env the stack sets to wire the port and bind address, with the setting that changes it."""
        engine = self._rendered()
        return {name: join_key(path, "port") for name, value in engine.env.items() if str(engine.port) in value}

    def _rendered(self) -> EngineContainer:
        return ENGINES[self.engine].render(self.model, self.port)

    def wiring_problems(self, path: str) -> Iterator[Problem]:
        """Extra args or env that would move the engine off the port, address or API path the Service, the
        probes and the gateway are wired to."""
        engine = self._rendered()
        wired_flags = {flag for flag, value in zip(engine.args, engine.args[1:])
                       if flag.startswith("--") and value in (str(engine.port), BIND_HOST)} | API_PATH_FLAGS
        for index, argument in enumerate(self.args):
            flag = argument.partition("=")[0]
            if flag in wired_flags:
                yield Problem(
                    join_key(join_key(path, "args"), index),
                    f"{flag} would move the engine off the port, address or API path the stack wires its Service, "
                    f"probes and gateway to; set {join_key(path, 'port')} or {join_key(path, 'apiBasePath')} instead",
                    argument,
                )
        for name, setting in self.wired_env(path).items():
            if name in self.env:
                yield Problem(join_key(join_key(path, "env"), name),
                              f"is how the stack sets the engine's port and address; set {setting} instead", self.env[name])

    @property
    def scales_on_requests(self) -> bool:
        """Whether a KEDA ScaledObject scales this model's Deployment (room to scale, on the requests signal)."""
        scaling = self.scaling
        return self.workload == "deployment" and scaling.signal == "requests" and scaling.max_replicas > scaling.min_replicas

    def check(self, path: str) -> Iterator[Problem]:
        # Problems are reported until a check reads a field that failed validation: the rules that read the
        # fewest fields come first.
        yield from self.scaling_problems(path)
        if self.workload == "deployment":
            yield from self.scaling.signal_problems(join_key(path, "scaling"))
        else:
            for name in ("signal", "target_requests"):
                if name in self.scaling.model_fields_set:
                    yield Problem(join_keys(path, f"scaling.{ModelScalingConfig.model_fields[name].alias}"),
                                  "applies to Deployment workloads; Knative scales on in-flight requests "
                                  "(scaling.targetConcurrency)", getattr(self.scaling, name))
        if self.workload == "knative":
            for name in sorted(self.routing.model_fields_set):
                yield Problem(join_keys(path, f"routing.{RoutingConfig.model_fields[name].alias}"),
                              "applies to Deployment runners; through Knative the gateway has one upstream, and "
                              "Knative spreads requests and limits them per replica (scaling.targetConcurrency)",
                              getattr(self.routing, name))
        if self.cache.access_mode == "ReadWriteOnce" and self.scaling.max_replicas > 1:
            yield Problem(
                join_keys(path, "scaling.maxReplicas"),
                "must be 1 while cache.accessMode is ReadWriteOnce: a single-node volume cannot be mounted by "
                "replicas on other nodes (set cache.accessMode to ReadWriteMany to scale out)",
                self.scaling.max_replicas,
            )
        if self.workload == "knative" and self.allowed_namespaces:
            yield Problem(
                join_key(path, "allowedNamespaces"),
                "applies to Deployment workloads: Knative's ingress forwards to this runner for every pod in the "
                "cluster, so its network policy cannot admit some namespaces and not others (remove it, or serve the "
                "model with workload: deployment)",
                self.allowed_namespaces,
            )
        if self.gpu.count == 0:
            for name, value in (("nodeSelector", self.gpu.node_selector), ("runtimeClassName", self.gpu.runtime_class_name)):
                if value:
                    yield Problem(join_keys(path, f"gpu.{name}"),
                                  "applies to GPU pods only; it is ignored while gpu.count is 0 (set gpu.count)", value)
        elif self.runs_a_cpu_build():
            yield Problem(
                join_keys(path, "gpu.count"),
                f"must be 0 with the CPU build {self.engine_image()!r}: it cannot use a GPU (set "
                f"{join_key(path, 'image')} to a GPU build of the engine, such as a -cuda tag)",
                self.gpu.count,
            )
        profile = ENGINES[self.engine]
        if (problem := profile.model_problem(self.model)) is not None:
            yield Problem(join_key(path, "model"), problem, self.model)
        if self.model_hub is not None and not profile.downloads_from_hub:
            yield Problem(
                join_key(path, "modelHub"),
                f"applies to engines that download from a Hugging Face-compatible hub (vllm, llama.cpp), not "
                f"{self.engine}, which pulls from its own registry; remove it",
                self.model_hub,
            )
        if profile.needs_gpu and self.gpu.count == 0:
            yield Problem(join_keys(path, "gpu.count"), f"must be at least 1 for engine {self.engine}", 0)
        yield from self.wiring_problems(path)


class RunnerConfig(ModelConfig):
    """The model runner of a stack that serves one model (the shorthand for `models` with a single entry)."""

    namespace: Annotated[Namespace, only_on("kubernetes")] = "models"
    """Namespace of the model runner and the gateway (the top-level `namespace` key says the same for any
    number of models; set one of them)."""
