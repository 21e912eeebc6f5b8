"""Autoscaling and observing by inference signals (issue 26): the metrics pipeline, KEDA ScaledObjects, scale to
zero on a Deployment, the dashboard, and every query's metric names against the exporters."""

from __future__ import annotations

import json

import pytest
import yaml

from components.inference_signals import SIGNALS, WORKLOAD_LABEL
from components.model_autoscaler import KEDA_VERSION
from exporters import exported_names, gateway_series, metric_names, selected_labels
from harness import ROOT, assert_rejected, evaluate
from schemas import go_module_crd_schemas, validation_errors

KEDA_MODULE = f"github.com/kedacore/keda/v2@v{KEDA_VERSION}"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
# Labels the scrape configuration adds to every series (components/metrics_pipeline.py), besides the exporter's.
SCRAPE_LABELS = {"namespace", WORKLOAD_LABEL, "pod", "job", "instance"}
# A stack serving one model per engine, each scaled on requests, one of them from zero.
EVERY_ENGINE = {
    "models": {
        "vllm": {"engine": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct", "gpu": {"count": 1},
                 "cache": {"accessMode": "ReadWriteMany"}, "scaling": {"minReplicas": 1, "maxReplicas": 3}},
        "llama": {"engine": "llama.cpp", "model": "owner/repo/model.gguf",
                  "cache": {"accessMode": "ReadWriteMany"}, "scaling": {"minReplicas": 0, "maxReplicas": 2}},
        "ollama": {"engine": "ollama", "model": "llama3.2:3b",
                   "cache": {"accessMode": "ReadWriteMany"}, "scaling": {"minReplicas": 1, "maxReplicas": 2}},
        "dmr": {"engine": "docker-model-runner", "model": "ai/smollm2:360M-Q4_K_M",
                "cache": {"accessMode": "ReadWriteMany"}, "scaling": {"minReplicas": 1, "maxReplicas": 2}},
    },
    "cluster.provider": "existing",
    "cluster.kind": None,
    "images.registry.server": "registry.example.com",
    "gateway.workload": "deployment",
    "gateway.scaling": {"minReplicas": 1, "maxReplicas": 2},
}


def _every_engine():
    overrides = {key: value for key, value in EVERY_ENGINE.items() if key != "models"}
    overrides.update({f"models.{name}": model for name, model in EVERY_ENGINE["models"].items()})
    overrides["models.chat"] = None
    overrides["models.small"] = None
    return evaluate("dev", set=overrides)


@pytest.fixture(scope="module")
def every_engine():
    return _every_engine()


@pytest.fixture(scope="module")
def dev():
    return evaluate("dev")


@pytest.fixture(scope="module")
def prod():
    return evaluate("prod")


def _objects(evaluation, kind):
    return [obj for _, obj in evaluation.kubernetes_objects() if obj["kind"] == kind]


def _scaled_objects(evaluation):
    return {obj["metadata"]["name"]: obj for obj in _objects(evaluation, "ScaledObject")}


def _dashboard(evaluation):
    [config_map] = [obj for obj in _objects(evaluation, "ConfigMap") if obj["metadata"]["name"] == "model-stack-dashboard"]
    return config_map


def _queries(evaluation) -> list[str]:
    dashboard = json.loads(_dashboard(evaluation)["data"]["model-stack.json"])
    panels = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    triggers = [trigger["metadata"]["query"] for obj in _objects(evaluation, "ScaledObject") for trigger in obj["spec"]["triggers"]]
    return [*panels, *triggers]


# --- the stack files ------------------------------------------------------------------------------------------

def test_prod_scales_each_model_with_keda_on_its_engines_requests_waiting_and_running(prod):
    scaled = _scaled_objects(prod)
    assert set(scaled) == {"model-runner-chat", "model-runner-embed"}
    chat = scaled["model-runner-chat"]["spec"]
    [trigger] = chat["triggers"]
    assert "vllm:num_requests_waiting" in trigger["metadata"]["query"] and "vllm:num_requests_running" in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == str(SIGNALS["vllm"].target)
    # Amazon Managed Prometheus: SigV4 through KEDA's pod identity.
    assert trigger["metadata"]["awsRegion"] == "us-east-1" and trigger["authenticationRef"] == {"name": "model-runner-chat"}
    [auth] = _objects(prod, "TriggerAuthentication")[:1]
    assert auth["spec"] == {"podIdentity": {"provider": "aws"}}
    embed = scaled["model-runner-embed"]["spec"]["triggers"][0]["metadata"]["query"]
    assert "llamacpp:requests_processing" in embed and "llamacpp:requests_deferred" in embed
    # KEDA owns the replica count: no CPU autoscaler fights it.
    assert [obj["metadata"]["name"] for obj in _objects(prod, "HorizontalPodAutoscaler")] == ["gateway"]


