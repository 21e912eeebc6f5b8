"""Promise: a setting that only the other runtime reads is refused at its own key, never as its whole section, and
so is a setting of a section that does not apply; two of the kind cluster's host ports on one port, and models
whose generated object names would collide (containers on Docker, the names Knative derives on Kubernetes) are
refused naming both and the port or name."""

import pytest

from harness import assert_rejected, evaluate, evaluate_failure

LLAMA = "bartowski/SmolLM2-360M-Instruct-GGUF/SmolLM2-360M-Instruct-Q4_K_M.gguf"
LLAMA_MODEL = {"engine": "llama.cpp", "model": LLAMA}


def docker_models(*names):
    return {"runner": None, "models": {name: {**LLAMA_MODEL, "model": f"{LLAMA[:-5]}-{name}.gguf"} for name in names}}


def kubernetes_models(**workloads):
    """dev's models, plus one DMR model per name with the given workload."""
    return {f"models.{name}": {"engine": "docker-model-runner", "model": f"ai/smollm2:{name}", "workload": workload,
                               "scaling": {"minReplicas": 1, "maxReplicas": 1}} for name, workload in workloads.items()}


REFUSED = [
    # (stack, overrides, key, text, the value given)
    ("local", {"runner.workload": "knative"}, "runner.workload", "Kubernetes runtime only", "knative"),
    ("local", {"runner.scaling.maxReplicas": 2}, "runner.scaling.maxReplicas", "does nothing on this stack's runtime docker", 2),
    ("local", {"runner.gpu.nodeSelector": {"gpu": "a10"}}, "runner.gpu.nodeSelector", "Kubernetes runtime only", {"gpu": "a10"}),
    ("local", {"gateway.allowedNamespaces": ["ingress-nginx"]}, "gateway.allowedNamespaces", "Kubernetes runtime only",
     ["ingress-nginx"]),
    ("local", {"namespace": "ml"}, "namespace", "Kubernetes runtime only", "ml"),
    ("local", {"cluster.kind.workers": 1}, "cluster.kind.workers", "set runtime: kubernetes", 1),
    ("local", {"images.registry.server": "ghcr.io/acme"}, "images.registry.server", "Kubernetes runtime only", "ghcr.io/acme"),
    ("local", {"images.gatewayBuild.platforms": ["linux/arm64"]}, "images.gatewayBuild.platforms", "Kubernetes runtime only",
     ["linux/arm64"]),
    ("dev", {"docker.runner.memory": "2g"}, "docker.runner.memory", "Docker runtime only", 2 * 2**30),
    # Host ports of the kind cluster, all on 127.0.0.1
    ("dev", {"cluster.kind.httpsHostPort": 80}, "cluster.kind.httpsHostPort",
     "127.0.0.1:80 on the host, which cluster.kind.httpHostPort takes already", 80),
    ("dev", {"cluster.kind.registryPort": 443}, "cluster.kind.registryPort", "which cluster.kind.httpsHostPort takes", 443),
    ("dev", {"cluster.kind.registryNetwork": "-kind"}, "cluster.kind.registryNetwork", "a Docker network name", "-kind"),
    ("dev", {"cluster.kind.registryNetwork": "my net"}, "cluster.kind.registryNetwork", "a Docker network name", "my net"),
    ("local", {"cluster.kind.registryNetwork": "kind"}, "cluster.kind.registryNetwork", "set runtime: kubernetes", "kind"),
    # Generated names
    ("local", docker_models("x", "x-pull"), "models.x-pull",
     "its runner container would be named model-runner-x-pull, like the model pull container of models.x",
     "model-runner-x-pull"),
    ("local", docker_models("x-cache-owner", "x"), "models.x", "like the runner container of models.x-cache-owner",
     "model-runner-x-cache-owner"),
    ("dev", kubernetes_models(chat="knative", **{"chat-00001": "deployment"}), "models.chat-00001",
     "Service name Knative gives a revision of models.chat", "model-runner-chat-00001"),
    ("dev", kubernetes_models(chat="knative", **{"chat-00002-private": "knative"}), "models.chat-00002-private",
     "is a Service name", "model-runner-chat-00002-private"),
    ("dev", kubernetes_models(chat="knative", **{"chat-00001-deployment": "deployment"}), "models.chat-00001-deployment",
     "Deployment name Knative gives a revision of models.chat", "model-runner-chat-00001-deployment"),
]


@pytest.mark.parametrize("stack,overrides,key,text,given", REFUSED, ids=[f"{c[0]}-{c[2]}" for c in REFUSED])
def test_settings_without_effect_and_colliding_names_are_refused_by_key(stack, overrides, key, text, given):
    assert_rejected(stack, overrides, key, text, given=given)


ACCEPTED = [
    ("local", {"runner.loadBudgetSeconds": 200, "runner.gpu.count": 0, "docker.runner.memory": "1g"}),
    ("dev", {"cluster.kind.workers": 1, "models.small.scaling.signal": "cpu",
             "models.small.scaling.targetCpuUtilization": 60}),
    ("dev", {"cluster.kind.httpHostPort": 8080, "cluster.kind.httpsHostPort": 8443, "cluster.kind.registryPort": 8081,
             "cluster.kind.registryNetwork": "kind_1.net"}),
    ("local", docker_models("x", "x-pulled", "pull-x")),
    ("dev", kubernetes_models(chat="knative", **{"chat-0001": "deployment", "chat-00001-deployment": "knative"})),
    ("dev", kubernetes_models(**{"chat-00001": "deployment"})),  # chat on a Deployment: Knative names nothing
]


@pytest.mark.parametrize("stack,overrides", ACCEPTED, ids=[f"{c[0]}-{i}" for i, c in enumerate(ACCEPTED)])
def test_settings_the_runtime_reads_and_distinct_names_are_accepted(stack, overrides):
    evaluate(stack, set=overrides)


def test_each_setting_without_effect_is_its_own_problem():
    error, evaluation = evaluate_failure("local", set={
        "knative.domain": "models.example.com", "knative.install": True, "runner.workload": "knative",
        "runner.cache.size": "20Gi"})
    assert sorted(problem.key for problem in error.problems if "runtime only" in problem.message) == sorted([
        "knative.domain", "knative.install", "runner.workload", "runner.cache.size"])
    assert evaluation.resources == []
