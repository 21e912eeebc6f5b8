"""A self-hosted model server: an engine serving one model from a persistent cache, behind a stable name."""


import hashlib
import json
import math
from typing import Any, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from .engines import (
    CACHE_MOUNT_PATH, ENGINES, HF_TOKEN_PATH_ENV, SHM_PATH, EngineContainer, ProbeAction, render_profile,
)
from .options import child_options
from .serving_workload import (
    PORT_NAME,
    RESTRICTED_CONTAINER,
    ScalingArgs,
    ServingWorkload,
    ServingWorkloadArgs,
    draining,
    isolated_pod,
    workload_labels,
)

# The hub token's key in the runner's Secret, and where the download step finds it.
HF_TOKEN_KEY = "hf-token"
# The engine's API key's key in the same Secret.
API_KEY_KEY = "api-key"
HUB_TOKEN_DIR = "/var/run/secrets/model-stack"
# Marks a model cache claim that `pulumi destroy` leaves in the cluster (retain_on_delete).
RETAINED_ANNOTATION = "model-stack.dev/retained"
# Any UID works for the engines (see engines.py); a fixed one makes file ownership on the cache predictable.
RUN_AS_USER = 10001
# Readiness: three misses in a row take a replica out of the Service; a busy engine is slow, not gone.
READINESS_FAILURE_THRESHOLD = 3
# Liveness only catches a wedged process: a generous timeout and two minutes of silence before a restart.
LIVENESS_PERIOD_SECONDS = 20
LIVENESS_TIMEOUT_SECONDS = 10
LIVENESS_FAILURE_THRESHOLD = 6
PROBE_TIMEOUT_SECONDS = 5
# In-flight streamed completions get this long to finish after SIGTERM when a pod is stopped.
DRAIN_SECONDS = 60
# Time a new pod gets on top of the load budget to pull its image: engine images run to gigabytes (vLLM ~10 GB)
# and a node added by the autoscaler has none cached.
IMAGE_PULL_ALLOWANCE_SECONDS = 300
CACHE_VOLUME = "model-cache"


class ComputeArgs(TypedDict):
    cpu: NotRequired[str]
    """CPU quantity."""

    memory: NotRequired[str]
    """Memory quantity."""


class ResourcesArgs(TypedDict):
    requests: ComputeArgs
    """What the scheduler reserves."""

    limits: ComputeArgs
    """Hard caps."""


class GpuArgs(TypedDict):
    count: int
    """NVIDIA GPUs per replica; 0 runs on CPU."""

    node_selector: NotRequired[dict[str, str]]
    """Labels of the nodes that have them."""

    tolerations: NotRequired[list[dict[str, str]]]
    """Tolerations for the taints GPU nodes carry."""

    runtime_class_name: NotRequired[str]
    """RuntimeClass of the NVIDIA container runtime, where the cluster uses one."""


class CacheArgs(TypedDict):
    size: str
    """Capacity of the volume this component creates."""

    access_mode: str
    """`ReadWriteOnce` (one node; one replica, replaced on update) or `ReadWriteMany` (shared by every replica)."""

    storage_class: NotRequired[str]
    """Storage class; absent uses the cluster default."""

    existing_claim: NotRequired[str]
    """Mount this PersistentVolumeClaim instead of creating one."""

    protect: NotRequired[bool]
    """Keep the claim (and so the volume) in the cluster when it leaves the stack: `pulumi destroy` completes and
    leaves it, and a later `pulumi up` adopts it with the models still in it. The namespace must outlive the
    stack too (its deletion would take the claim with it)."""


