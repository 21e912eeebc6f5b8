"""The OpenAI-compatible gateway (`app/`) in front of the model runners: routing by model, API keys, streaming,
metrics."""

import json
from typing import Any, Mapping, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from .model_runner import ResourcesArgs
from .options import child_options
from .serving_workload import (
    PORT_NAME,
    RESTRICTED_CONTAINER,
    ScalingArgs,
    ServingWorkload,
    draining,
    isolated_pod,
)

GATEWAY_PORT = 8080
# The image's user (app/Dockerfile `USER 10001:10001`).
GATEWAY_USER = 10001
API_KEYS_KEY = "GATEWAY_API_KEYS"
UPSTREAM_API_KEY_KEY = "GATEWAY_UPSTREAM_API_KEY"
API_KEYS_DIR = "/var/run/secrets/model-gateway"
API_KEYS_FILE_NAME = "api-keys"
# The gateway's own drain: uvicorn finishes in-flight responses for up to 20 s after SIGTERM (app `__main__`),
# and the kubelet gets a few seconds more before it kills.
DRAIN_SECONDS = 25


class GatewayArgs(TypedDict):
    namespace: str
    """Namespace of every object (it must exist)."""

    image: pulumi.Input[str]
    """Gateway image, digest-pinned."""

    models: Mapping[str, pulumi.Input[str]]
    """Each served model's id (what requests name and `/v1/models` lists) -> the OpenAI-compatible base URL of
    the engine serving it, API path included (`http://...:8000/v1`)."""

    resources: ResourcesArgs
    """CPU and memory per replica."""

    scaling: ScalingArgs
    """Replica bounds and autoscaling targets."""

    request_timeout_seconds: int
    """Longest a proxied completion may take, streamed responses included."""

    workload: NotRequired[str]
    """`deployment` (default) or `knative`."""

    cors_allow_origins: NotRequired[list[str]]
    """Browser origins allowed to call the API."""

    routing: NotRequired[Mapping[str, Mapping[str, Any]]]
    """Each model's routing over its replicas (the gateway's GATEWAY_ROUTING entries: `policy`,
    `maxInFlightPerReplica`, `maxWaitSeconds`, `holdSeconds`, `replicasHost`); a model left out has one upstream
    and no admission limit."""

    max_request_bytes: NotRequired[int]
    """Largest request body accepted (the gateway's own default, 1 MiB, when absent)."""

    upstream_scales_to_zero: NotRequired[bool]
    """A model runner scales to zero when idle: readiness then checks the gateway alone, because a probe that
    asks the runners every few seconds would keep them from ever scaling down."""

    api_keys: NotRequired[pulumi.Input[str]]
    """API keys clients must present (a Pulumi secret), comma- or newline-separated; a line `<key> <model>,...`
    limits that key to those models. Absent disables authentication."""

    upstream_api_key: NotRequired[pulumi.Input[str]]
    """Key (a Pulumi secret) the gateway sends every engine as `Authorization: Bearer`, for engines that require
    one (a runner's `api_key`); clients' own keys never reach an engine."""

    image_pull_secrets: NotRequired[list[str]]
    """Names of dockerconfigjson Secrets in the namespace to pull the image with."""

    allowed_clients: NotRequired[list[dict[str, Any]]]
    """NetworkPolicy peers that may call the gateway (the ingress layer); absent admits every client. Ignored on
    Knative, where only Knative's data path can reach the pods."""

    node_port: NotRequired[int]
    """Deployment: also reachable on every node at this node port (a kind cluster's mapped host port)."""

    allowed_destinations: NotRequired[list[dict[str, Any]]]
    """NetworkPolicy egress rules for where the gateway may connect (the runner); DNS is always allowed. The
    gateway holds the API keys: nothing else should be reachable from it."""

    progress_deadline_seconds: NotRequired[int]
    """How long a new gateway pod may take to become ready, and so what `pulumi up` waits for: readiness asks the
    models, so as long as the slowest of them may take to (re)load. Absent: Kubernetes' default (10 minutes)."""


