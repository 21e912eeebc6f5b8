"""Knative Serving with Kourier from a pinned release, configured and rewritten in Python before it is applied.

The release manifests are parsed here (downloaded from the release, or read from a directory for air-gapped
installs), every image is sent through the registry mapping (the queue-proxy image in `config-deployment`
included), and the ConfigMaps are edited in the parsed objects, so each object has exactly one owner. They are
applied in three ConfigGroups: CRDs, then Serving's core, then Kourier. ConfigGroup children are awaited like any
Pulumi Kubernetes resource (Deployments until their pods are ready), so once this component is done the
webhook answers and Knative Services can be applied (knative/serving#6353).
"""

import copy
import functools
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import yaml

from .image_rewrite import rewrite_image
from .options import child_options

SERVING_RELEASE_URL = "https://github.com/knative/serving/releases/download/knative-v{version}/{file}"
KOURIER_RELEASE_URL = "https://github.com/knative-extensions/net-kourier/releases/download/knative-v{version}/{file}"
SERVING_CRDS = "serving-crds.yaml"
SERVING_CORE = "serving-core.yaml"
KOURIER = "kourier.yaml"
DOWNLOAD_TIMEOUT_SECONDS = 60
SERVING_NAMESPACE = "knative-serving"
KOURIER_NAMESPACE = "kourier-system"
KOURIER_SERVICE = "kourier"
WEBHOOK_KINDS = {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
MAX_REVISION_TIMEOUT_KEY = "max-revision-timeout-seconds"
QUEUE_SIDECAR_KEY = "queue-sidecar-image"
CA_BUNDLE_CONFIG_MAP = "registry-ca-bundle"
CA_BUNDLE_DIR = "/etc/registry-ca"
# Go reads every directory in SSL_CERT_DIR: the system's roots stay trusted next to the private CA.
SSL_CERT_DIR = f"/etc/ssl/certs:{CA_BUNDLE_DIR}"


class ManifestError(pulumi.RunError):
    """Release manifests that could not be read or are no Kubernetes objects, one reason per file (after failed
    downloads, last, the setting that avoids them); RunError: Pulumi prints just the message."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("; ".join(reasons))


class KourierNodePorts(TypedDict):
    http: int
    """Node port of Kourier's HTTP listener."""

    https: int
    """Node port of Kourier's HTTPS listener."""


class KnativeServingArgs(TypedDict):
    serving_version: str
    """Knative Serving release (`1.15.2`)."""

    kourier_version: str
    """net-kourier release (`1.15.1`)."""

    manifests_dir: NotRequired[str]
    """Directory holding serving-crds.yaml, serving-core.yaml and kourier.yaml (air-gapped installs); absent
    downloads them from the releases."""

    rewrite_rules: NotRequired[dict[str, str]]
    """Registry mapping applied to every image of the release."""

    config: NotRequired[dict[str, dict[str, str]]]
    """Settings per ConfigMap in knative-serving (`config-network`, `config-features`, ...), merged over the
    release's."""

    kourier_service_type: str
    """`LoadBalancer`, `NodePort` or `ClusterIP` for Kourier's external Service."""

    kourier_node_ports: NotRequired[KourierNodePorts]
    """Fixed node ports (NodePort), e.g. the ones a kind cluster maps host ports to."""

    min_replicas: int
    """Fewest replicas of the request-path components (activator, webhook, Kourier gateway); 2 keeps a
    replica serving while another is drained."""

    registry_ca_bundle: NotRequired[str]
    """PEM CA bundle the controller trusts when it resolves tags in a private registry."""


def load_manifests(
    serving_version: str, kourier_version: str, manifests_dir: Optional[str] = None
) -> dict[str, list[dict[str, Any]]]:
    """File name -> its objects, from the directory or the release URLs. Cached: a program can load them before
    it registers anything (a failed download then leaves nothing half-created) and the component reuses them."""
    return _load(serving_version, kourier_version, manifests_dir)


@functools.cache
def _load(serving_version: str, kourier_version: str, manifests_dir: Optional[str]) -> dict[str, list[dict[str, Any]]]:
    sources = {
        SERVING_CRDS: SERVING_RELEASE_URL.format(version=serving_version, file=SERVING_CRDS),
        SERVING_CORE: SERVING_RELEASE_URL.format(version=serving_version, file=SERVING_CORE),
        KOURIER: KOURIER_RELEASE_URL.format(version=kourier_version, file=KOURIER),
    }
    if manifests_dir is not None and not Path(manifests_dir).is_dir():
        raise ManifestError([f"{manifests_dir} is not a directory; it must hold {SERVING_CRDS}, {SERVING_CORE} and "
                             f"{KOURIER} of the pinned releases"])
    manifests: dict[str, list[dict[str, Any]]] = {}
    reasons: list[str] = []
    for file, url in sources.items():
        try:
            text = _read_file(Path(manifests_dir) / file) if manifests_dir else _download(url)
            manifests[file] = _objects(text)
        except ValueError as error:
            reasons.append(f"{file} {error}")
    if reasons:
        if manifests_dir is None:
            reasons.append("without internet access, set knative.manifestsDir to a directory with the release manifests")
        raise ManifestError(reasons)
    return manifests


def _objects(text: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of a multi-document YAML file; ValueError saying what is wrong with it."""
    try:
        documents = [document for document in yaml.safe_load_all(text) if document]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"is not YAML{where}: {getattr(error, 'problem', None) or error}") from None
    for number, document in enumerate(documents, start=1):
        if not (isinstance(document, dict) and isinstance(document.get("apiVersion"), str)
                and isinstance(document.get("kind"), str)):
            raise ValueError(f"document {number} is not a Kubernetes object (a map with apiVersion and kind)")
    if not documents:
        raise ValueError("holds no Kubernetes objects")
    return documents


def release_images(manifests: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every image a release deploys: its containers, the queue proxy the controller injects into each revision,
    and the image Knative pre-pulls onto nodes."""
    images: list[str] = []
    for obj in (obj for objects in manifests.values() for obj in objects):
        pod = obj.get("spec", {}).get("template", {}).get("spec") or {}
        images.extend(container["image"] for container in [*pod.get("initContainers", []), *pod.get("containers", [])])
        if obj["kind"] == "Image":
            images.append(obj["spec"]["image"])
        if obj["kind"] == "ConfigMap" and QUEUE_SIDECAR_KEY in obj.get("data", {}):
            images.append(obj["data"][QUEUE_SIDECAR_KEY])
    return sorted(set(images))


def _read_file(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot be read: {path} ({getattr(error, 'strerror', None) or error}); the "
                         f"directory must hold {SERVING_CRDS}, {SERVING_CORE} and {KOURIER} of the pinned releases") from None


def _download(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            return response.read().decode()
    except (urllib.error.URLError, TimeoutError) as error:
        raise ValueError(f"cannot be downloaded from {url} ({error})") from None


class KnativeServing(pulumi.ComponentResource):
    """Knative Serving and Kourier, installed in order and ready for Knative Services once this is done."""

    domain_config: pulumi.Output[dict[str, str]]
    """The `config-domain` settings applied (the domain Knative routes are published under)."""

    def __init__(self, name: str, args: KnativeServingArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:KnativeServing", name, None, opts)
        transform = _transformer(args)
        released = load_manifests(args["serving_version"], args["kourier_version"], args.get("manifests_dir"))
        manifests = {file: [transform(obj) for obj in objects] for file, objects in released.items()}
        # serving-core.yaml repeats the CRDs: each object is applied once, CRDs first.
        crds = _unique([obj for file in (SERVING_CRDS, SERVING_CORE) for obj in manifests[file] if _is_crd(obj)])
        # Knative's webhooks reject what they cannot reach (failurePolicy Fail): registered together with the
        # rest, they raced the webhook's own start and failed the ConfigMaps and the release's Certificate and
        # Image. They, and the objects only the webhook admits, come once the webhook Deployment is ready.
        core = [obj for obj in manifests[SERVING_CORE] if not _is_crd(obj) and not _needs_webhook(obj)]
        admitted = [obj for obj in manifests[SERVING_CORE] if _needs_webhook(obj)]
        if "registry_ca_bundle" in args:
            core.append({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": CA_BUNDLE_CONFIG_MAP, "namespace": SERVING_NAMESPACE},
                "data": {"ca.crt": args["registry_ca_bundle"]},
            })
        kourier = manifests[KOURIER]
        child = child_options(self, opts)
        crd_group = k8s.yaml.v2.ConfigGroup(f"{name}-crds", objs=crds, opts=child)
        core_group = k8s.yaml.v2.ConfigGroup(
            f"{name}-core", objs=core, opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[crd_group]))
        )
        webhook_group = k8s.yaml.v2.ConfigGroup(
            f"{name}-webhooks", objs=admitted,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[core_group])),
        )
        k8s.yaml.v2.ConfigGroup(
            f"{name}-kourier", objs=kourier,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[webhook_group])),
        )
        self.domain_config = pulumi.Output.from_input(args.get("config", {}).get("config-domain", {}))
        self.register_outputs({"domain_config": self.domain_config})