def test_prod_feeds_its_existing_prometheus_a_scrape_config_and_installs_none(prod):
    assert _objects(prod, "Namespace") and not [obj for obj in _objects(prod, "Deployment") if obj["metadata"]["name"] == "prometheus"]
    [scrape] = [obj for obj in _objects(prod, "ConfigMap") if obj["metadata"]["name"] == "model-stack-scrape-configs"]
    jobs = {job["job_name"] for job in yaml.safe_load(scrape["data"]["scrape-configs.yaml"])}
    # vLLM and llama.cpp export metrics; the gateway too (its per-model gauges).
    assert jobs == {"gateway", "model-runner-chat", "model-runner-embed"}
    assert not [r for r in prod.resources if r.type == "model-stack:index:Keda"]


def test_dev_scales_its_chat_model_to_zero_on_the_gateways_held_requests(dev):
    spec = _scaled_objects(dev)["model-runner-chat"]["spec"]
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] == 1
    load, held = spec["triggers"]
    # Docker Model Runner exports nothing: the gateway's per-model gauges are its signal.
    assert "gateway_replica_requests_in_flight" in load["metadata"]["query"] and "gateway_requests_waiting" in load["metadata"]["query"]
    assert held["metadata"]["activationThreshold"] == "0" and "gateway_requests_waiting" in held["metadata"]["query"]
    assert spec["cooldownPeriod"] == 300
    [deployment] = [obj for obj in _objects(dev, "Deployment") if obj["metadata"]["name"] == "model-runner-chat"]
    assert deployment["spec"]["replicas"] == 0
    # KEDA is installed from the release kept in the repository, and waits for nothing on the network.
    assert [r for r in dev.resources if r.type == "model-stack:index:Keda"]
    assert [obj for obj in _objects(dev, "Deployment") if obj["metadata"]["name"] == "keda-operator"]


def test_dev_installs_a_prometheus_that_scrapes_the_gateway_and_reads_only_the_serving_namespace(dev):
    [config] = [obj for obj in _objects(dev, "ConfigMap") if obj["metadata"]["name"] == "prometheus"]
    jobs = yaml.safe_load(config["data"]["prometheus.yml"])["scrape_configs"]
    assert {job["job_name"] for job in jobs} == {"gateway", "kube-state-metrics"}
    assert {obj["kind"] for _, obj in dev.kubernetes_objects()} >= {"Role", "RoleBinding"}
    assert not [obj for obj in _objects(dev, "ClusterRole") if obj["metadata"]["name"].startswith(("prometheus", "kube-state"))]
    [policy] = [obj for obj in _objects(dev, "NetworkPolicy") if obj["metadata"]["name"] == "metrics-scrape"]
    assert policy["spec"]["ingress"][0]["from"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/part-of": "model-stack"}},
    }]


def test_dev_rolls_its_prometheus_and_kube_state_metrics_old_pod_first(dev):
    # Not Recreate, with which pulumi-kubernetes' rollout await can take the old pod's ReplicaSet for the finished
    # rollout, so an update whose pod never became ready (a config Prometheus refuses) reported success.
    strategies = {obj["metadata"]["name"]: obj["spec"]["strategy"] for obj in _objects(dev, "Deployment")
                  if obj["metadata"]["namespace"] == "monitoring"}
    assert strategies == dict.fromkeys(("prometheus", "kube-state-metrics"),
                                       {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})


@pytest.mark.parametrize("allowed", [[], ["ingress-nginx"]])
def test_the_scrape_policy_never_closes_a_gateway_open_to_every_pod(allowed):
    # A policy selecting a pod isolates it: had the scrape policy selected a Deployment gateway open to every pod,
    # the scraper would have become its only client.
    evaluation = evaluate("dev", set={"gateway.workload": "deployment", "gateway.allowedNamespaces": allowed,
                                      "gateway.scaling.minReplicas": 1})
    selected = {workload for obj in _objects(evaluation, "NetworkPolicy") if obj["metadata"]["name"] == "metrics-scrape"
                for expression in obj["spec"]["podSelector"]["matchExpressions"] for workload in expression["values"]}
    # dev's Docker Model Runner engines export no metrics: the gateway is the only workload scraped.
    assert selected == ({"gateway"} if allowed else set())


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_dashboard_in_docs_is_the_one_the_stack_ships(stack, request):
    config_map = _dashboard(request.getfixturevalue(stack))
    assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
    shipped = config_map["data"]["model-stack.json"]
    assert (ROOT / "docs" / "dashboards" / f"{stack}.json").read_text() == shipped, "run scripts/gen-dashboards"