class ModelRunnerArgs(TypedDict):
    namespace: str
    """Namespace of every object (it must exist)."""

    engine: str
    """`docker-model-runner`, `vllm`, `ollama` or `llama.cpp`."""

    model: str
    """Model to serve, in the engine's naming."""

    resources: ResourcesArgs
    """CPU and memory per replica."""

    cache: CacheArgs
    """The persistent model cache."""

    scaling: ScalingArgs
    """Replica bounds and autoscaling targets."""

    load_budget_seconds: int
    """Longest a replica may take from start to serving the model; the startup probe allows exactly this long."""

    probe_period_seconds: int
    """How often startup and readiness ask whether the model can answer."""

    image_pull_seconds: NotRequired[int]
    """Time a new pod gets on top of the load budget to pull its images before its rollout fails; absent:
    IMAGE_PULL_ALLOWANCE_SECONDS."""

    workload: NotRequired[str]
    """`deployment` (default) or `knative`."""

    image: NotRequired[str]
    """Engine image; absent uses the engine profile's."""

    pull_sidecar_image: NotRequired[str]
    """Image of the pull sidecar, for engines that pull through their own API (the same mirror rules apply)."""

    port: NotRequired[int]
    """Engine port; absent uses the engine's default."""

    api_base_path: NotRequired[str]
    """OpenAI API path of the engine (`/v1`); absent uses the engine's."""

    liveness_path: NotRequired[str]
    """HTTP path that answers while the process is alive; absent uses the engine's."""

    ready_path: NotRequired[str]
    """HTTP path that answers 200 only once the model can serve; absent uses the engine's model-ready check."""

    model_hub: NotRequired[str]
    """Base URL of the Hugging Face-compatible hub (or mirror) vLLM and llama.cpp download weights from; absent
    uses https://huggingface.co."""

    request_timeout_seconds: NotRequired[int]
    """Knative: longest one request may take (a streamed completion); Knative's default applies when absent."""

    args: NotRequired[list[str]]
    """Extra engine arguments."""

    env: NotRequired[dict[str, str]]
    """Extra non-secret engine environment."""

    gpu: NotRequired[GpuArgs]
    """GPUs per replica and where they are."""

    api_key: NotRequired[pulumi.Input[str]]
    """A key (a Pulumi secret) the engine then requires on its OpenAI API, for engines that take one (vLLM,
    llama.cpp): whoever reaches the engine without it, past the network policy (Knative's ingress admits every
    pod), is refused. The gateway must send it (its `upstream_api_key`)."""

    hf_token: NotRequired[pulumi.Input[str]]
    """Hugging Face token (a Pulumi secret) for gated models; kept in a Secret, never in the ConfigMap."""

    secret_env: NotRequired[dict[str, pulumi.Input[str]]]
    """Engine environment that must stay secret (e.g. from a config section stored encrypted); kept in the
    Secret with the Hugging Face token, never in the ConfigMap."""

    image_pull_secrets: NotRequired[list[str]]
    """Names of dockerconfigjson Secrets in the namespace to pull images with."""

    allowed_clients: NotRequired[list[dict[str, Any]]]
    """NetworkPolicy peers that may reach the model port; nothing else can."""


def probe_timing(load_budget_seconds: int, period_seconds: int) -> dict[str, int]:
    """Startup probe timing that tolerates a model load of `load_budget_seconds`: it fails the pod only after
    `failureThreshold * periodSeconds >= budget`, and it asks every period, so the pod turns Ready within one
    period of the model being able to answer."""
    return {
        "periodSeconds": period_seconds,
        "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
        "failureThreshold": math.ceil(load_budget_seconds / period_seconds),
    }


def _probe(action: ProbeAction, timing: dict[str, int]) -> dict[str, Any]:
    handler: dict[str, Any] = (
        {"httpGet": {"path": action.http_path, "port": PORT_NAME}}
        if action.http_path is not None
        else {"exec": {"command": list(action.command)}}
    )
    return {**handler, **timing}


