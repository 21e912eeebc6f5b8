"""The serving layer: the model runner and the gateway in front of it, as Deployments or Knative Services."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import pulumi
import pulumi_kubernetes as k8s

from components.engines import ENGINES, PULL_SIDECAR_IMAGE
from components.gateway import Gateway, gateway_pod_spec
from components.knative_serving import MAX_REVISION_TIMEOUT_KEY
from components.model_runner import ModelRunner, runner_pod_spec
from components.serving_workload import (
    KNATIVE_DATA_PATH_NAMESPACES, KNATIVE_QUEUE_PROXY_CPU_REQUEST, knative_features, replicas_service_name,
    workload_labels,
)

from .admission import guarded_namespace_labels
from .cluster import ClusterHandle
from .config import ServedModel, StackConfig
from .config.base import Problem, byte_count, join_keys, quantity_value
from .config.cluster import INSTANCE_TYPES
from .config.runner import ModelConfig
from .config.secrets import StackSecrets
from .config.workload import ResourcesConfig, ScalingConfig
from .images import ImageHandle
from .knative import KnativeHandle
from .metrics import observe
from .routing import gateway_routing

GATEWAY = "gateway"
# Knative 1.15's default ceiling for a revision's request timeout (config-defaults, max-revision-timeout-seconds).
KNATIVE_MAX_REVISION_TIMEOUT_SECONDS = 600


def serve_models(
    config: StackConfig,
    secrets: StackSecrets,
    cluster: ClusterHandle,
    images: ImageHandle,
    knative: Optional[KnativeHandle],
    admission: list[pulumi.Resource],
) -> None:
    """`admission`: the signature policy that guards the model namespace, which workloads wait for."""
    namespace_name = config.serving_namespace
    namespace = k8s.core.v1.Namespace(
        namespace_name,
        metadata={
            "name": namespace_name,
            # The API server itself refuses any pod here that breaks the restricted Pod Security Standard.
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
                **guarded_namespace_labels(config),
            },
        },
        # Deleting a namespace deletes every claim in it: one that holds a retained model cache stays, and the
        # next `pulumi up` adopts it (server-side apply creates over what exists).
        opts=pulumi.ResourceOptions(provider=cluster.provider, depends_on=cluster.ready,
                                    retain_on_delete=any(retains_model_cache(model.config) for model in config.served_models)),
    )
    pull_secret = images.pull_secret(
        namespace_name, pulumi.ResourceOptions(provider=cluster.provider, depends_on=[namespace])
    )
    image_pull_secrets = [pull_secret] if pull_secret else []

    def workload_opts(workload: str) -> pulumi.ResourceOptions:
        depends_on: list[pulumi.Resource] = [*cluster.ready, namespace, *images.ready, *admission]
        if workload == "knative":
            if knative is None:
                raise pulumi.RunError("a workload is served through Knative, but the Knative layer installed nothing")
            depends_on.extend(knative.ready)
        return pulumi.ResourceOptions(providers=[cluster.provider], depends_on=depends_on)

    routes: dict[str, pulumi.Output[str]] = {}
    runners: dict[str, pulumi.Resource] = {}
    for model in config.served_models:
        runner_args = _runner_args(config, model, cluster, images.rewrite, image_pull_secrets)
        if secrets.hf_token is not None:
            runner_args["hf_token"] = secrets.hf_token
        if secrets.runner_api_key is not None and model.config.workload == "knative":
            # Knative's ingress admits every pod in the cluster: the key keeps all but the gateway out.
            runner_args["api_key"] = secrets.runner_api_key
        runner = ModelRunner(model.workload_name, runner_args, opts=workload_opts(model.config.workload))
        routes[model.config.model] = runner.url
        runners[model.workload_name] = runner
    pulumi.export("modelRunnerUrls", routes)
    if len(routes) == 1:  # the output one-model stacks have always had, which scripts may read
        [url] = routes.values()
        pulumi.export("modelRunnerUrl", url)

    gateway_config = config.gateway
    gateway_args = _gateway_args(config, images.gateway_image, routes, image_pull_secrets)
    if secrets.gateway_api_keys is not None:
        gateway_args["api_keys"] = secrets.gateway_api_keys
    if secrets.runner_api_key is not None:
        gateway_args["upstream_api_key"] = secrets.runner_api_key
    # Without Knative's ingress, the host port kind maps for it leads to a Deployment gateway open to every client
    # (one limited to some namespaces would refuse traffic from the nodes anyway).
    public = (cluster.ingress_node_ports is not None and not config.knative_installed
              and gateway_config.workload == "deployment" and not gateway_config.allowed_namespaces)
    if public:
        gateway_args["node_port"] = cluster.ingress_node_ports[0]
    # The gateway is ready only once a model answers: it rolls out after the runners' own rollouts, which wait
    # out their load budgets, so a cold first `up` does not spend the gateway's deadline on model loads.
    gateway = Gateway(GATEWAY, gateway_args, opts=pulumi.ResourceOptions.merge(
        workload_opts(gateway_config.workload), pulumi.ResourceOptions(depends_on=list(runners.values()))))
    pulumi.export("gatewayUrl", gateway.url)
    if gateway_config.workload == "knative" and knative is not None and knative.domain is not None:
        pulumi.export("gatewayPublicUrl", f"http://{GATEWAY}.{namespace_name}.{knative.domain}{_ingress_port(config)}/v1")
    elif public:
        pulumi.export("gatewayPublicUrl", f"http://127.0.0.1{_ingress_port(config)}/v1")
    observe(config, cluster, images, [namespace], runners)


def _ingress_port(config: StackConfig) -> str:
    """`:<port>` when the ingress is reached on a port other than HTTP's own (a remapped kind host port)."""
    port = config.cluster.kind.http_host_port if config.cluster.provider == "kind" else 80
    return "" if port == 80 else f":{port}"


