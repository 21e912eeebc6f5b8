"""ServingWorkload as both forms (Deployment and Knative Service), the gateway in front of the runner, and what
Knative must allow for the pods the stack serves through it."""

from __future__ import annotations

import json

from typing import Any

import pytest

from components.eks_cluster import GPU_NODE_LABELS, GPU_TOLERATION
from components.serving_workload import knative_features, network_policy_spec
from harness import FAKE_SECRETS, Evaluation, Secret, assert_rejected, evaluate, stack_config, unwrap
from schemas import crd_schemas, validation_errors
from stacks.cluster import ClusterHandle
from stacks.config import StackConfig
from stacks.serving import knative_settings


def runner_names(stack: str) -> list[str]:
    return [f"model-runner-{name}" for name in stack_config(stack)["models"]]


def on_knative(stack: str) -> dict[str, Any]:
    """Every model and the gateway served through Knative, which ignores CPU targets and cannot admit single
    namespaces (the config refuses both there): prod's go with the move."""
    return {f"{section}.{setting}": value for section in [*(f"models.{name}" for name in stack_config(stack)["models"]), "gateway"]
            for setting, value in (("workload", "knative"), ("scaling.targetCpuUtilization", None),
                                   *((("allowedNamespaces", None),) if section != "gateway" else ()))}


KNATIVE = on_knative("prod")
RUNNER_API_KEY = "runner-key-0123456789abcdef"
# What a stack with vLLM or llama.cpp runners on Knative needs besides the usual secrets.
KEYED = {**FAKE_SECRETS, "runnerApiKey": RUNNER_API_KEY}
GATEWAY_IMAGE = "localhost:5001/model-gateway:dev"


def objects(evaluation: Evaluation, kind: str) -> list[dict[str, Any]]:
    return [obj for _, obj in evaluation.kubernetes_objects() if obj["kind"] == kind]


def named(evaluation: Evaluation, kind: str, name: str) -> dict[str, Any]:
    (found,) = [obj for obj in objects(evaluation, kind) if obj["metadata"]["name"] == name]
    return found