def render_engine(args: ModelRunnerArgs) -> EngineContainer:
    """The engine profile rendered for the configured model, with every override the args carry."""
    overrides = {
        field: args[field]  # type: ignore[literal-required]
        for field in ("image", "port", "api_base_path", "liveness_path", "ready_path", "model_hub")
        if field in args
    }
    profile = ENGINES[args["engine"]]
    if "api_key" in args:
        if profile.api_key_env is None:
            raise ValueError(f"engine {args['engine']} takes no API key")
        # A probe that asks a path the key guards would never see the model ready.
        if profile.ready_path_with_key is not None:
            overrides.setdefault("ready_path", profile.ready_path_with_key)
    return render_profile(args["engine"], args["model"], **overrides)


def _settings(engine: EngineContainer, args: ModelRunnerArgs) -> dict[str, str]:
    return {**engine.env, **args.get("env", {})}


def _config_name(name: str, settings: dict[str, str]) -> str:
    # Settings reach the engine as environment, read once at start: a new name per content makes a change
    # roll the pods (the pod template refers to the new ConfigMap) and keeps the old one until they have rolled.
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def _credentials_name(name: str) -> str:
    return f"{name}-credentials"


def _credentials(args: ModelRunnerArgs) -> dict[str, pulumi.Input[str]]:
    return {**args.get("secret_env", {}), **({HF_TOKEN_KEY: args["hf_token"]} if "hf_token" in args else {}),
            **({API_KEY_KEY: args["api_key"]} if "api_key" in args else {})}


def _claim_name(name: str, cache: CacheArgs) -> str:
    return cache.get("existing_claim", f"{name}-cache")


class ModelRunner(pulumi.ComponentResource):
    """An engine serving one model behind an OpenAI-compatible API, with its cache, settings and credentials."""

    url: pulumi.Output[str]
    """In-cluster base URL of the OpenAI-compatible API (ends in the engine's API path, e.g. `/v1`)."""

    service_name: pulumi.Output[str]
    """Name of the Service in front of the engine."""

    namespace: pulumi.Output[str]
    """Namespace the runner is in."""

    port: pulumi.Output[int]
    """Port the Service exposes."""

    model: pulumi.Output[str]
    """Model id clients pass in requests."""

    def __init__(self, name: str, args: ModelRunnerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:ModelRunner", name, None, opts)
        namespace = args["namespace"]
        engine = render_engine(args)
        child = child_options(self, opts)
        labels = workload_labels(name)

        settings = _settings(engine, args)
        config_map_name = _config_name(name, settings)
        settings_objects: list[pulumi.Resource] = [k8s.core.v1.ConfigMap(
            config_map_name,
            metadata={"name": config_map_name, "namespace": namespace, "labels": labels},
            data=settings,
            opts=child,
        )]
        credentials = _credentials(args)
        if credentials:
            settings_objects.append(k8s.core.v1.Secret(
                _credentials_name(name),
                metadata={"name": _credentials_name(name), "namespace": namespace, "labels": labels},
                type="Opaque",
                string_data={key: pulumi.Output.secret(value) for key, value in credentials.items()},
                opts=child,
            ))
        if "existing_claim" not in args["cache"]:
            settings_objects.append(self._cache_claim(name, namespace, labels, args["cache"], child))

        workload_args: ServingWorkloadArgs = {
            "namespace": namespace,
            "port": engine.port,
            "pod_spec": runner_pod_spec(name, args),
            "scaling": args["scaling"],
            "workload": args.get("workload", "deployment"),
            # A surge pod runs beside the old one, which it cannot do when it needs what the old pod holds:
            # - a single-node volume, which cannot follow it to another node;
            # - a free GPU, and at peak (every node busy, the group at its max) there is none: the rollout would
            #   wait out its progress deadline. Even below the max, a node added for it takes minutes before the
            #   image pull and model load start.
            # Such replicas are replaced one at a time: the old pod stops, then the new one starts.
            "surge": args["cache"]["access_mode"] == "ReadWriteMany" and args.get("gpu", {"count": 0})["count"] == 0,
            "allowed_clients": args.get("allowed_clients", []),
            # A new pod pulls its image and then loads the model; the rollout gives up on it after this.
            "progress_deadline_seconds": args["load_budget_seconds"]
            + args.get("image_pull_seconds", IMAGE_PULL_ALLOWANCE_SECONDS),
            "cluster_local": True,
            # The gateway finds the ready replicas through it and spreads requests over them by load and prefix.
            "replicas_service": True,
        }
        if "request_timeout_seconds" in args:
            workload_args["request_timeout_seconds"] = args["request_timeout_seconds"]
        workload = ServingWorkload(
            name,
            workload_args,
            # Pods that start before their settings and cache exist fail to start; create those first.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=settings_objects)),
        )
        self.service_name = workload.service_name
        self.url = workload.url.apply(lambda base: base + engine.api_base_path)
        self.namespace = pulumi.Output.from_input(namespace)
        self.port = workload.port
        self.model = pulumi.Output.from_input(args["model"])
        self.register_outputs(
            {"url": self.url, "service_name": self.service_name, "namespace": self.namespace, "port": self.port,
             "model": self.model}
        )

    def _cache_claim(
        self, name: str, namespace: str, labels: dict[str, str], cache: CacheArgs, opts: pulumi.ResourceOptions
    ) -> k8s.core.v1.PersistentVolumeClaim:
        claim_name = _claim_name(name, cache)
        retained = cache.get("protect", False)
        spec: dict[str, Any] = {
            "accessModes": [cache["access_mode"]],
            "resources": {"requests": {"storage": cache["size"]}},
        }
        if "storage_class" in cache:
            spec["storageClassName"] = cache["storage_class"]
        return k8s.core.v1.PersistentVolumeClaim(
            claim_name,
            metadata={
                "name": claim_name,
                "namespace": namespace,
                "labels": labels,
                "annotations": {
                    # WaitForFirstConsumer classes (kind's local-path) bind only once a pod mounts the claim;
                    # waiting for Bound here would deadlock with the Deployment that waits for this claim.
                    "pulumi.com/skipAwait": "true",
                    # Policy packs see `protect` but not `retainOnDelete`: this says the claim is retained.
                    **({RETAINED_ANNOTATION: "true"} if retained else {}),
                },
            },
            spec=spec,
            # Not `protect`: that would make `pulumi destroy` refuse to run at all.
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=retained)),
        )