def test_every_engine_gets_its_signal_and_only_metric_exporting_engines_are_scraped(every_engine):
    scaled = _scaled_objects(every_engine)
    assert set(scaled) == {f"model-runner-{name}" for name in EVERY_ENGINE["models"]}
    for name, model in EVERY_ENGINE["models"].items():
        signal = SIGNALS[model["engine"]]
        query = scaled[f"model-runner-{name}"]["spec"]["triggers"][0]["metadata"]
        assert signal.waiting in query["query"] and signal.running in query["query"], name
        assert query["threshold"] == str(signal.target)
    # llama.cpp at zero: woken by the gateway's held requests.
    assert len(scaled["model-runner-llama"]["spec"]["triggers"]) == 2
    [config] = [obj for obj in _objects(every_engine, "ConfigMap") if obj["metadata"]["name"] == "prometheus"]
    jobs = {job["job_name"] for job in yaml.safe_load(config["data"]["prometheus.yml"])["scrape_configs"]}
    assert jobs == {"gateway", "model-runner-vllm", "model-runner-llama", "kube-state-metrics"}
    [llama] = [obj for obj in _objects(every_engine, "Deployment") if obj["metadata"]["name"] == "model-runner-llama"]
    assert "--metrics" in llama["spec"]["template"]["spec"]["containers"][0]["args"]


def test_cpu_remains_selectable_and_makes_the_horizontal_pod_autoscaler():
    evaluation = evaluate("prod", set={"models.chat.scaling.signal": "cpu", "models.chat.scaling.targetCpuUtilization": 70})
    assert set(_scaled_objects(evaluation)) == {"model-runner-embed"}
    hpas = {obj["metadata"]["name"]: obj for obj in _objects(evaluation, "HorizontalPodAutoscaler")}
    assert hpas["model-runner-chat"]["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_a_target_per_replica_overrides_the_engines():
    evaluation = evaluate("prod", set={"models.chat.scaling.targetRequests": 48})
    assert _scaled_objects(evaluation)["model-runner-chat"]["spec"]["triggers"][0]["metadata"]["threshold"] == "48"


@pytest.fixture(scope="module")
def pod_monitors():
    return evaluate("prod", set={"metrics.scrape": "podMonitor", "metrics.monitorLabels": {"release": "kps"}})


def test_an_existing_prometheus_operator_gets_pod_monitors_with_its_labels(pod_monitors):
    evaluation = pod_monitors
    monitors = {obj["metadata"]["name"]: obj for obj in _objects(evaluation, "PodMonitor")}
    assert set(monitors) == {"gateway", "model-runner-chat", "model-runner-embed"}
    assert monitors["model-runner-chat"]["metadata"]["labels"]["release"] == "kps"
    assert monitors["model-runner-chat"]["spec"]["podMetricsEndpoints"][0]["portNumber"] == 8000


# --- schemas ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keda_crds():
    return go_module_crd_schemas(KEDA_MODULE, "config/crd/bases/keda.sh_scaledobjects.yaml",
                                 "config/crd/bases/keda.sh_triggerauthentications.yaml")


def test_scaled_objects_and_trigger_authentications_validate_against_kedas_crds(keda_crds, dev, prod, every_engine):
    checked = 0
    for evaluation in (dev, prod, every_engine):
        for kind in ("ScaledObject", "TriggerAuthentication"):
            for obj in _objects(evaluation, kind):
                assert validation_errors(obj, "1.32", keda_crds) == [], obj["metadata"]["name"]
                checked += 1
    assert checked >= 8


def test_pod_monitors_validate_against_the_prometheus_operators_crd(pod_monitors):
    crds = go_module_crd_schemas(PROMETHEUS_OPERATOR_MODULE, "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml")
    monitors = _objects(pod_monitors, "PodMonitor")
    assert monitors
    for obj in monitors:
        assert validation_errors(obj, "1.32", crds) == [], obj["metadata"]["name"]


# --- every metric name in every query -----------------------------------------------------------------------------

def test_the_name_extraction_finds_names_and_skips_functions_labels_and_grouping():
    expression = 'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="b_c",y=~"5.."}[5m]))) + (sum(c:d) or vector(0))'
    assert metric_names(expression) == {"a_bucket", "c:d"}
    assert selected_labels(expression) == {"a_bucket": {"x", "y"}}


def _used_names(evaluations) -> set[str]:
    return {name for evaluation in evaluations for query in _queries(evaluation) for name in metric_names(query)}


def test_every_query_reads_a_metric_an_exporter_of_the_stack_serves(dev, prod, every_engine):
    unknown = _used_names([dev, prod, every_engine]) - exported_names()
    assert unknown == set()


def test_the_gateways_per_model_gauges_exist_with_the_labels_the_queries_select(dev):
    series = gateway_series()
    for query in _queries(dev):
        for name, labels in selected_labels(query).items():
            if name.startswith("gateway_"):
                assert name in series and labels - SCRAPE_LABELS <= series[name], (name, labels)


# --- config rules -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack, overrides, key, text", [
    ("dev", {"models.chat.scaling.signal": "cpu"}, "models.chat.scaling.minReplicas", "signal requests"),
    ("prod", {"models.chat.scaling.targetCpuUtilization": 70}, "models.chat.scaling.targetCpuUtilization",
     "another scaling.signal"),
    ("prod", {"models.chat.scaling.signal": "cpu", "models.chat.scaling.targetRequests": 8},
     "models.chat.scaling.targetRequests", "another scaling.signal"),
    ("dev", {"models.small.workload": "knative", "models.small.scaling.targetRequests": 8},
     "models.small.scaling.targetRequests", "Knative scales on in-flight requests"),
    ("prod", {"metrics.installKeda": True}, "metrics.installKeda", "digest-pinned"),
    ("prod", {"metrics.prometheusUrl": None, "metrics.scrape": None, "metrics.awsRegion": None},
     "metrics.prometheusImage", "digest-pinned"),
    ("dev", {"metrics.scrape": "podMonitor"}, "metrics.scrape", "existing Prometheus"),
    ("dev", {"gateway.workload": "deployment", "gateway.scaling.minReplicas": 0}, "gateway.scaling.minReplicas",
     "can be 0 only"),
    ("local", {"metrics.namespace": "obs"}, "metrics", "Docker runtime"),
    ("dev", {"metrics.namespace": "models"}, "metrics.namespace", "must differ"),
])
def test_scaling_and_metrics_settings_that_cannot_work_are_refused(stack, overrides, key, text):
    assert_rejected(stack, overrides, key, text)


