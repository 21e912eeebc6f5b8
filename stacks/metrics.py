"""The observability layer: the metrics pipeline, the dashboard, KEDA and a ScaledObject per request-scaled model."""

from __future__ import annotations

import pulumi

from components.dashboard import dashboard_json
from components.engines import ENGINES
from components.gateway import GATEWAY_PORT
from components.inference_signals import SIGNALS, ServedModelRef, held_query, load_query
from components.metrics_pipeline import MetricsPipeline, MetricsPipelineArgs, ScrapeTarget, query_url
from components.model_autoscaler import Keda, ModelAutoscaler, ModelAutoscalerArgs, keda_images

from .cluster import ClusterHandle
from .config import StackConfig
from .config.metrics import KUBE_STATE_METRICS_IMAGE, PROMETHEUS_IMAGE
from .images import ImageHandle

GATEWAY = "gateway"
# The serving containers of the gateway's and the runners' pods (components/gateway.py, model_runner.py).
GATEWAY_CONTAINER = "gateway"
ENGINE_CONTAINER = "engine"


def metrics_images(config: StackConfig) -> list[str]:
    """Images the observability layer deploys, before the registry mapping."""
    if config.runtime != "kubernetes":
        return []
    return [*config.metrics.images(), *(keda_images() if config.installs_keda else [])]


def model_refs(config: StackConfig) -> list[ServedModelRef]:
    return [ServedModelRef(config.serving_namespace, model.workload_name, model.config.model, model.config.engine)
            for model in config.served_models]


def stack_dashboard(config: StackConfig, stack: str) -> str:
    return dashboard_json(f"model-stack: {stack}", model_refs(config))


def scrape_targets(config: StackConfig) -> list[ScrapeTarget]:
    """The gateway, and every engine that exports metrics. A model runner admits only the gateway (or Knative's
    data path); the gateway is open to every pod unless `gateway.allowedNamespaces` or Knative says otherwise."""
    gateway = config.gateway
    targets: list[ScrapeTarget] = [{
        "workload": GATEWAY, "container": GATEWAY_CONTAINER, "port": GATEWAY_PORT, "path": "/metrics",
        "isolated": gateway.workload == "knative" or bool(gateway.allowed_namespaces)}]
    for model in config.served_models:
        profile = ENGINES[model.config.engine]
        if profile.metrics_path is not None:
            targets.append({"workload": model.workload_name, "container": ENGINE_CONTAINER,
                            "port": model.config.port or profile.port, "path": profile.metrics_path,
                            "isolated": True})
    return targets


def observe(
    config: StackConfig, cluster: ClusterHandle, images: ImageHandle, serving: list[pulumi.Resource],
    runners: dict[str, pulumi.Resource],
) -> None:
    """`serving`: the serving namespace (and what it waits for); `runners`: each model's runner by workload name,
    which its ScaledObject follows."""
    metrics = config.metrics
    args: MetricsPipelineArgs = {
        "mode": metrics.scrape_mode,
        "namespace": metrics.namespace,
        "serving_namespace": config.serving_namespace,
        "targets": scrape_targets(config),
        "dashboard": stack_dashboard(config, pulumi.get_stack()),
    }
    if metrics.installs_prometheus:
        args["prometheus_image"] = images.rewrite(metrics.prometheus_image or PROMETHEUS_IMAGE)
        args["kube_state_metrics_image"] = images.rewrite(metrics.kube_state_metrics_image or KUBE_STATE_METRICS_IMAGE)
    if metrics.monitor_labels:
        args["monitor_labels"] = dict(metrics.monitor_labels)
    pipeline = MetricsPipeline(
        "metrics", args,
        opts=pulumi.ResourceOptions(providers=[cluster.provider], depends_on=[*cluster.ready, *images.ready, *serving]),
    )
    server = query_url(metrics.namespace) if metrics.installs_prometheus else metrics.prometheus_url
    pulumi.export("prometheusUrl", server)
    scaled = config.request_scaled_models
    if not scaled:
        return
    ready: list[pulumi.Resource] = [pipeline]
    if config.installs_keda:
        ready.append(Keda("keda", {"rewrite_rules": dict(images.rewrite_rules)},
                          opts=pulumi.ResourceOptions(providers=[cluster.provider],
                                                      depends_on=[*cluster.ready, *images.ready])))
    for model in scaled:
        ref = ServedModelRef(config.serving_namespace, model.workload_name, model.config.model, model.config.engine)
        scaling = model.config.scaling
        autoscaler: ModelAutoscalerArgs = {
            "namespace": config.serving_namespace,
            "deployment": model.workload_name,
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "server_address": server,
            "load_query": load_query(ref),
            "target_per_replica": scaling.target_requests or SIGNALS[model.config.engine].target,
        }
        if scaling.min_replicas == 0:
            autoscaler["activation_query"] = held_query(ref)
        if metrics.aws_region is not None:
            autoscaler["aws_region"] = metrics.aws_region
        ModelAutoscaler(
            model.workload_name, autoscaler,
            opts=pulumi.ResourceOptions(providers=[cluster.provider],
                                        depends_on=[*cluster.ready, *ready, runners[model.workload_name]]),
        )