def knative_settings(config: StackConfig, cluster: ClusterHandle) -> dict[str, dict[str, str]]:
    """What Knative Serving must allow for the workloads this config serves through it, per ConfigMap in
    `knative-serving`: the `config-features` flags their pods need, and a `config-defaults` ceiling for request
    timeouts that admits streams as long as the gateway waits. Empty when nothing runs on Knative."""
    # Only the pods' shape matters here, not which registry their images come from or where the runner is.
    features: set[str] = set()
    for model in config.served_models:
        if model.config.workload == "knative":
            features.update(knative_features(
                runner_pod_spec(model.workload_name, _runner_args(config, model, cluster, _as_is, []))))
    if config.gateway.workload == "knative":
        routes = {model.config.model: f"http://{model.workload_name}/v1" for model in config.served_models}
        gateway_args = _gateway_args(config, config.gateway.image or "model-gateway", routes, [])
        features.update(knative_features(gateway_pod_spec(GATEWAY, gateway_args)))
    if not config.knative_workloads:
        return {}
    return {
        "config-features": {feature: "enabled" for feature in sorted(features)},
        "config-defaults": {
            # The ceiling covers the default revision timeout too: Knative refuses a default above it.
            MAX_REVISION_TIMEOUT_KEY: str(max(
                KNATIVE_MAX_REVISION_TIMEOUT_SECONDS, config.gateway.request_timeout_seconds,
                config.knative.revision_timeout_seconds,
            ))
        },
    }


def _as_is(reference: str) -> str:
    return reference


# Where a pod's shape is all that is asked for: no cluster exists yet, and none is needed.
_NO_CLUSTER = ClusterHandle(provider=None, kubeconfig=None)  # type: ignore[arg-type]
# (request key, config key under the model, how a quantity of it reads)
_SCHEDULED_RESOURCES = (
    ("cpu", "resources.requests.cpu", lambda cores: f"{cores:g} CPU" if cores == int(cores) else f"{cores * 1000:g}m CPU"),
    ("memory", "resources.requests.memory", lambda size: f"{size / 2**20:g}Mi memory"),
    ("nvidia.com/gpu", "gpu.count", lambda count: f"{count:g} GPU"),
)


def pod_requests(pod_spec: dict[str, Any], knative: bool) -> dict[str, float]:
    """What the scheduler reserves for a pod: each resource's sum over its containers or its largest init
    container's, whichever is more, plus Knative's queue proxy for a revision's pod."""
    def requests(container: dict[str, Any]) -> dict[str, float]:
        return {name: quantity_value(str(value))
                for name, value in container.get("resources", {}).get("requests", {}).items()}

    running: dict[str, float] = {}
    for container in pod_spec["containers"]:
        for name, value in requests(container).items():
            running[name] = running.get(name, 0) + value
    if knative:
        running["cpu"] = running.get("cpu", 0) + quantity_value(KNATIVE_QUEUE_PROXY_CPU_REQUEST)
    for container in pod_spec.get("initContainers", []):
        for name, value in requests(container).items():
            running[name] = max(running.get(name, 0), value)
    return running


