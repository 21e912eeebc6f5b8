"""Several models in one stack: one engine workload per model, one gateway routing by the model a request names,
and the one-model `runner` shorthand still deploying what it always did."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness import Evaluation, assert_rejected, evaluate, evaluate_failure, stack_config, unwrap

GATEWAY_IMAGE = "localhost:5001/model-gateway:dev"
LLAMA = "bartowski/SmolLM2-360M-Instruct-GGUF/SmolLM2-360M-Instruct-Q4_K_M.gguf"
TINY_LLAMA = "bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf"
# The local stack's runner moved into two entries of `models`.
LOCAL_TWO_MODELS = {"runner": None, "models": {"chat": {"engine": "llama.cpp", "model": LLAMA},
                                              "small": {"engine": "llama.cpp", "model": TINY_LLAMA}}}


CUDA_LLAMA = "ghcr.io/ggml-org/llama.cpp:server-cuda-b7010"
# Both of them on GPUs: one and two of the host's.
LOCAL_GPU_MODELS = {"runner": None, "models": {
    "chat": {"engine": "llama.cpp", "model": LLAMA, "image": CUDA_LLAMA, "gpu": {"count": 1}},
    "small": {"engine": "llama.cpp", "model": TINY_LLAMA, "image": CUDA_LLAMA, "gpu": {"count": 2}}}}


def objects(evaluation: Evaluation, kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for _, obj in evaluation.kubernetes_objects()
            if obj["kind"] == kind and obj["metadata"].get("namespace") == "models"}


def gateway_env(evaluation: Evaluation) -> dict[str, str]:
    """The gateway's settings, whether it runs as a Deployment or a Knative Service (dev's)."""
    workload = objects(evaluation, "Deployment").get("gateway") or objects(evaluation, "Service")["gateway"]
    container = workload["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value") for item in container["env"]}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_each_model_gets_its_own_engine_cache_and_network_policy(stack):
    evaluation = evaluate(stack)
    models = stack_config(stack)["models"]
    assert len(models) == 2
    deployments, policies = objects(evaluation, "Deployment"), objects(evaluation, "NetworkPolicy")
    gateway_labels = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/part-of": "model-stack"}
    routes = json.loads(gateway_env(evaluation)["GATEWAY_MODELS"])
    assert set(routes) == {model["model"] for model in models.values()}
    for name, model in models.items():
        workload = f"model-runner-{name}"
        pod = deployments[workload]["spec"]["template"]["spec"]
        claims = [volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"] if "persistentVolumeClaim" in volume]
        assert claims == [f"{workload}-cache"]
        assert objects(evaluation, "PersistentVolumeClaim")[f"{workload}-cache"]["spec"]["resources"]["requests"][
            "storage"] == model["cache"]["size"]
        assert pod["containers"][0]["resources"]["limits"]["memory"] == model["resources"]["limits"]["memory"]
        # The engine admits the gateway's pods and the namespaces its own model allows, nobody else.
        (rule,) = policies[workload]["spec"]["ingress"]
        pods = [peer["podSelector"]["matchLabels"] for peer in rule["from"] if "podSelector" in peer]
        assert len(pods) == 1 and pods[0].items() <= gateway_labels.items()
        namespaces = [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                      for peer in rule["from"] if "namespaceSelector" in peer]
        assert namespaces == model.get("allowedNamespaces", [])
        assert policies[workload]["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == workload
        assert routes[model["model"]] == evaluation.outputs["modelRunnerUrls"][model["model"]]
        assert routes[model["model"]].startswith(f"http://{workload}.models.svc.cluster.local:")
    assert "modelRunnerUrl" not in evaluation.outputs


def test_prod_serves_a_gpu_model_beside_a_cpu_embedding_model():
    deployments = objects(evaluate("prod"), "Deployment")
    chat, embed = (deployments[f"model-runner-{name}"]["spec"]["template"]["spec"] for name in ("chat", "embed"))
    assert chat["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in embed["containers"][0]["resources"]["limits"]
    assert "tolerations" not in embed and "--embeddings" in embed["containers"][0]["args"]


def test_the_runner_shorthand_deploys_what_it_always_did():
    """A one-model stack file from before `models` keeps its object names and the gateway's settings."""
    shorthand = {"models": None, "runner": stack_config("dev")["models"]["chat"], "gateway.image": GATEWAY_IMAGE}
    evaluation = evaluate("dev", set=shorthand)
    assert set(objects(evaluation, "Deployment")) == {"model-runner"}
    assert "model-runner-cache" in objects(evaluation, "PersistentVolumeClaim")
    env = gateway_env(evaluation)
    assert "GATEWAY_MODELS" not in env
    assert env["GATEWAY_MODEL"] == "ai/smollm2:360M-Q4_K_M"
    assert env["GATEWAY_UPSTREAM_BASE_URL"] == evaluation.outputs["modelRunnerUrl"] == (
        "http://model-runner.models.svc.cluster.local:12434/engines/v1")


