"""Knative Serving + Kourier: install order, the config a real install needs per stack, what the workloads need
enabled, and where the release manifests come from."""

from __future__ import annotations

import io
import re
import urllib.error
import urllib.request
from typing import Any

import pytest

from components import knative_serving
from harness import ROOT, Evaluation, evaluate, evaluate_failure
from schemas import KNATIVE_MANIFESTS, knative_crd_schemas

# Knative ignores CPU targets (the config refuses them there): prod's goes with the move.
PROD_KNATIVE = {"gateway.workload": "knative", "gateway.scaling.targetCpuUtilization": None, "knative.domain": "models.example.com"}


@pytest.fixture(scope="module")
def dev() -> Evaluation:
    return evaluate("dev")


@pytest.fixture(scope="module")
def prod() -> Evaluation:
    return evaluate("prod", set=PROD_KNATIVE)


def groups(evaluation: Evaluation) -> dict[str, Any]:
    return {r.name.removeprefix("knative-"): r for r in evaluation.of_type("kubernetes:yaml/v2:ConfigGroup")}


def knative_objects(evaluation: Evaluation, kind: str) -> dict[str, dict[str, Any]]:
    return {
        obj["metadata"]["name"]: obj
        for resource, obj in evaluation.kubernetes_objects()
        if resource.type == "kubernetes:yaml/v2:ConfigGroup" and obj["kind"] == kind
    }


def config_map(evaluation: Evaluation, name: str) -> dict[str, str]:
    return knative_objects(evaluation, "ConfigMap")[name]["data"]


# --- order -----------------------------------------------------------------------------------------------------


def test_crds_then_core_then_webhooks_then_kourier_then_the_workloads(dev):
    crds, core, webhooks, kourier = (groups(dev)[name] for name in ("crds", "core", "webhooks", "kourier"))
    assert crds.urn in core.dependencies and core.urn in webhooks.dependencies and webhooks.urn in kourier.dependencies
    gateway = dev.one("kubernetes:serving.knative.dev/v1:Service", "gateway")
    assert {crds.urn, core.urn, webhooks.urn, kourier.urn} <= set(gateway.dependencies)