def scheduling_problems(config: StackConfig) -> Iterator[Problem]:
    """Models whose pods no node of the EKS node group they can land on could ever hold: a model with GPUs goes to
    the GPU group (its selector and toleration), one without to the system group (it does not tolerate the GPU
    nodes' taint). Each pod must fit one node's allocatable resources, the per-node DaemonSets deducted."""
    eks = config.cluster.eks
    if config.runtime != "kubernetes" or config.cluster.provider != "eks" or eks is None:
        return
    for model in config.served_models:
        gpu = model.config.gpu.count > 0
        setting, instance_type = ("gpuInstanceType", eks.gpu_instance_type) if gpu else ("systemInstanceType", eks.system_instance_type)
        node = INSTANCE_TYPES[instance_type]
        offered = {"cpu": node.allocatable_millicores() / 1000, "memory": node.allocatable_mebibytes() * 2**20,
                   "nvidia.com/gpu": node.gpus}
        pod = runner_pod_spec(model.workload_name, _runner_args(config, model, _NO_CLUSTER, _as_is, []))
        requested = pod_requests(pod, model.config.workload == "knative")
        for resource, key, show in _SCHEDULED_RESOURCES:
            if requested.get(resource, 0) > offered[resource]:
                group = "GPU node group" if gpu else "system node group (a pod without GPUs does not tolerate the GPU nodes' taint)"
                knative = " and Knative's queue proxy" if model.config.workload == "knative" else ""
                yield Problem(
                    join_keys(model.key, key),
                    f"its pod requests {show(requested[resource])} in all (the engine's request with the stack's "
                    f"pull step{knative}), more than a node of the {group} can ever give it: "
                    f"a {instance_type} has {show(offered[resource])} allocatable after EKS's reservations and the "
                    f"per-node DaemonSets; lower it, or choose a larger cluster.eks.{setting}",
                    model.config.gpu.count if resource == "nvidia.com/gpu" else getattr(
                        model.config.resources.requests, resource),
                )


def runner_images(model: ModelConfig) -> tuple[str, str]:
    """The engine image and the pull sidecar's, before the registry mapping."""
    return model.image or ENGINES[model.engine].image, model.pull_sidecar_image or PULL_SIDECAR_IMAGE


def upstream_images(config: StackConfig) -> list[str]:
    """Images the serving layer deploys as configured, before the registry mapping (the gateway's own build
    excluded: it is pushed where it is pulled from)."""
    engines = [image for model in config.served_models for image in runner_images(model.config)]
    return list(dict.fromkeys([*engines, *([config.gateway.image] if config.gateway.image else [])]))


def retains_model_cache(model: ModelConfig) -> bool:
    return model.cache.protect and model.cache.existing_claim is None


def _runner_args(
    config: StackConfig, model: ServedModel, cluster: ClusterHandle, rewrite: Callable[[str], str],
    image_pull_secrets: list[str],
) -> dict[str, Any]:
    runner_config = model.config
    engine_image, pull_sidecar_image = runner_images(runner_config)
    gpu = runner_config.gpu
    runner_args: dict[str, Any] = {
        "namespace": config.serving_namespace,
        "engine": runner_config.engine,
        "model": runner_config.model,
        "image": rewrite(engine_image),
        "pull_sidecar_image": rewrite(pull_sidecar_image),
        "args": list(runner_config.args),
        # A section stored encrypted keeps its env secret all the way to the pod.
        ("secret_env" if config.is_secret(model.top_level_key) else "env"): dict(runner_config.env),
        "resources": _resources(runner_config.resources),
        "gpu": {
            "count": gpu.count,
            "node_selector": {**cluster.gpu_node_selector, **gpu.node_selector},
            "tolerations": list(cluster.gpu_tolerations),
            **({"runtime_class_name": gpu.runtime_class_name} if gpu.runtime_class_name else {}),
        },
        "cache": _cache(runner_config, cluster),
        "scaling": _scaling(runner_config.scaling),
        "load_budget_seconds": runner_config.load_budget_seconds,
        "image_pull_seconds": runner_config.image_pull_seconds,
        # The gateway waits this long for an answer; the runner lets a request run as long.
        "request_timeout_seconds": config.gateway.request_timeout_seconds,
        "probe_period_seconds": runner_config.probe_period_seconds,
        "workload": runner_config.workload,
        "image_pull_secrets": image_pull_secrets,
        "allowed_clients": [
            {"podSelector": {"matchLabels": workload_labels(GATEWAY)}},
            *_namespaces(runner_config.allowed_namespaces),
        ],
    }
    overrides = {
        "port": runner_config.port,
        "api_base_path": runner_config.api_base_path,
        "liveness_path": runner_config.liveness_path,
        "ready_path": runner_config.ready_path,
        "model_hub": runner_config.model_hub,
    }
    runner_args.update({key: value for key, value in overrides.items() if value is not None})
    return runner_args