def _is_crd(obj: dict[str, Any]) -> bool:
    return obj["kind"] == "CustomResourceDefinition"


def _needs_webhook(obj: dict[str, Any]) -> bool:
    """Webhook configurations, and Knative's own custom resources, which only a running webhook admits."""
    return obj["kind"] in WEBHOOK_KINDS or obj["apiVersion"].split("/")[0].endswith(".knative.dev")


def _unique(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for obj in objects:
        seen.setdefault(obj["metadata"]["name"], obj)
    return list(seen.values())


def _transformer(args: KnativeServingArgs) -> Callable[[dict[str, Any]], dict[str, Any]]:
    rules = args.get("rewrite_rules", {})
    config = args.get("config", {})
    defaults = config.get("config-defaults", {})

    def transform(released: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(released)  # the cached release stays as released
        kind, metadata = obj["kind"], obj["metadata"]
        pod = obj.get("spec", {}).get("template", {}).get("spec")
        if pod is not None:
            for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                container["image"] = rewrite_image(container["image"], rules)
        if kind == "Image":  # caching.internal.knative.dev: pre-pulls the queue proxy onto nodes
            obj["spec"]["image"] = rewrite_image(obj["spec"]["image"], rules)
        if kind == "ConfigMap" and metadata.get("namespace") == SERVING_NAMESPACE:
            data = obj.setdefault("data", {})
            if QUEUE_SIDECAR_KEY in data:
                data[QUEUE_SIDECAR_KEY] = rewrite_image(data[QUEUE_SIDECAR_KEY], rules)
            data.update(config.get(metadata["name"], {}))
        if kind == "Service" and metadata.get("namespace") == KOURIER_NAMESPACE and metadata["name"] == KOURIER_SERVICE:
            _expose_kourier(obj["spec"], args)
        if kind == "HorizontalPodAutoscaler":
            obj["spec"]["minReplicas"] = max(obj["spec"].get("minReplicas", 1), args["min_replicas"])
            obj["spec"]["maxReplicas"] = max(obj["spec"]["maxReplicas"], obj["spec"]["minReplicas"])
        if kind == "Deployment" and metadata["name"] == "controller" and "registry_ca_bundle" in args:
            _trust_registry_ca(pod)
        if kind == "Deployment" and metadata["name"] == "activator" and MAX_REVISION_TIMEOUT_KEY in defaults:
            # config-defaults' own note: the activator must be allowed to drain requests as long as the longest
            # revision timeout, or a rollout of the activator cuts them off.
            pod["terminationGracePeriodSeconds"] = max(
                pod.get("terminationGracePeriodSeconds", 30), int(defaults[MAX_REVISION_TIMEOUT_KEY]))
        return obj

    return transform


def _expose_kourier(spec: dict[str, Any], args: KnativeServingArgs) -> None:
    spec["type"] = args["kourier_service_type"]
    node_ports = args.get("kourier_node_ports")
    if args["kourier_service_type"] != "NodePort" or node_ports is None:
        return
    by_name = {"http2": node_ports["http"], "https": node_ports["https"]}
    for port in spec["ports"]:
        port["nodePort"] = by_name[port["name"]]


def _trust_registry_ca(pod: dict[str, Any]) -> None:
    pod.setdefault("volumes", []).append({"name": CA_BUNDLE_CONFIG_MAP, "configMap": {"name": CA_BUNDLE_CONFIG_MAP}})
    controller = pod["containers"][0]
    controller.setdefault("volumeMounts", []).append({"name": CA_BUNDLE_CONFIG_MAP, "mountPath": CA_BUNDLE_DIR, "readOnly": True})
    controller.setdefault("env", []).append({"name": "SSL_CERT_DIR", "value": SSL_CERT_DIR})
