"""The model runner and gateway on Kubernetes: engine profiles, probe arithmetic, cross-references between the
objects, secrets, storage rules, and what prod adds (GPUs, redundancy, protection)."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from components.engines import ENGINES, PULL_SIDECAR_IMAGE
from components.model_runner import probe_timing
from components.serving_workload import replicas_service_name
from harness import FAKE_SECRETS, Evaluation, Secret, assert_rejected, evaluate, stack_config
from stacks.config import StackConfig

RUNNER = "model-runner-chat"


def objects_of(evaluation: Evaluation, kind: str) -> list[dict[str, Any]]:
    return [obj for _, obj in evaluation.kubernetes_objects() if obj["kind"] == kind]


def named(evaluation: Evaluation, kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in objects_of(evaluation, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def pod_spec(evaluation: Evaluation, name: str = RUNNER) -> dict[str, Any]:
    return named(evaluation, "Deployment", name)["spec"]["template"]["spec"]


def engine_container(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["containers"][0]


@pytest.fixture(scope="module", params=["dev", "prod"])
def evaluation(request) -> Evaluation:
    return evaluate(request.param)


# --- engine profiles -------------------------------------------------------------------------------------------

ENGINE_FACTS = {
    # engine: (port, OpenAI base path, model-ready check, liveness path, pull mode)
    "docker-model-runner": (12434, "/engines/v1", "/engines/v1/models/ai/smollm2:360M-Q4_K_M", "/models", "sidecar"),
    "vllm": (8000, "/v1", "/v1/models", "/health", "init"),
    "ollama": (11434, "/v1", ("ollama", "show", "llama3.2:3b"), "/", "init"),
    "llama.cpp": (8080, "/v1", "/health", "/health", "init"),
}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_engine_profiles_give_port_api_path_probes_and_pull(engine):
    profile = ENGINES[engine]
    rendered = profile.render(profile.model_example)
    port, base_path, ready, liveness, pull_mode = ENGINE_FACTS[engine]
    assert (rendered.port, rendered.api_base_path, rendered.liveness.http_path, rendered.pull.mode) == (
        port, base_path, liveness, pull_mode
    )
    assert (rendered.model_ready.http_path or rendered.model_ready.command) == ready
    assert rendered.env["MODEL"] == profile.model_example


def test_engine_arguments_select_the_model_and_port():
    vllm = ENGINES["vllm"].render("Qwen/Qwen2.5-7B-Instruct", port=9000)
    assert vllm.command == ("vllm", "serve")
    assert vllm.args[0] == "Qwen/Qwen2.5-7B-Instruct" and ("--port", "9000") == vllm.args[3:5]
    assert vllm.env["HF_HUB_OFFLINE"] == "1"
    assert vllm.pull.env == {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://huggingface.co"}
    # getpass.getuser() must answer for a UID without a passwd entry.
    assert vllm.env["USER"] == vllm.env["LOGNAME"] == "model-runner"
    llama = ENGINES["llama.cpp"].render("owner/repo-GGUF/model-Q4.gguf")
    # The repository is part of the cache path: the same file name elsewhere is other weights.
    assert "/models/llama.cpp/owner/repo-GGUF/model-Q4.gguf" in llama.args
    assert "--no-webui" in llama.args and "--no-slots" in llama.args
    assert "https://huggingface.co/owner/repo-GGUF/resolve/main/model-Q4.gguf" in llama.pull.command[-1]
    ollama = ENGINES["ollama"].render("llama3.2:3b")
    assert ollama.env["OLLAMA_HOST"] == "0.0.0.0:11434" and ollama.env["OLLAMA_MODELS"].startswith("/models/")
    dmr = ENGINES["docker-model-runner"].render("ai/smollm2")
    assert dmr.env["MODEL_RUNNER_PORT"] == "12434" and dmr.env["MODELS_PATH"].startswith("/models/")


def test_weights_come_from_the_configured_hub_mirror():
    evaluation = evaluate("prod", set={"models.chat.modelHub": "https://hf-mirror.example.com"})
    pull = pod_spec(evaluation)["initContainers"][0]
    assert {"name": "HF_ENDPOINT", "value": "https://hf-mirror.example.com"} in pull["env"]
    local = evaluate("local", set={"runner.modelHub": "http://127.0.0.1:8765/hub"})
    fetch = " ".join(local.one("docker:index/container:Container", "model-pull").inputs["entrypoints"])
    assert "http://127.0.0.1:8765/hub/bartowski/SmolLM2-360M-Instruct-GGUF/resolve/main/" in fetch


SHELL_PULLS = {name: p.render(p.model_example).pull.command for name, p in ENGINES.items()}


@pytest.mark.parametrize("engine", sorted(name for name, command in SHELL_PULLS.items() if command[:2] == ("sh", "-ec")))
def test_pull_scripts_are_valid_shell(engine):
    result = subprocess.run(["sh", "-n", "-c", SHELL_PULLS[engine][2]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_vllm_pull_is_a_python_call_into_the_hub_client():
    command = SHELL_PULLS["vllm"]
    assert command[0] == "python3"
    compile(command[2], "vllm-pull", "exec")


# --- probes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget,period", [(600, 5), (601, 5), (30, 7), (7200, 60), (900, 10)])
def test_the_startup_probe_covers_the_load_budget_within_one_period(budget, period):
    timing = probe_timing(budget, period)
    allowed = timing["failureThreshold"] * timing["periodSeconds"]
    assert budget <= allowed < budget + period


def test_emitted_probes_keep_the_promised_budget_and_readiness_delay(evaluation):
    runner = stack_config(evaluation.stack)["models"]["chat"]
    container = engine_container(pod_spec(evaluation))
    startup, readiness, liveness = (container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe"))
    assert startup["failureThreshold"] * startup["periodSeconds"] >= runner["loadBudgetSeconds"]
    # Startup asks the model-ready question every period; readiness asks the same one, so a loaded model is
    # Ready within one period.
    assert {k: v for k, v in startup.items() if k in ("httpGet", "exec")} == {
        k: v for k, v in readiness.items() if k in ("httpGet", "exec")
    }
    assert readiness["periodSeconds"] == startup["periodSeconds"] <= 10
    # Liveness is not the model check and does not start counting before startup has passed.
    assert liveness.get("httpGet") != readiness.get("httpGet")
    assert "initialDelaySeconds" not in liveness
    assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 60


# --- cross-references ------------------------------------------------------------------------------------------


def test_services_select_the_pods_and_target_their_named_port(evaluation):
    for service in objects_of(evaluation, "Service"):
        if service["metadata"]["namespace"] != "models" or service["apiVersion"] != "v1":
            continue
        # The workload's own Service, or the headless one listing its pods for the gateway.
        name = service["metadata"]["name"]
        deployment = named(evaluation, "Deployment", name.removeprefix(replicas_service_name("")))
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        port_names = {p["name"] for p in engine_container(deployment["spec"]["template"]["spec"])["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_probes_config_secrets_and_claims_resolve(evaluation):
    spec = pod_spec(evaluation)
    namespace = "models"
    port_names = {p["name"] for p in engine_container(spec)["ports"]}
    config_maps = {o["metadata"]["name"] for o in objects_of(evaluation, "ConfigMap") if o["metadata"].get("namespace") == namespace}
    secrets = {o["metadata"]["name"] for o in objects_of(evaluation, "Secret") if o["metadata"].get("namespace") == namespace}
    claims = {o["metadata"]["name"] for o in objects_of(evaluation, "PersistentVolumeClaim")}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "httpGet" in container.get(probe, {}):
                assert container[probe]["httpGet"]["port"] in port_names
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in config_maps
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets
        assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] in claims


def test_autoscaler_budget_and_policy_point_at_the_runner(evaluation):
    deployment = named(evaluation, "Deployment", RUNNER)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    runner = stack_config(evaluation.stack)["models"]["chat"]["scaling"]
    # Both stacks scale their chat model on requests: KEDA's ScaledObject, not a HorizontalPodAutoscaler of ours.
    assert [o for o in objects_of(evaluation, "HorizontalPodAutoscaler") if o["metadata"]["name"] == RUNNER] == []
    (scaled,) = [o for o in objects_of(evaluation, "ScaledObject") if o["metadata"]["name"] == RUNNER]
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RUNNER}
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (runner["minReplicas"], runner["maxReplicas"])
    policy = named(evaluation, "NetworkPolicy", RUNNER)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": engine_container(deployment["spec"]["template"]["spec"])["ports"][0]["containerPort"], "protocol": "TCP"}]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/part-of": "model-stack"}}} in rule["from"]


def test_the_namespace_enforces_the_restricted_pod_security_standard(evaluation):
    namespace = named(evaluation, "Namespace", "models")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_no_pod_gets_a_kubernetes_api_token(evaluation):
    served = {
        obj["metadata"]["name"]: obj["spec"]["template"]["spec"]["automountServiceAccountToken"]
        for resource, obj in evaluation.kubernetes_objects()
        if resource.type != "kubernetes:yaml/v2:ConfigGroup" and obj["kind"] in ("Deployment", "Service")
        and "template" in obj["spec"] and obj["metadata"]["namespace"] == "models"
    }
    runners = {f"model-runner-{name}": False for name in stack_config(evaluation.stack)["models"]}
    assert served == {**runners, "gateway": False}


def test_pods_are_hardened(evaluation):
    spec = pod_spec(evaluation)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}


# --- secrets ---------------------------------------------------------------------------------------------------


def test_the_hub_token_is_secret_and_never_plain(evaluation):
    secret = evaluation.one("kubernetes:core/v1:Secret", "model-runner-chat-credentials")
    string_data = secret.inputs["stringData"]
    assert isinstance(string_data, Secret) or isinstance(string_data["hf-token"], Secret)
    token = FAKE_SECRETS["hfToken"]
    exposed = [resource.name for resource in evaluation.resources if token in repr(_without_secrets(resource.inputs))]
    assert exposed == []


def test_the_hub_token_is_a_file_only_the_download_step_sees(evaluation):
    """No process environment holds it (/proc/*/environ, child processes): huggingface_hub and the llama.cpp fetch
    read the file HF_TOKEN_PATH names."""
    spec = pod_spec(evaluation)
    pull = next(c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == "model-pull")
    token_file = {e["name"]: e.get("value") for e in pull["env"]}["HF_TOKEN_PATH"]
    mount = next(m for m in pull["volumeMounts"] if token_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "model-runner-chat-credentials" and mount["readOnly"] is True
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        assert {"secretRef": {"name": "model-runner-chat-credentials"}} not in container.get("envFrom", [])
        assert "HF_TOKEN" not in {e["name"] for e in container.get("env", [])}
        if container["name"] != "model-pull":
            assert mount["name"] not in {m["name"] for m in container["volumeMounts"]}


def _without_secrets(value: Any) -> Any:
    if isinstance(value, Secret):
        return None
    if isinstance(value, dict):
        return {key: _without_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_secrets(item) for item in value]
    return value


def test_a_settings_change_rolls_the_pods_through_a_new_config_map():
    before = pod_spec(evaluate("dev"))
    after = pod_spec(evaluate("dev", set={"models.chat.env.LOG_LEVEL": "debug"}))
    name = lambda spec: engine_container(spec)["envFrom"][0]["configMapRef"]["name"]
    assert name(before) != name(after)


# --- storage and replicas --------------------------------------------------------------------------------------


def test_dev_cache_is_single_node_and_its_replica_stops_before_its_replacement_starts():
    evaluation = evaluate("dev")
    claim = named(evaluation, "PersistentVolumeClaim", "model-runner-chat-cache")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["storageClassName"] == "standard"
    assert named(evaluation, "Deployment", RUNNER)["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}


def test_prod_shares_a_protected_cache_and_rolls_one_gpu_replica_at_a_time():
    evaluation = evaluate("prod")
    claim = evaluation.one("kubernetes:core/v1:PersistentVolumeClaim", "model-runner-chat-cache")
    assert claim.retain_on_delete and not claim.protect
    assert claim.inputs["metadata"]["annotations"]["model-stack.dev/retained"] == "true"
    # The namespace holding the claim outlives the stack too: deleting it would delete the claim.
    assert evaluation.one("kubernetes:core/v1:Namespace").retain_on_delete
    assert claim.inputs["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim.inputs["spec"]["storageClassName"] == "efs-model-cache"
    deployment = named(evaluation, "Deployment", RUNNER)
    # Every GPU node holds one replica: a surge pod would find no GPU free. One old pod stops first, the others
    # keep serving, within what the disruption budget allows.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    assert named(evaluation, "PodDisruptionBudget", RUNNER)["spec"]["maxUnavailable"] == 1
    scaled = evaluation.one("kubernetes:keda.sh/v1alpha1:ScaledObject", RUNNER)
    assert "spec.replicas" in evaluation.one("kubernetes:apps/v1:Deployment", RUNNER).ignore_changes
    assert scaled.inputs["spec"]["minReplicaCount"] >= 2


def test_cpu_replicas_on_a_shared_cache_roll_with_a_surge_pod():
    evaluation = evaluate("prod", set={
        "models.chat.engine": "ollama", "models.chat.model": "llama3.2:3b", "models.chat.gpu.count": 0, "models.chat.args": [],
        "models.chat.image": f"ollama/ollama:0.12.6@sha256:{'a' * 64}",
    })
    strategy = named(evaluation, "Deployment", RUNNER)["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def test_prod_runs_on_gpu_nodes():
    spec = pod_spec(evaluate("prod"))
    resources = engine_container(spec)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"])  # vLLM's /dev/shm


BAD_RUNNER_CONFIG = [
    ("dev", {"models.chat.scaling.maxReplicas": 3}, "models.chat.scaling.maxReplicas", "ReadWriteOnce"),
    ("dev", {"models.chat.scaling.signal": "cpu"}, "models.chat.scaling.minReplicas", "workload knative"),
    ("dev", {"models.chat.engine": "vllm", "models.chat.model": "Qwen/Qwen2.5-0.5B"}, "models.chat.gpu.count", "at least 1"),
    ("dev", {"models.chat.engine": "llama.cpp"}, "models.chat.model", ".gguf"),
    ("dev", {"models.chat.cache.existingClaim": "models", "models.chat.cache.storageClass": "fast"}, "models.chat.cache.storageClass", "existingClaim"),
    ("prod", {"models.chat.scaling.minReplicas": 1}, "models.chat.scaling.minReplicas", "at least 2"),
    ("prod", {"models.chat.cache.protect": False}, "models.chat.cache.protect", "must be true"),
    ("dev", {"models.chat.modelHub": "https://hf-mirror.example.com"}, "models.chat.modelHub", "not docker-model-runner"),
    ("prod", {"models.chat.modelHub": "https://user:pass@hf-mirror.example.com"}, "models.chat.modelHub", "user and password"),
    ("prod", {"models.chat.modelHub": "https://hf-mirror.example.com/"}, "models.chat.modelHub", "http(s) base URL"),
    ("prod", {"models.chat.modelHub": "ftp://hf-mirror.example.com"}, "models.chat.modelHub", "http(s) base URL"),
    ("prod", {"gateway.scaling.minReplicas": 1}, "gateway.scaling.minReplicas", "at least 2"),
    ("dev", {"gateway.workload": "deployment"}, "gateway.scaling.minReplicas", "workload knative"),
    ("dev", {"models.chat.workload": "knative", "models.chat.scaling.podsMetric": {"name": "q", "averageValue": "4"}},
     "models.chat.scaling.podsMetric", "targetConcurrency"),
    ("dev", {"models.chat.readyPath": "health"}, "models.chat.readyPath", "absolute URL path"),
    ("dev", {"models.chat.port": 70000}, "models.chat.port", "65535"),
    ("prod", {"gateway.image": "model-gateway:1.0"}, "gateway.image", "digest-pinned"),
]


@pytest.mark.parametrize("stack,overrides,key,text", BAD_RUNNER_CONFIG, ids=[f"{c[0]}-{c[2]}" for c in BAD_RUNNER_CONFIG])
def test_bad_runner_config_is_rejected_by_key(stack, overrides, key, text):
    assert_rejected(stack, overrides, key, text)


# Tags their publishers move to new builds: a pod restarted tomorrow would run something else.
MOVING_TAGS = {"latest", "server", "main", "edge", "nightly"}


@pytest.mark.parametrize("image", sorted({*(profile.image for profile in ENGINES.values()), PULL_SIDECAR_IMAGE}))
def test_default_images_name_a_release(image):
    tag = image.rpartition(":")[2]
    assert tag not in MOVING_TAGS and re.search(r"\d+\.\d+|\bb\d+$", tag), image


@pytest.mark.parametrize("stack", ["dev", "local"])
def test_dev_and_local_run_released_images(stack):
    evaluation = evaluate(stack)
    images = [
        *(container["image"] for deployment in evaluation.of_type("kubernetes:apps/v1:Deployment")
          for container in deployment.plain()["spec"]["template"]["spec"]["containers"]),
        *(pull.plain()["name"] for pull in evaluation.of_type("docker:index/remoteImage:RemoteImage")),
    ]
    assert images and not [image for image in images if image.rpartition(":")[2] in MOVING_TAGS], images


def test_production_names_every_unpinned_image_the_engine_profile_would_deploy():
    config = StackConfig.model_validate({"environment": "production", "cluster": {"provider": "existing"}})
    unpinned = [problem.key for problem in config.problems("") if "digest-pinned" in problem.message]
    assert unpinned == ["images.gatewayBuild.baseImage", "runner.image", "runner.pullSidecarImage",
                        "metrics.prometheusImage", "metrics.kubeStateMetricsImage"]