def invalid(evaluation: Evaluation) -> dict[str, list[str]]:
    version = stack_config(evaluation.stack).get("cluster", {}).get("kubernetesVersion", "1.32")
    found = list(evaluation.kubernetes_objects())
    crds = crd_schemas(obj for _, obj in found)
    return {
        f"{obj['kind']} {obj['metadata'].get('name')}": errors
        for _, obj in found
        if (errors := validation_errors(obj, version, crds))
    }


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_knative_services_validate_against_the_crd_and_keep_probes_resources_and_security(stack):
    evaluation = (evaluate(stack, set={**on_knative(stack), "gateway.image": GATEWAY_IMAGE}) if stack == "dev"
                  else evaluate(stack, set=KNATIVE, secrets=KEYED))
    assert invalid(evaluation) == {}
    assert [obj for obj in objects(evaluation, "Deployment") if obj["metadata"]["namespace"] == "models"] == []
    for name in [*runner_names(stack), "gateway"]:
        service = named(evaluation, "Service", name)
        assert service["apiVersion"] == "serving.knative.dev/v1"
        spec = service["spec"]["template"]["spec"]
        container = spec["containers"][0]
        # Knative's rules: one unnamed port, probes without a port (the queue proxy probes the serving port).
        assert [set(port) for port in container["ports"]] == [{"containerPort"}]
        for probe in ("readinessProbe", "livenessProbe"):
            assert "port" not in container[probe].get("httpGet", {})
        # Knative leaves a startup probe to the kubelet as written: without a port it would probe port 0.
        if "startupProbe" in container:
            assert container["startupProbe"]["httpGet"]["port"] == container["ports"][0]["containerPort"]
        # Knative 1.15's PodSecurityContextMask drops nothing silently: it refuses the Service.
        assert set(spec["securityContext"]) <= {
            "runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups", "seccompProfile"}
        assert "terminationGracePeriodSeconds" not in spec
        # Knative's schema has no preStop hook; its queue proxy drains the revision instead.
        assert "lifecycle" not in container
        assert container["resources"]["limits"]["memory"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True


def test_knative_revisions_scale_on_concurrency_and_wait_out_the_model_load():
    evaluation = evaluate("prod", set=KNATIVE, secrets=KEYED)
    runner_config = stack_config("prod")["models"]["chat"]
    runner = named(evaluation, "Service", "model-runner-chat")
    annotations = runner["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
    assert annotations["autoscaling.knative.dev/min-scale"] == str(runner_config["scaling"]["minReplicas"])
    assert annotations["autoscaling.knative.dev/max-scale"] == str(runner_config["scaling"]["maxReplicas"])
    deadline = int(annotations["serving.knative.dev/progress-deadline"].removesuffix("s"))
    assert deadline > runner_config["loadBudgetSeconds"]
    # Streams may run as long as the gateway waits for them, not as long as a model takes to load.
    assert runner["spec"]["template"]["spec"]["timeoutSeconds"] == stack_config("prod")["gateway"]["requestTimeoutSeconds"]
    assert runner["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
    # `pulumi up` waits for the revision to be Ready, not merely stored.
    assert runner["metadata"]["annotations"]["pulumi.com/waitFor"] == "condition=Ready"
    assert evaluation.outputs["modelRunnerUrls"][runner_config["model"]] == "http://model-runner-chat.models.svc.cluster.local/v1"


def test_knative_workloads_get_a_budget_and_admit_only_knatives_data_path():
    evaluation = evaluate("prod", set=KNATIVE, secrets=KEYED)
    for name in ("model-runner-chat", "gateway"):
        budget = named(evaluation, "PodDisruptionBudget", name)
        assert budget["spec"]["selector"]["matchLabels"]["serving.knative.dev/service"] == name
    policy = named(evaluation, "NetworkPolicy", "model-runner-chat")
    assert policy["spec"]["podSelector"]["matchLabels"]["serving.knative.dev/service"] == "model-runner-chat"
    namespaces = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in policy["spec"]["ingress"][0]["from"]}
    assert namespaces == {"knative-serving", "kourier-system"}


def test_the_features_knative_must_enable_are_the_ones_the_pods_use():
    evaluation = evaluate("prod", set=KNATIVE, secrets=KEYED)
    used = set()
    for name in [*runner_names("prod"), "gateway"]:
        used.update(knative_features(named(evaluation, "Service", name)["spec"]["template"]["spec"]))
    prod_config = stack_config("prod")
    config = StackConfig.model_validate({
        **prod_config,
        "models": {name: {**model, "workload": "knative"} for name, model in prod_config["models"].items()},
        "gateway": {**prod_config["gateway"], "workload": "knative"},
    })
    settings = knative_settings(config, _prod_cluster())
    assert set(settings["config-features"]) == used
    assert {
        "kubernetes.podspec-init-containers", "kubernetes.podspec-persistent-volume-claim",
        "kubernetes.podspec-persistent-volume-write", "kubernetes.podspec-securitycontext",
        "kubernetes.podspec-nodeselector", "kubernetes.podspec-tolerations",
    } <= used
    assert settings["config-defaults"] == {"max-revision-timeout-seconds": "600"}


def _prod_cluster() -> ClusterHandle:
    return ClusterHandle(provider=None, kubeconfig=None, gpu_node_selector=dict(GPU_NODE_LABELS),
                         gpu_tolerations=[dict(GPU_TOLERATION)])


def test_knative_settings_are_empty_without_knative_and_raise_the_timeout_ceiling_for_long_streams():
    config = StackConfig.model_validate({**stack_config("dev"), "gateway": {"workload": "deployment"}})
    assert knative_settings(config, _prod_cluster()) == {}
    long = StackConfig.model_validate({**stack_config("dev"), "gateway": {"workload": "knative", "requestTimeoutSeconds": 1800}})
    assert knative_settings(long, _prod_cluster())["config-defaults"] == {"max-revision-timeout-seconds": "1800"}
    assert knative_settings(long, _prod_cluster())["config-features"] == {"kubernetes.podspec-securitycontext": "enabled"}


def test_feature_detection_reads_the_pod_spec():
    pod = {
        "containers": [{"name": "c", "volumeMounts": [{"name": "ro", "mountPath": "/a", "readOnly": True}]}],
        "volumes": [{"name": "ro", "persistentVolumeClaim": {"claimName": "x"}}, {"name": "t", "emptyDir": {}}],
        "runtimeClassName": "nvidia",
    }
    assert knative_features(pod) == ["kubernetes.podspec-persistent-volume-claim", "kubernetes.podspec-runtimeclassname"]
    pod["containers"][0]["volumeMounts"][0]["readOnly"] = False
    assert "kubernetes.podspec-persistent-volume-write" in knative_features(pod)
    assert knative_features({"containers": [{"name": "c"}]}) == []


def test_a_single_node_cache_under_knative_keeps_revisions_on_one_node():
    evaluation = evaluate("dev", set={"models.chat.workload": "knative", "gateway.image": GATEWAY_IMAGE})
    spec = named(evaluation, "Service", "model-runner-chat")["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= named(evaluation, "Service", "model-runner-chat")["spec"]["template"]["metadata"]["labels"].items()
    assert "affinity" not in pod_spec_of(evaluate("prod", set={
        "models.chat.workload": "knative", "models.chat.scaling.targetCpuUtilization": None,
        "models.chat.allowedNamespaces": None}, secrets=KEYED), "Service")


def pod_spec_of(evaluation: Evaluation, kind: str, name: str = "model-runner-chat") -> dict[str, Any]:
    return named(evaluation, kind, name)["spec"]["template"]["spec"]


# --- the gateway -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prod() -> Evaluation:
    return evaluate("prod")


def test_the_gateway_calls_the_runners_openai_path_and_reads_keys_from_a_secret(prod):
    spec = pod_spec_of(prod, "Deployment", "gateway")
    container = spec["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    models = stack_config("prod")["models"]
    # Every model's id, routed to its own engine's OpenAI path.
    assert json.loads(env["GATEWAY_MODELS"]["value"]) == prod.outputs["modelRunnerUrls"] == {
        models["chat"]["model"]: "http://model-runner-chat.models.svc.cluster.local:8000/v1",
        models["embed"]["model"]: "http://model-runner-embed.models.svc.cluster.local:8080/v1",
    }
    assert "GATEWAY_UPSTREAM_BASE_URL" not in env and "GATEWAY_MODEL" not in env
    assert env["GATEWAY_PORT"]["value"] == "8080"
    # The keys are a mounted file the gateway re-reads on rotation, never environment.
    assert "GATEWAY_API_KEYS" not in env
    keys_file = env["GATEWAY_API_KEYS_FILE"]["value"]
    mount = next(m for m in container["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
    assert [item["path"] for item in volume["items"]] == [keys_file.rsplit("/", 1)[1]] and mount["readOnly"]
    secret = prod.one("kubernetes:core/v1:Secret", volume["secretName"])
    key = volume["items"][0]["key"]
    assert isinstance(secret.inputs["stringData"], Secret) or isinstance(secret.inputs["stringData"][key], Secret)
    assert FAKE_SECRETS["gatewayApiKeys"] not in repr(named(prod, "Deployment", "gateway"))
    assert prod.outputs["gatewayUrl"] == "http://gateway.models.svc.cluster.local:8080/v1"


def test_the_gateway_pod_follows_the_apps_contract(prod):
    spec = pod_spec_of(prod, "Deployment", "gateway")
    container = spec["containers"][0]
    build = stack_config("prod")["images"]
    assert container["image"].startswith(f"{build['registry']['server']}/model-gateway:{build['gatewayBuild']['tag']}@sha256:")
    assert spec["enableServiceLinks"] is False and spec["terminationGracePeriodSeconds"] > 20
    assert spec["securityContext"]["runAsUser"] == 10001
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["readinessProbe"]["timeoutSeconds"] >= 5
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    # The one writable place is /tmp; the keys are read-only.
    assert {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")} == {"/tmp"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_the_runners_network_policy_admits_the_gateways_pods(prod):
    gateway_labels = named(prod, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    (rule,) = named(prod, "NetworkPolicy", "model-runner-chat")["spec"]["ingress"]
    selectors = [peer["podSelector"]["matchLabels"] for peer in rule["from"] if "podSelector" in peer]
    assert any(selector.items() <= gateway_labels.items() for selector in selectors)
    namespaces = [peer["namespaceSelector"]["matchLabels"] for peer in rule["from"] if "namespaceSelector" in peer]
    assert namespaces == [{"kubernetes.io/metadata.name": "batch-jobs"}]


def test_prod_gateway_is_redundant_and_budgeted(prod):
    hpa = named(prod, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["minReplicas"] >= 2
    assert named(prod, "PodDisruptionBudget", "gateway")["spec"]["selector"]["matchLabels"].items() <= (
        named(prod, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"].items()
    )


# --- autoscaling and overrides ---------------------------------------------------------------------------------


def test_an_inference_metric_joins_cpu_in_the_autoscaler():
    evaluation = evaluate("prod", set={"models.chat.scaling.signal": "cpu",
                                       "models.chat.scaling.podsMetric": {"name": "vllm:num_requests_waiting", "averageValue": "4"}})
    metrics = named(evaluation, "HorizontalPodAutoscaler", "model-runner-chat")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods"]
    assert metrics[1]["pods"] == {"metric": {"name": "vllm:num_requests_waiting"},
                                  "target": {"type": "AverageValue", "averageValue": "4"}}
    assert invalid(evaluation) == {}


def test_profile_paths_and_port_can_be_overridden():
    evaluation = evaluate("prod", set={"models.chat.port": 9000, "models.chat.apiBasePath": "/openai/v1", "models.chat.readyPath": "/ready",
                                       "models.chat.livenessPath": "/ping"})
    container = pod_spec_of(evaluation, "Deployment")["containers"][0]
    assert container["ports"][0]["containerPort"] == 9000 and "9000" in container["args"]
    assert container["startupProbe"]["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/ping"
    assert evaluation.outputs["modelRunnerUrls"][stack_config("prod")["models"]["chat"]["model"]] == (
        "http://model-runner-chat.models.svc.cluster.local:9000/openai/v1")
    service = named(evaluation, "Service", "model-runner-chat")
    assert service["spec"]["ports"][0]["port"] == 9000


def test_dev_can_scale_the_runner_to_zero_without_the_gateway_waking_it():
    gateway_deployment = {"gateway.workload": "deployment", "gateway.scaling.minReplicas": 1, "gateway.image": GATEWAY_IMAGE}
    evaluation = evaluate("dev", set={"models.chat.workload": "knative", "models.chat.scaling.minReplicas": 0, **gateway_deployment})
    assert invalid(evaluation) == {}
    annotations = named(evaluation, "Service", "model-runner-chat")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    gateway = pod_spec_of(evaluation, "Deployment", "gateway")["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health"
    warm = {**gateway_deployment, "models.chat.scaling.minReplicas": 1}
    assert pod_spec_of(evaluate("dev", set=warm), "Deployment", "gateway")["containers"][0][
        "readinessProbe"]["httpGet"]["path"] == "/ready"
    assert [b["metadata"]["name"] for b in objects(evaluation, "PodDisruptionBudget") if b["metadata"]["namespace"] == "models"] == []


def test_a_network_policy_without_clients_admits_nobody():
    labels = {"app.kubernetes.io/name": "model-runner-chat"}
    assert network_policy_spec(labels, [], [{"port": 8000, "protocol": "TCP"}])["ingress"] == []
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}
    (rule,) = network_policy_spec(labels, [peer], None)["ingress"]
    assert rule == {"from": [peer]}


def test_a_deployment_rollout_outlasts_the_model_load(prod):
    deadline = named(prod, "Deployment", "model-runner-chat")["spec"]["progressDeadlineSeconds"]
    # Kubernetes' default (600 s) is shorter than prod's load budget: rollouts would be declared failed.
    assert deadline > stack_config("prod")["models"]["chat"]["loadBudgetSeconds"] > 600


def test_the_image_pull_allowance_is_the_rollouts_time_on_top_of_the_load_budget():
    models = stack_config("prod")["models"]
    evaluation = evaluate("prod", set={"models.chat.imagePullSeconds": 20, "models.embed.imagePullSeconds": 0})
    chat = named(evaluation, "Deployment", "model-runner-chat")["spec"]["progressDeadlineSeconds"]
    embed = named(evaluation, "Deployment", "model-runner-embed")["spec"]["progressDeadlineSeconds"]
    assert (chat, embed) == (models["chat"]["loadBudgetSeconds"] + 20, models["embed"]["loadBudgetSeconds"])
    # The gateway waits for whichever model may take longest.
    assert named(evaluation, "Deployment", "gateway")["spec"]["progressDeadlineSeconds"] == max(chat, embed)



def test_the_runner_waits_for_its_settings_credentials_and_cache(prod):
    deployment = prod.one("kubernetes:apps/v1:Deployment", "model-runner-chat")
    wanted = [
        prod.one("kubernetes:core/v1:PersistentVolumeClaim", "model-runner-chat-cache"),
        prod.one("kubernetes:core/v1:Secret", "model-runner-chat-credentials"),
        *[r for r in prod.of_type("kubernetes:core/v1:ConfigMap") if r.name.startswith("model-runner-chat-")],
    ]
    assert len(wanted) == 3
    assert {r.urn for r in wanted} <= set(deployment.dependencies)


def test_the_gateway_is_reached_only_from_the_ingress_layer_and_reaches_only_the_runners(prod):
    """It holds the API keys: in prod only the ingress controller's namespace may call it, and it may open
    connections to each model's engine port and DNS, nothing else."""
    policy = named(prod, "NetworkPolicy", "gateway")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "gateway"
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    assert ingress["ports"] == [{"port": 8080, "protocol": "TCP"}]
    dns, chat, embed = policy["egress"]
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    for rule, name, port in ((chat, "model-runner-chat", 8000), (embed, "model-runner-embed", 8080)):
        assert rule == {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": name,
                                                                 "app.kubernetes.io/part-of": "model-stack"}}}],
                        "ports": [{"port": port, "protocol": "TCP"}]}


def test_a_gateway_in_front_of_a_knative_runner_reaches_it_through_knatives_data_path():
    evaluation = evaluate("dev", set={"models.chat.workload": "knative", "models.chat.scaling.minReplicas": 0})
    (_, chat, small) = named(evaluation, "NetworkPolicy", "gateway")["spec"]["egress"]
    assert {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in chat["to"]} == {
        "knative-serving", "kourier-system"}
    assert "ports" not in chat
    # The model that stays a Deployment is reached on its pods directly.
    assert small["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "model-runner-small",
                                                             "app.kubernetes.io/part-of": "model-stack"}}}]


@pytest.mark.parametrize("name,drain", [("gateway", 20), ("model-runner-chat", 60), ("model-runner-embed", 60)])
def test_stopping_pods_keep_serving_until_their_endpoints_are_gone_then_drain(prod, name, drain):
    spec = pod_spec_of(prod, "Deployment", name)
    sleep = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    # Endpoints, kube-proxy and the ingress take seconds to stop sending to a terminating pod.
    assert sleep >= 5
    # The grace period counts from the preStop hook: it must cover the sleep and the drain after SIGTERM.
    assert spec["terminationGracePeriodSeconds"] >= sleep + drain


def test_the_gateway_rolls_out_after_the_runners_and_waits_as_long_as_the_slowest_model(prod):
    gateway = prod.one("kubernetes:apps/v1:Deployment", "gateway")
    runners = [resource for resource in prod.of_type("kubernetes:apps/v1:Deployment") if resource.name in runner_names("prod")]
    assert len(runners) == 2
    # Readiness asks the models: created before the runners answer, a cold first `up` would spend the gateway's
    # whole deadline on image pulls and model loads.
    assert {runner.urn for runner in runners} <= set(gateway.dependencies)
    slowest = max(model["loadBudgetSeconds"] for model in stack_config("prod")["models"].values())
    deadline = gateway.plain()["spec"]["progressDeadlineSeconds"]
    assert deadline > slowest
    # `pulumi up` waits at least that long for the rollout (Pulumi's own default is 10 minutes).
    assert int(gateway.custom_timeouts["create"].removesuffix("s")) >= deadline


# --- runners behind Knative's ingress ---------------------------------------------------------------------------


def secret_value(evaluation: Evaluation, reference: dict[str, str]) -> str:
    """The value a secretKeyRef names, which must have reached the engine marked secret."""
    data = evaluation.one("kubernetes:core/v1:Secret", reference["name"]).inputs["stringData"]
    value = data.value[reference["key"]] if isinstance(data, Secret) else data[reference["key"]]
    assert isinstance(data, Secret) or isinstance(value, Secret)
    return unwrap(value)


def test_runners_on_knative_answer_only_the_key_the_gateway_holds(prod):
    evaluation = evaluate("prod", set=KNATIVE, secrets=KEYED)
    for name, variable in (("model-runner-chat", "VLLM_API_KEY"), ("model-runner-embed", "LLAMA_API_KEY")):
        spec = named(evaluation, "Service", name)["spec"]["template"]["spec"]
        engine = spec["containers"][0]
        (key,) = [item for item in engine["env"] if item["name"] == variable]
        assert secret_value(evaluation, key["valueFrom"]["secretKeyRef"]) == RUNNER_API_KEY
        # Only the engine gets it, and the probes ask paths the key leaves open (vLLM guards all of /v1).
        assert all(variable not in repr(container) for container in [*spec.get("initContainers", []), *spec["containers"][1:]])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert engine[probe]["httpGet"]["path"] == "/health"
    gateway = named(evaluation, "Service", "gateway")["spec"]["template"]["spec"]["containers"][0]
    (upstream,) = [item for item in gateway["env"] if item["name"] == "GATEWAY_UPSTREAM_API_KEY"]
    assert secret_value(evaluation, upstream["valueFrom"]["secretKeyRef"]) == RUNNER_API_KEY
    assert RUNNER_API_KEY not in repr([resource.inputs for resource in evaluation.resources
                                       if resource.type != "kubernetes:core/v1:Secret"])
    # A runner served as a Deployment keeps its network policy and needs no key.
    assert "env" not in pod_spec_of(prod, "Deployment")["containers"][0]


OLLAMA = {"models.embed.engine": "ollama", "models.embed.model": "nomic-embed-text:v1.5", "models.embed.args": [],
          "models.embed.image": "ollama/ollama:0.12.6@sha256:" + "0" * 64}


@pytest.mark.parametrize("overrides,secrets,key,text", [
    (KNATIVE, FAKE_SECRETS, "runnerApiKey", "is required: models.chat and models.embed are served through Knative"),
    ({}, KEYED, "runnerApiKey", "this stack has none; unset it"),
    (KNATIVE, {**FAKE_SECRETS, "runnerApiKey": "two words"}, "runnerApiKey", "visible ASCII characters without spaces"),
    ({**KNATIVE, "models.chat.allowedNamespaces": ["batch-jobs"]}, KEYED, "models.chat.allowedNamespaces",
     "applies to Deployment workloads"),
    ({**OLLAMA, "models.embed.workload": "knative", "models.embed.scaling.targetCpuUtilization": None}, FAKE_SECRETS,
     "models.embed.workload", "ollama takes no API key"),
], ids=["key-required", "key-unused", "key-grammar", "allowed-namespaces", "keyless-engine"])
def test_knative_exposure_is_refused_unless_the_engine_requires_the_gateways_key(overrides, secrets, key, text):
    assert_rejected("prod", overrides, key, text, secrets=secrets)
