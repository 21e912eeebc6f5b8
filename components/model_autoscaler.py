"""KEDA, and a KEDA ScaledObject per model that scales its Deployment on requests waiting + running per replica.

KEDA is installed from its release manifest, kept in this repository
(`components/manifests/keda-<version>.yaml`, rendered from the `config/` of KEDA's Go module at that tag the way
KEDA's `make release` renders it: scripts/render-keda-release), so the install needs no download; every image goes
through the registry mapping. CRDs are applied first, then the rest; ScaledObjects wait for both (KEDA's admission
webhook and the operator are awaited like any Deployment).

A ScaledObject makes (and owns) the HorizontalPodAutoscaler of its Deployment, fed by KEDA's external metrics
server from a Prometheus query: the model's requests waiting + running over all its replicas, with a threshold per
replica (an `AverageValue` target: the HPA divides the sum by the replica count). With `min_replicas: 0`, KEDA
itself takes the Deployment from 0 to 1 when the gateway holds a request for the model (`activationThreshold`), and
back to 0 once the model has had no request for `cooldownPeriod`.
"""

import copy
import functools
from pathlib import Path
from typing import Any, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import yaml

from .image_rewrite import rewrite_image
from .options import child_options
from .serving_workload import SCALE_DOWN_STABILIZATION_SECONDS

KEDA_VERSION = "2.17.2"
KEDA_MANIFEST = Path(__file__).resolve().parent / "manifests" / f"keda-{KEDA_VERSION}.yaml"
KEDA_NAMESPACE = "keda"
# How long a model scaled to zero stays up after its last request (KEDA's cooldownPeriod, its default too).
SCALE_TO_ZERO_COOLDOWN_SECONDS = 300
# How often KEDA asks Prometheus while the model is at zero (it checks activation itself at this period).
POLLING_INTERVAL_SECONDS = 15


@functools.cache
def keda_release() -> tuple[dict[str, Any], ...]:
    """The objects of KEDA's release manifest, as released."""
    return tuple(document for document in yaml.safe_load_all(KEDA_MANIFEST.read_text()) if document)


def keda_images() -> list[str]:
    """Every image KEDA's release deploys."""
    return sorted({container["image"] for obj in keda_release()
                   for container in (obj.get("spec", {}).get("template", {}).get("spec") or {}).get("containers", [])})


class KedaArgs(TypedDict):
    rewrite_rules: NotRequired[dict[str, str]]
    """Registry mapping applied to every image of the release."""


class Keda(pulumi.ComponentResource):
    """KEDA's operator, metrics server and admission webhook, ready for ScaledObjects once this is done."""

    def __init__(self, name: str, args: KedaArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:Keda", name, None, opts)
        rules = args.get("rewrite_rules", {})
        objects = [copy.deepcopy(obj) for obj in keda_release()]
        for obj in objects:
            pod = obj.get("spec", {}).get("template", {}).get("spec") or {}
            for container in pod.get("containers", []):
                container["image"] = rewrite_image(container["image"], rules)
        crds = [obj for obj in objects if obj["kind"] == "CustomResourceDefinition"]
        rest = [obj for obj in objects if obj["kind"] != "CustomResourceDefinition"]
        child = child_options(self, opts)
        crd_group = k8s.yaml.v2.ConfigGroup(f"{name}-crds", objs=crds, opts=child)
        k8s.yaml.v2.ConfigGroup(
            f"{name}-operator", objs=rest,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[crd_group])),
        )
        self.register_outputs({})


class ModelAutoscalerArgs(TypedDict):
    namespace: str
    """Namespace of the Deployment (and of the ScaledObject)."""

    deployment: str
    """Name of the Deployment to scale."""

    min_replicas: int
    """0 scales to zero when idle (woken by `activation_query`)."""

    max_replicas: int
    """Most replicas the autoscaler may run."""

    server_address: str
    """Prometheus base URL KEDA queries (e.g. http://prometheus.monitoring.svc:9090)."""

    load_query: str
    """PromQL: the model's requests waiting + running over all replicas."""

    target_per_replica: int
    """Requests waiting + running per replica the autoscaler aims for."""

    activation_query: NotRequired[str]
    """PromQL that is above 0 while a request waits for the model (the gateway's held requests): wakes a model
    scaled to zero. Required with `min_replicas: 0`."""

    aws_region: NotRequired[str]
    """Prometheus is Amazon Managed Service for Prometheus in this region: KEDA signs its queries with SigV4 as
    its own pod identity (IRSA)."""


class ModelAutoscaler(pulumi.ComponentResource):
    """A KEDA ScaledObject that scales one model's Deployment on its requests waiting + running per replica."""

    def __init__(self, name: str, args: ModelAutoscalerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:ModelAutoscaler", name, None, opts)
        child = child_options(self, opts)
        metadata = {"name": args["deployment"], "namespace": args["namespace"]}
        authentication: dict[str, Any] = {}
        if "aws_region" in args:
            k8s.apiextensions.CustomResource(
                f"{name}-aws",
                api_version="keda.sh/v1alpha1",
                kind="TriggerAuthentication",
                metadata=metadata,
                spec={"podIdentity": {"provider": "aws"}},
                opts=child,
            )
            authentication = {"authenticationRef": {"name": args["deployment"]}}

        def trigger(name: str, query: str, activation: Optional[str] = None) -> dict[str, Any]:
            metadata_: dict[str, str] = {
                "serverAddress": args["server_address"],
                "query": query,
                "threshold": str(args["target_per_replica"]),
            }
            if activation is not None:
                metadata_["activationThreshold"] = activation
            if "aws_region" in args:
                metadata_["awsRegion"] = args["aws_region"]
            return {"type": "prometheus", "name": name, "metricType": "AverageValue", "metadata": metadata_,
                    **authentication}

        triggers = [trigger("requests", args["load_query"])]
        if args["min_replicas"] == 0:
            # The engine of a model at zero exports nothing: the gateway's held requests wake it, any one of them.
            triggers.append(trigger("held", args["activation_query"], activation="0"))
        spec: dict[str, Any] = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": args["deployment"]},
            "minReplicaCount": args["min_replicas"],
            "maxReplicaCount": args["max_replicas"],
            "pollingInterval": POLLING_INTERVAL_SECONDS,
            "cooldownPeriod": SCALE_TO_ZERO_COOLDOWN_SECONDS,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                "scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_STABILIZATION_SECONDS}}}},
            "triggers": triggers,
        }
        k8s.apiextensions.CustomResource(
            name, api_version="keda.sh/v1alpha1", kind="ScaledObject", metadata=metadata, spec=spec, opts=child,
        )
        self.register_outputs({})