class Gateway(pulumi.ComponentResource):
    """The gateway workload: settings as environment, API keys from a Secret, hardened, probed."""

    url: pulumi.Output[str]
    """In-cluster base URL of the gateway's OpenAI-compatible API (`.../v1`)."""

    service_name: pulumi.Output[str]
    """Name of the gateway's Service."""

    def __init__(self, name: str, args: GatewayArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:Gateway", name, None, opts)
        namespace = args["namespace"]
        depends_on: list[pulumi.Resource] = []
        keys = {key: pulumi.Output.secret(args[field]) for key, field in (  # type: ignore[literal-required]
            (API_KEYS_KEY, "api_keys"), (UPSTREAM_API_KEY_KEY, "upstream_api_key")) if field in args}
        if keys:
            depends_on.append(
                k8s.core.v1.Secret(
                    _api_keys_secret_name(name),
                    metadata={"name": _api_keys_secret_name(name), "namespace": namespace},
                    type="Opaque",
                    string_data=keys,
                    opts=child_options(self, opts),
                )
            )
        workload = ServingWorkload(
            name,
            {
                "namespace": namespace,
                "port": GATEWAY_PORT,
                "pod_spec": gateway_pod_spec(name, args),
                "scaling": args["scaling"],
                "workload": args.get("workload", "deployment"),
                "request_timeout_seconds": args["request_timeout_seconds"],
                **{key: args[key] for key in ("allowed_clients", "allowed_destinations", "progress_deadline_seconds", "node_port")
                   if key in args},  # type: ignore[misc]
            },
            opts=pulumi.ResourceOptions.merge(child_options(self, opts), pulumi.ResourceOptions(depends_on=depends_on)),
        )
        self.service_name = workload.service_name
        self.url = workload.url.apply(lambda base: f"{base}/v1")
        self.register_outputs({"url": self.url, "service_name": self.service_name})


def _api_keys_secret_name(name: str) -> str:
    return f"{name}-api-keys"


def gateway_route_env(models: Mapping[str, pulumi.Input[str]]) -> dict[str, pulumi.Input[str]]:
    """The gateway's routing settings: one model as GATEWAY_UPSTREAM_BASE_URL and GATEWAY_MODEL (which a gateway
    image from before GATEWAY_MODELS reads too), several as the GATEWAY_MODELS table."""
    if len(models) == 1:
        [(model, url)] = models.items()
        return {"GATEWAY_UPSTREAM_BASE_URL": url, "GATEWAY_MODEL": model}
    routes = dict(models)
    known = all(isinstance(url, str) for url in routes.values())
    return {"GATEWAY_MODELS": json.dumps(routes) if known else pulumi.Output.json_dumps(routes)}


def gateway_pod_spec(name: str, args: GatewayArgs) -> dict[str, Any]:
    """The gateway's pod (Kubernetes PodSpec, camelCase)."""
    env: list[dict[str, Any]] = [
        # Set explicitly: a Service named `gateway` would otherwise inject GATEWAY_PORT=tcp://... links.
        {"name": "GATEWAY_PORT", "value": str(GATEWAY_PORT)},
        *({"name": name, "value": value} for name, value in gateway_route_env(args["models"]).items()),
        {"name": "GATEWAY_REQUEST_TIMEOUT_SECONDS", "value": str(args["request_timeout_seconds"])},
    ]
    if args.get("cors_allow_origins"):
        env.append({"name": "GATEWAY_CORS_ALLOW_ORIGINS", "value": ",".join(args["cors_allow_origins"])})
    if args.get("routing"):
        env.append({"name": "GATEWAY_ROUTING", "value": json.dumps(args["routing"], sort_keys=True)})
    if "max_request_bytes" in args:
        env.append({"name": "GATEWAY_MAX_REQUEST_BYTES", "value": str(args["max_request_bytes"])})
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if "api_keys" in args:
        # A file, not environment: no process environment holds the keys, and the gateway reads the file again
        # when the kubelet swaps in a rotated Secret (the provider updates it in place), without a restart.
        volumes.append({"name": "api-keys", "secret": {
            "secretName": _api_keys_secret_name(name), "items": [{"key": API_KEYS_KEY, "path": API_KEYS_FILE_NAME}]}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
        env.append({"name": "GATEWAY_API_KEYS_FILE", "value": f"{API_KEYS_DIR}/{API_KEYS_FILE_NAME}"})
    if "upstream_api_key" in args:
        # The gateway reads this one from its environment only.
        env.append({"name": UPSTREAM_API_KEY_KEY, "valueFrom": {
            "secretKeyRef": {"name": _api_keys_secret_name(name), "key": UPSTREAM_API_KEY_KEY}}})

    lifecycle, grace_period = draining(DRAIN_SECONDS)
    container = {
        "name": "gateway",
        "image": args["image"],
        "ports": [{"name": PORT_NAME, "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": {kind: dict(args["resources"][kind]) for kind in ("requests", "limits")},
        "volumeMounts": mounts,
        "securityContext": RESTRICTED_CONTAINER,
        # /ready checks the upstream too: a gateway whose model runner is gone takes no traffic.
        "readinessProbe": {
            "httpGet": {"path": "/health" if args.get("upstream_scales_to_zero") else "/ready", "port": PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME}, "periodSeconds": 20, "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": lifecycle,
    }
    pod_spec: dict[str, Any] = {
        **isolated_pod(GATEWAY_USER),
        "terminationGracePeriodSeconds": grace_period,
        "containers": [container],
        "volumes": volumes,
    }
    if args.get("image_pull_secrets"):
        pod_spec["imagePullSecrets"] = [{"name": secret} for secret in args["image_pull_secrets"]]
    return pod_spec