def runner_pod_spec(name: str, args: ModelRunnerArgs) -> dict[str, Any]:
    """The runner's pod (Kubernetes PodSpec, camelCase): pure data, so the Knative features it needs can be
    known before anything is deployed."""
    engine = render_engine(args)
    labels = workload_labels(name)
    env_from: list[dict[str, Any]] = [{"configMapRef": {"name": _config_name(name, _settings(engine, args))}}]
    # Secret env the user configured stays env (the engine reads it so); the hub token is a file (below).
    secret_env = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": _credentials_name(name), "key": key}}}
        for key in sorted(args.get("secret_env", {}))
    ]
    claim = _claim_name(name, args["cache"])
    gpu = args.get("gpu", {"count": 0})
    resources: dict[str, Any] = {
        kind: {key: value for key, value in args["resources"][kind].items()} for kind in ("requests", "limits")
    }
    if gpu["count"]:
        resources["requests"]["nvidia.com/gpu"] = str(gpu["count"])
        resources["limits"]["nvidia.com/gpu"] = str(gpu["count"])
    writable = [{"name": volume, "mountPath": path} for volume, path in engine.writable_paths.items()]
    mounts = [{"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT_PATH}, *writable]
    volumes: list[dict[str, Any]] = [
        {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}},
        *({"name": mount["name"], "emptyDir": {}} for mount in writable),
    ]
    if engine.shared_memory:
        mounts.append({"name": "shm", "mountPath": SHM_PATH})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}})
    timing = probe_timing(args["load_budget_seconds"], args["probe_period_seconds"])
    lifecycle, grace_period = draining(DRAIN_SECONDS)
    # Only the engine sees its API key; the pull step needs none.
    api_key_env = [{"name": ENGINES[args["engine"]].api_key_env,
                    "valueFrom": {"secretKeyRef": {"name": _credentials_name(name), "key": API_KEY_KEY}}}
                   ] if "api_key" in args else []
    serving: dict[str, Any] = {
        "name": "engine",
        "image": engine.image,
        "ports": [{"name": PORT_NAME, "containerPort": engine.port, "protocol": "TCP"}],
        "envFrom": env_from,
        **({"env": [*secret_env, *api_key_env]} if secret_env or api_key_env else {}),
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": RESTRICTED_CONTAINER,
        # The model-ready check gates both: startup ends the moment the model can answer, readiness keeps
        # checking it; liveness only starts after startup, so a loading model is never killed.
        "startupProbe": _probe(engine.model_ready, timing),
        "readinessProbe": _probe(
            engine.model_ready, {**timing, "failureThreshold": READINESS_FAILURE_THRESHOLD}
        ),
        "livenessProbe": _probe(
            engine.liveness,
            {
                "periodSeconds": LIVENESS_PERIOD_SECONDS,
                "timeoutSeconds": LIVENESS_TIMEOUT_SECONDS,
                "failureThreshold": LIVENESS_FAILURE_THRESHOLD,
            },
        ),
        "lifecycle": lifecycle,
    }
    if engine.command:
        serving["command"] = list(engine.command)
    engine_args = [*engine.args, *args.get("args", [])]
    if engine_args:
        serving["args"] = engine_args
    pull = {
        "name": "model-pull",
        "image": args.get("pull_sidecar_image", engine.pull.image) if engine.pull.image else engine.image,
        "command": list(engine.pull.command),
        "envFrom": env_from,
        "env": [*({"name": key, "value": value} for key, value in sorted(engine.pull.env.items())), *secret_env],
        "volumeMounts": mounts,
        "securityContext": RESTRICTED_CONTAINER,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }
    if "hf_token" in args:
        # Only the step that downloads sees the token, as a file: no process environment holds it.
        volumes.append({"name": "hub-token", "secret": {
            "secretName": _credentials_name(name), "items": [{"key": HF_TOKEN_KEY, "path": HF_TOKEN_KEY}]}})
        pull["volumeMounts"] = [*mounts, {"name": "hub-token", "mountPath": HUB_TOKEN_DIR, "readOnly": True}]
        pull["env"].append({"name": HF_TOKEN_PATH_ENV, "value": f"{HUB_TOKEN_DIR}/{HF_TOKEN_KEY}"})
    if not pull["env"]:
        del pull["env"]
    spec: dict[str, Any] = {
        **isolated_pod(
            RUN_AS_USER,
            # The cache becomes writable for the engine's group without a root chmod; only a root
            # directory with the wrong group is changed, so a large cache is not re-walked at every start.
            fsGroup=RUN_AS_USER,
            fsGroupChangePolicy="OnRootMismatch",
        ),
        "terminationGracePeriodSeconds": grace_period,
        "volumes": volumes,
    }
    if engine.pull.mode == "init":
        spec["initContainers"] = [pull]
        spec["containers"] = [serving]
    else:
        spec["containers"] = [serving, pull]
    image_pull_secrets = args.get("image_pull_secrets", [])
    if image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": secret} for secret in image_pull_secrets]
    if args.get("workload") == "knative" and args["cache"]["access_mode"] == "ReadWriteOnce":
        # Knative starts a new revision's pod before the old one goes and cannot be told to Recreate; a
        # single-node volume is still attachable there if the new pod lands on the same node. The first pod
        # matches its own term, so it schedules anywhere.
        spec["affinity"] = {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}
                ]
            }
        }
    if gpu["count"]:
        if gpu.get("node_selector"):
            spec["nodeSelector"] = dict(gpu["node_selector"])
        if gpu.get("tolerations"):
            spec["tolerations"] = list(gpu["tolerations"])
        if gpu.get("runtime_class_name"):
            spec["runtimeClassName"] = gpu["runtime_class_name"]
    return spec