def test_webhooks_and_what_only_they_admit_wait_for_the_webhook(dev):
    """Registered with the rest, Knative's fail-closed webhooks would reject the ConfigMaps and the release's own
    custom resources until the webhook pod runs (the engine lane's API server showed it)."""
    per_group = {name: {(o["apiVersion"], o["kind"]) for o in group.plain()["objs"]} for name, group in groups(dev).items()}
    assert {kind for _, kind in per_group["webhooks"]} == {
        "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "Certificate", "Image"}
    assert not any(api.split("/")[0].endswith("knative.dev") or "Webhook" in kind for api, kind in per_group["core"])


def test_every_object_is_applied_once_and_crds_only_with_the_crds(dev):
    per_group = {name: [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in group.plain()["objs"]]
                 for name, group in groups(dev).items()}
    everything = [key for keys in per_group.values() for key in keys]
    assert len(everything) == len(set(everything))
    assert {kind for kind, _, _ in per_group["crds"]} == {"CustomResourceDefinition"}
    assert all(kind != "CustomResourceDefinition" for name in ("core", "webhooks", "kourier") for kind, _, _ in per_group[name])
    assert {name for _, _, name in per_group["crds"]} >= {"services.serving.knative.dev", "revisions.serving.knative.dev"}


# --- configuration ---------------------------------------------------------------------------------------------


def test_dev_routes_through_kourier_on_the_ports_kind_maps(dev):
    assert config_map(dev, "config-network")["ingress-class"] == "kourier.ingress.networking.knative.dev"
    assert config_map(dev, "config-domain")["127.0.0.1.sslip.io"] == ""
    kourier = knative_objects(dev, "Service")["kourier"]
    assert kourier["spec"]["type"] == "NodePort"
    assert {p["name"]: p["nodePort"] for p in kourier["spec"]["ports"]} == {"http2": 31080, "https": 31443}
    kind_config = dev.one("command:local:Command", "kind-cluster").inputs["stdin"]
    assert re.search(r"containerPort: 31080\s+hostPort: 80\b", kind_config)


def test_the_gateway_is_published_under_the_domain_on_the_mapped_port(dev):
    assert dev.outputs["gatewayPublicUrl"] == "http://gateway.models.127.0.0.1.sslip.io/v1"
    moved = evaluate("dev", set={"cluster.kind.httpHostPort": 8081})
    assert moved.outputs["gatewayPublicUrl"] == "http://gateway.models.127.0.0.1.sslip.io:8081/v1"


@pytest.mark.parametrize("allowed", [[], ["ingress-nginx"]])
def test_without_knative_the_mapped_port_leads_to_a_deployment_gateway_open_to_every_pod(allowed):
    evaluation = evaluate("dev", set={"gateway.workload": "deployment", "gateway.scaling.minReplicas": 1,
                                      "gateway.allowedNamespaces": allowed, "cluster.kind.httpHostPort": 8081})
    assert not [r for r in evaluation.resources if r.type == "model-stack:index:KnativeServing"]
    [service] = [s for s in evaluation.of_type("kubernetes:core/v1:Service") if s.name == "gateway"]
    if allowed:  # traffic from the nodes would be refused by the gateway's policy: nothing is published
        assert service.inputs["spec"]["type"] == "ClusterIP"
        assert "gatewayPublicUrl" not in evaluation.outputs
    else:
        assert service.inputs["spec"]["type"] == "NodePort"
        assert [port["nodePort"] for port in service.inputs["spec"]["ports"]] == [31080]
        assert evaluation.outputs["gatewayPublicUrl"] == "http://127.0.0.1:8081/v1"


def test_knative_completes_pods_to_the_restricted_standard(dev):
    assert config_map(dev, "config-features")["secure-pod-defaults"] == "enabled"


def test_dev_scales_to_zero_and_skips_tag_resolution_for_the_local_registry(dev):
    autoscaler = config_map(dev, "config-autoscaler")
    assert autoscaler["enable-scale-to-zero"] == "true"
    assert "localhost:5001" in config_map(dev, "config-deployment")["registries-skipping-tag-resolving"].split(",")


def test_the_activator_drains_requests_as_long_as_the_longest_revision_timeout():
    evaluation = evaluate("dev", set={"gateway.requestTimeoutSeconds": 1800, "knative.revisionTimeoutSeconds": 2400})
    defaults = config_map(evaluation, "config-defaults")
    assert int(defaults["max-revision-timeout-seconds"]) == 2400
    activator = knative_objects(evaluation, "Deployment")["activator"]
    assert activator["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 2400


def test_model_loads_and_long_streams_fit_the_timeouts(dev):
    deployment = config_map(dev, "config-deployment")
    assert int(deployment["progress-deadline"].removesuffix("s")) >= 600
    defaults = config_map(dev, "config-defaults")
    assert int(defaults["revision-timeout-seconds"]) >= 600
    assert int(defaults["max-revision-timeout-seconds"]) >= int(defaults["revision-timeout-seconds"])
    # The release's documentation block stays for `kubectl edit` readers.
    assert "_example" in defaults


def test_prod_exposes_a_load_balancer_on_its_domain_with_redundant_request_path(prod):
    assert knative_objects(prod, "Service")["kourier"]["spec"]["type"] == "LoadBalancer"
    assert config_map(prod, "config-domain") ["models.example.com"] == ""
    autoscalers = knative_objects(prod, "HorizontalPodAutoscaler")
    assert {name: hpa["spec"]["minReplicas"] for name, hpa in autoscalers.items()} == {
        "activator": 2, "webhook": 2, "3scale-kourier-gateway": 2
    }


_FEATURE_FLAG = re.compile(r"accessible behind a feature flag - (\S+)")
# The CRD descriptions still use the flag's old name; config-features calls it this.
_RENAMED_FLAGS = {"kubernetes.podspec-emptydir": "kubernetes.podspec-volumes-emptydir"}


def features_used(obj: dict[str, Any]) -> set[str]:
    """Flags a Knative Service needs, read from the CRD itself: every field it sets whose description says
    "accessible behind a feature flag", plus writable PVC mounts (gated without a schema marker)."""
    flags: set[str] = set()

    def walk(value: Any, schema: dict[str, Any]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                child = schema.get("properties", {}).get(key, {})
                flags.update(_RENAMED_FLAGS.get(flag, flag) for flag in _FEATURE_FLAG.findall(child.get("description", "")))
                walk(item, child)
        elif isinstance(value, list):
            for item in value:
                walk(item, schema.get("items", {}))

    walk(obj, knative_crd_schemas()[(obj["apiVersion"], obj["kind"])])
    pod = obj["spec"]["template"]["spec"]
    claims = {volume["name"] for volume in pod.get("volumes", []) if "persistentVolumeClaim" in volume}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        if any(mount["name"] in claims and not mount.get("readOnly") for mount in container.get("volumeMounts", [])):
            flags.add("kubernetes.podspec-persistent-volume-write")
    return flags


@pytest.mark.parametrize("overrides", [{}, {"models.chat.workload": "knative"}], ids=["gateway", "gateway-and-runner"])
def test_every_feature_the_knative_services_use_is_enabled(overrides):
    evaluation = evaluate("dev", set=overrides)
    features = config_map(evaluation, "config-features")
    # What the release enables by default, as its documentation block says, unless the stack overrides it.
    defaults = dict(re.findall(r'^\s*([\w.-]+): "(\w+)"', features["_example"], re.MULTILINE))
    enabled = {flag for flag, value in {**defaults, **features}.items() if value == "enabled"}
    services = [obj for _, obj in evaluation.kubernetes_objects() if obj["apiVersion"] == "serving.knative.dev/v1"]
    assert len(services) == 1 + len(overrides)
    for service in services:
        assert features_used(service) <= enabled, service["metadata"]["name"]


def test_no_knative_without_a_knative_workload():
    evaluation = evaluate("dev", set={"gateway.workload": "deployment", "gateway.scaling.minReplicas": 1})
    assert evaluation.of_type("model-stack:index:KnativeServing") == []


def test_knative_is_installed_ahead_of_any_knative_workload_when_asked():
    evaluation = evaluate("dev", set={"gateway.workload": "deployment", "gateway.scaling.minReplicas": 1,
                                      "knative.install": True})
    assert len(evaluation.of_type("model-stack:index:KnativeServing")) == 1
    assert [obj for _, obj in evaluation.kubernetes_objects() if obj["apiVersion"] == "serving.knative.dev/v1"] == []


# --- manifests -------------------------------------------------------------------------------------------------


def test_the_release_is_downloaded_from_the_pinned_urls(monkeypatch):
    requested = []

    def urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO((KNATIVE_MANIFESTS / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    knative_serving._load.cache_clear()
    evaluation = evaluate("dev", set={"knative.manifestsDir": None, "knative.servingVersion": "1.15.9"})
    assert requested == [
        "https://github.com/knative/serving/releases/download/knative-v1.15.9/serving-crds.yaml",
        "https://github.com/knative/serving/releases/download/knative-v1.15.9/serving-core.yaml",
        "https://github.com/knative-extensions/net-kourier/releases/download/knative-v1.15.1/kourier.yaml",
    ]
    assert evaluation.of_type("model-stack:index:KnativeServing")


def test_a_failed_download_stops_the_program_before_anything_is_created(monkeypatch):
    def urlopen(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    knative_serving._load.cache_clear()
    error, evaluation = evaluate_failure("dev", set={"knative.manifestsDir": None, "knative.servingVersion": "1.15.8"})
    assert "knative.manifestsDir" in str(error) and "serving-crds.yaml" in str(error)
    assert evaluation.resources == []


def test_an_offline_directory_without_the_release_is_named(tmp_path):
    error, evaluation = evaluate_failure("dev", set={"knative.manifestsDir": str(tmp_path)})
    assert "knative.manifestsDir" in str(error) and f"{tmp_path}/serving-crds.yaml" in str(error)
    assert evaluation.resources == []


def test_a_private_registry_ca_is_trusted_by_the_controller_next_to_the_system_roots():
    bundle = (ROOT / "tests" / "fixtures" / "registry-ca.pem").read_text()
    evaluation = evaluate("dev", set={"knative.registryCaBundle": bundle})
    assert config_map(evaluation, "registry-ca-bundle") == {"ca.crt": bundle}
    controller = knative_objects(evaluation, "Deployment")["controller"]["spec"]["template"]["spec"]
    container = controller["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "registry-ca-bundle")
    assert {"name": "SSL_CERT_DIR", "value": f"/etc/ssl/certs:{mount['mountPath']}"} in container["env"]
    assert {"name": "registry-ca-bundle", "configMap": {"name": "registry-ca-bundle"}} in controller["volumes"]