# --- what the scrape jobs select ----------------------------------------------------------------------------------

def _pod_templates(evaluation):
    """Workload name -> its pod template, as Deployments and Knative Services render it."""
    templates = {}
    for obj in [*_objects(evaluation, "Deployment"), *_objects(evaluation, "Service")]:
        template = obj.get("spec", {}).get("template")
        if template and obj["metadata"].get("namespace") == "models":
            templates[obj["metadata"]["name"]] = template
    return templates


def _kept_targets(job, templates):
    """(workload, container, port) the job's `keep` rule lets through, from every container port of every pod, with
    the meta labels Prometheus' Kubernetes discovery (pod role) gives them; Prometheus anchors relabel regexes."""
    import re

    [keep] = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]
    kept = []
    for workload, template in templates.items():
        for container in template["spec"]["containers"]:
            for port in container.get("ports", []):
                meta = {"__meta_kubernetes_pod_label_app_kubernetes_io_name": template["metadata"]["labels"]["app.kubernetes.io/name"],
                        "__meta_kubernetes_pod_container_name": container["name"],
                        # Numbers come back from the mocks as floats.
                        "__meta_kubernetes_pod_container_port_number": str(int(port["containerPort"]))}
                if re.fullmatch(keep["regex"], ";".join(meta[label] for label in keep["source_labels"])):
                    kept.append((workload, container["name"], int(port["containerPort"])))
    return kept


def test_each_scrape_job_keeps_exactly_the_serving_port_of_its_workloads_pods(dev, every_engine):
    for evaluation in (dev, every_engine):
        [config] = [obj for obj in _objects(evaluation, "ConfigMap") if obj["metadata"]["name"] == "prometheus"]
        templates = _pod_templates(evaluation)
        for job in yaml.safe_load(config["data"]["prometheus.yml"])["scrape_configs"]:
            if job["job_name"] == "kube-state-metrics":
                continue
            kept = _kept_targets(job, templates)
            # The gateway is a Knative Service in dev (its pod also runs the queue proxy), a Deployment in the other.
            assert len(kept) == 1 and kept[0][0] == job["job_name"], (evaluation.stack, job["job_name"], kept)
            assert kept[0][1] in ("engine", "gateway")