def _gateway_args(
    config: StackConfig, image: pulumi.Input[str], routes: dict[str, pulumi.Input[str]], image_pull_secrets: list[str]
) -> dict[str, Any]:
    """`routes`: each model's id -> the OpenAI base URL of its engine."""
    gateway_config = config.gateway
    destinations = [_runner_destination(model) for model in config.served_models]
    scales_to_zero = any(model.config.scaling.min_replicas == 0 for model in config.served_models)
    return {
        "namespace": config.serving_namespace,
        "image": image,
        "models": routes,
        "upstream_scales_to_zero": scales_to_zero,
        # A gateway pod readied by the models' answers may have to wait for a runner that restarts meanwhile (an
        # evicted or rescheduled replica pulls and loads again): as long as the slowest model may take.
        **({} if scales_to_zero else {"progress_deadline_seconds": max(
            model.config.load_budget_seconds + model.config.image_pull_seconds for model in config.served_models)}),
        "resources": _resources(gateway_config.resources),
        "scaling": _scaling(gateway_config.scaling),
        "request_timeout_seconds": gateway_config.request_timeout_seconds,
        "workload": gateway_config.workload,
        "cors_allow_origins": list(gateway_config.cors_allow_origins),
        "max_request_bytes": byte_count(gateway_config.max_request_body),
        "routing": gateway_routing(config, replicas_host=lambda model: (
            # Fully qualified (the final dot): the resolver asks for it as is, without walking the search domains.
            f"{replicas_service_name(model.workload_name)}.{config.serving_namespace}.svc.cluster.local.")),
        "image_pull_secrets": image_pull_secrets,
        **({"allowed_clients": _namespaces(gateway_config.allowed_namespaces)}
           if gateway_config.allowed_namespaces else {}),
        # Models served alike share one rule.
        "allowed_destinations": [rule for index, rule in enumerate(destinations) if rule not in destinations[:index]],
    }


def _namespaces(names: list[str]) -> list[dict[str, Any]]:
    return [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}} for name in names]


def _runner_destination(model: ServedModel) -> dict[str, Any]:
    """Where the gateway's calls to a model's runner go: its pods on the engine port, or Knative's data path (the
    activator and Kourier), which forwards to them."""
    if model.config.workload == "knative":
        return {"to": _namespaces(list(KNATIVE_DATA_PATH_NAMESPACES))}
    port = model.config.port or ENGINES[model.config.engine].port
    return {"to": [{"podSelector": {"matchLabels": workload_labels(model.workload_name)}}],
            "ports": [{"port": port, "protocol": "TCP"}]}


def _resources(resources: ResourcesConfig) -> dict[str, dict[str, str]]:
    return {
        kind: resources_of.model_dump(exclude_none=True)
        for kind, resources_of in (("requests", resources.requests), ("limits", resources.limits))
    }


def _scaling(scaling: ScalingConfig) -> dict[str, Any]:
    return scaling.model_dump(exclude_none=True)


def _cache(runner_config, cluster: ClusterHandle) -> dict[str, Any]:
    cache = runner_config.cache
    args: dict[str, Any] = {"size": cache.size, "access_mode": cache.access_mode, "protect": cache.protect}
    if cache.existing_claim is not None:
        args["existing_claim"] = cache.existing_claim
    storage_class = cache.storage_class or cluster.model_cache_storage_class
    if storage_class is not None:
        args["storage_class"] = storage_class
    return args
