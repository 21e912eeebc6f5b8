"""Bad config stops the program with one message per problem, naming the key, before any resource exists."""

import pytest

from harness import FAKE_SECRETS, assert_rejected, evaluate_failure

BAD_INPUTS = [
    # (stack, overrides, key named in the message, text that must appear)
    ("dev", {"environment": "staging"}, "environment", "'development' or 'production'"),
    ("dev", {"runtme": "docker"}, "runtme", "did you mean 'runtime'"),
    ("dev", {"cluster.provder": "kind"}, "cluster.provder", "did you mean 'provider'"),
    ("dev", {"cluster.kubernetesVersion": "v1.32"}, "cluster.kubernetesVersion", "1.32"),
    ("dev", {"cluster": "kind"}, "cluster", "map of settings"),
    ("dev", {"kubeconfig": "apiVersion: v1"}, "kubeconfig", "--secret"),
    ("dev", {"runner.engine": "tgi"}, "runner.engine", "'docker-model-runner', 'vllm', 'ollama' or 'llama.cpp'"),
    ("dev", {"runner.cache.size": "-5Gi"}, "runner.cache.size", "positive Kubernetes quantity"),
    ("dev", {"runner.resources.requests.cpu": "-1"}, "runner.resources.requests.cpu", "positive Kubernetes quantity"),
    ("dev", {"runner.resources.requests.memory": "2GB"}, "runner.resources.requests.memory", "Mi"),
    ("dev", {"runner.resources.limits.memory": "512Mi"}, "runner.resources.limits.memory", "at least requests.memory"),
    ("dev", {"runner.scaling.minReplicas": -1}, "runner.scaling.minReplicas", "greater than or equal to 0"),
    ("prod", {"runner.scaling.maxReplicas": 1}, "runner.scaling.maxReplicas", "at least minReplicas"),
    ("dev", {"runner.port": 70000}, "runner.port", "65535"),
    ("dev", {"runner.loadBudgetSeconds": "ten minutes"}, "runner.loadBudgetSeconds", "valid integer"),
    ("dev", {"runner.image": "Docker/Model-Runner"}, "runner.image", "image reference"),
    ("prod", {"runner.image": "vllm/vllm-openai:latest"}, "runner.image", "digest-pinned"),
    ("dev", {"knative.install": False}, "knative.install", "gateway is served through Knative"),
]


@pytest.mark.parametrize("stack,overrides,key,text", BAD_INPUTS, ids=[case[2] for case in BAD_INPUTS])
def test_bad_config_is_rejected_by_key_before_any_resource(stack, overrides, key, text):
    secrets = {k: v for k, v in FAKE_SECRETS.items() if k not in overrides}
    assert_rejected(stack, overrides, key, text, secrets=secrets)


def test_every_problem_is_reported_at_once():
    error, _ = evaluate_failure(
        "dev", set={"environment": "staging", "cluster.kubernetesVersion": "2", "cluster.bogus": 1}
    )
    assert [problem.key for problem in error.problems] == [
        "environment", "cluster.kubernetesVersion", "cluster.bogus"
    ]