def test_a_model_on_knative_and_one_on_a_deployment_are_served_side_by_side():
    evaluation = evaluate("dev", set={"models.small.workload": "knative", "models.small.scaling.minReplicas": 0})
    assert "model-runner-chat" in objects(evaluation, "Deployment")
    assert "model-runner-small" not in objects(evaluation, "Deployment")
    knative = [obj for _, obj in evaluation.kubernetes_objects()
               if obj["kind"] == "Service" and obj["apiVersion"] == "serving.knative.dev/v1"]
    assert {service["metadata"]["name"] for service in knative} == {"model-runner-small", "gateway"}
    # A probe asking every engine would keep the one that scales to zero awake.
    gateway = objects(evaluation, "Service")["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health"


def test_the_docker_runtime_runs_one_engine_and_cache_per_model_behind_one_gateway():
    evaluation = evaluate("local", set=LOCAL_TWO_MODELS)
    containers = {container.inputs["name"]: container for container in evaluation.of_type("docker:index/container:Container")}
    assert {"model-runner-chat", "model-runner-small", "gateway"} <= set(containers)
    volumes = {volume.inputs["name"] for volume in evaluation.of_type("docker:index/volume:Volume")}
    assert volumes == {"model-stack-models-chat", "model-stack-models-small"}
    for name in ("chat", "small"):
        mounts = containers[f"model-runner-{name}"].inputs["mounts"]
        assert {"source": f"model-stack-models-{name}", "target": "/models", "type": "volume"}.items() <= next(
            mount for mount in mounts if mount["target"] == "/models").items()
    env = dict(entry.split("=", 1) for entry in unwrap(containers["gateway"].inputs["envs"]))
    assert json.loads(env["GATEWAY_MODELS"]) == {LLAMA: "http://model-runner-chat:8080/v1",
                                                TINY_LLAMA: "http://model-runner-small:8080/v1"}


def test_gpu_models_on_the_docker_runtime_each_get_devices_of_their_own():
    containers = {container.inputs["name"]: container.inputs
                  for container in evaluate("local", set=LOCAL_GPU_MODELS).of_type("docker:index/container:Container")}
    # Two engines on one GPU each size their memory for all of it: the second would fail out of memory.
    assert containers["model-runner-chat"]["gpus"] == "device=0"
    assert containers["model-runner-small"]["gpus"] == "device=1,2"
    # A model alone on GPUs keeps the host's GPUs, or docker.runner.gpus.
    one = {"runner": None, "models": {**LOCAL_TWO_MODELS["models"], "chat": LOCAL_GPU_MODELS["models"]["chat"]}}
    alone = {container.inputs["name"]: container.inputs
             for container in evaluate("local", set=one).of_type("docker:index/container:Container")}
    assert alone["model-runner-chat"]["gpus"] == "all" and "gpus" not in alone["model-runner-small"]


# --- config rules: a refused case and an accepted near-miss each ---------------------------------------------------

REFUSED = [
    ("dev", {"runner.engine": "llama.cpp"}, "runner", "one-model shorthand of `models`"),
    ("dev", {"namespace": "ml", "runner": {"namespace": "ml"}, "models": None}, "runner.namespace", "set one of them"),
    ("dev", {"models.small.model": "ai/smollm2:360M-Q4_K_M"}, "models.small.model", "served by models.chat already"),
    ("dev", {"models.Small": {"model": "ai/smollm2:135M-Q4_K_M"}}, "models.Small", "a model name"),
    ("dev", {'models["2fast"]': {"model": "ai/smollm2:135M-Q4_K_M"}}, 'models["2fast"]', "a model name"),
    ("dev", {"models.a-much-too-long-model-name": {"model": "ai/smollm2:135M-Q4_K_M"}},
     "models.a-much-too-long-model-name", "at most 24"),
    ("dev", {"models.small.gpu.count": 1, "models.small.image": "docker/model-runner:v1.2.6-cuda"},
     "models.small.gpu.count", "must be 0 on kind"),
    ("dev", {"models.small.engine": "vllm"}, "models.small.model", "vllm"),
    ("prod", {"models.embed.scaling.minReplicas": 1}, "models.embed.scaling.minReplicas", "at least 2 in production"),
    ("prod", {"models.embed.cache.protect": False}, "models.embed.cache.protect", "must be true in production"),
    ("prod", {"models.embed.image": "ghcr.io/ggml-org/llama.cpp:server-b9935"}, "models.embed.image", "digest-pinned"),
    ("prod", {"models.embed.args": ["--port", "9000"]}, "models.embed.args[0]", "models.embed.port"),
    ("local", {**LOCAL_TWO_MODELS, "docker.runner.ports": ["127.0.0.1:9000:8080"]}, "docker.runner.ports[0]",
     "each of the 2 models"),
    ("local", {**LOCAL_TWO_MODELS, "docker.gateway.env.GATEWAY_MODELS": "{}"}, "docker.gateway.env.GATEWAY_MODELS",
     "models.chat.model"),
    ("local", {**LOCAL_GPU_MODELS, "docker.runner.gpus": "all"}, "docker.runner.gpus",
     "models.chat and models.small each ask for their own"),
]


@pytest.mark.parametrize("stack,overrides,key,text", REFUSED, ids=[case[2] for case in REFUSED])
def test_bad_model_lists_are_refused_by_key(stack, overrides, key, text):
    assert_rejected(stack, {"gateway.image": GATEWAY_IMAGE, **overrides} if stack == "dev" else overrides, key, text)


ACCEPTED = [
    ("dev", {"namespace": "ml"}),
    ("dev", {"models": None, "runner": {"namespace": "ml"}}),
    ("dev", {"models.a-model-name-of-24-ch": {"model": "ai/smollm2:135M-Q4_0", "cache": {"size": "1Gi"}}}),
    ("dev", {"models.small.gpu.count": 0}),
    ("local", {**LOCAL_TWO_MODELS, "docker.runner.ports": ["8080"]}),  # no host port: nothing to clash
    ("local", {"docker.runner.ports": ["127.0.0.1:9000:8080"]}),  # one model may publish
]


@pytest.mark.parametrize("stack,overrides", ACCEPTED, ids=[json.dumps(case[1])[:60] for case in ACCEPTED])
def test_near_misses_are_accepted(stack, overrides):
    evaluate(stack, set={"gateway.image": GATEWAY_IMAGE, **overrides} if stack == "dev" else overrides)


def test_every_problem_of_several_models_is_reported_at_once():
    error, evaluation = evaluate_failure("prod", set={
        "models.embed.scaling.minReplicas": 1, "models.chat.cache.protect": False, "models.embed.model": "x",
    })
    assert [problem.key for problem in error.problems] == [
        "models.embed.model", "models.embed.scaling.minReplicas", "models.chat.cache.protect"]
    assert evaluation.resources == []


# --- API keys limited to models -------------------------------------------------------------------------------

SCOPED_KEYS = "team-key-0123\nbatch-key-4567 ai/smollm2:135M-Q4_K_M"


def test_a_key_limited_to_a_served_model_reaches_the_gateway_as_written():
    evaluation = evaluate("dev", set={"gateway.image": GATEWAY_IMAGE}, secrets={"gatewayApiKeys": SCOPED_KEYS})
    secret = evaluation.one("kubernetes:core/v1:Secret", "gateway-api-keys")
    assert unwrap(secret.inputs["stringData"]) == {"GATEWAY_API_KEYS": SCOPED_KEYS}


@pytest.mark.parametrize("keys,text", [
    ("team-key-0123\nbatch-key-4567 ai/smollm2:1.7B", "model 'ai/smollm2:1.7B', which the stack does not serve"),
    ("team-key-0123 ai/smollm2:135M-Q4_K_M extra", "line 1 has 3 fields"),
    ("team-key-0123, other-key", "the key before the space has a comma"),
    ("", "holds no key"),
], ids=["unserved-model", "three-fields", "space-after-comma", "empty"])
def test_a_keys_text_the_gateway_would_refuse_is_a_config_error_that_never_shows_a_key(keys, text):
    error, evaluation = evaluate_failure("dev", set={"gateway.image": GATEWAY_IMAGE}, secrets={"gatewayApiKeys": keys})
    (problem,) = error.problems
    assert problem.key == "gatewayApiKeys" and text in problem.message
    assert "team-key" not in str(error) and "batch-key" not in str(error) and evaluation.resources == []
