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


def test_field_errors_do_not_hide_the_cross_field_checks():
    error, evaluation = evaluate_failure("prod", set={
        "runner.port": 70000,
        "gateway.scaling.minReplicas": "two",
        "runner.scaling.minReplicas": 3,
        "runner.scaling.maxReplicas": 2,
        "runner.cache.accessMode": "ReadWriteOnce",
        "gateway.scaling.maxReplicas": 1,
        "gateway.scaling.targetCpuUtilization": 5,
    })
    assert sorted(problem.key for problem in error.problems) == sorted([
        "runner.port",
        "gateway.scaling.minReplicas",
        "gateway.scaling.targetCpuUtilization",
        "runner.scaling.maxReplicas",  # below minReplicas
        "runner.scaling.maxReplicas",  # above 1 on a ReadWriteOnce cache
    ])
    assert evaluation.resources == []


def test_production_floors_are_checked_beside_field_errors():
    error, _ = evaluate_failure("prod", set={"runner.port": 0, "gateway.scaling.minReplicas": 1, "runner.cache.protect": False})
    assert [problem.key for problem in error.problems] == [
        "runner.port", "gateway.scaling.minReplicas", "runner.cache.protect"
    ]


@pytest.mark.parametrize("overrides,reported", [
    # The RWO rule would fire on the default access mode that stands in for the bad one.
    ({"runner.cache.accessMode": "RWX", "runner.scaling.maxReplicas": 3}, ["runner.cache.accessMode"]),
    # A misspelt key leaves its default in force; a rule resting on that default would blame the user wrongly.
    ({"runner.cache.acessMode": "ReadWriteMany", "runner.scaling.maxReplicas": 3}, ["runner.cache.acessMode"]),
    ({"runner.scaling.minReplicas": 500, "runner.scaling.maxReplicas": 3, "runner.cache.accessMode": "ReadWriteMany"},
     ["runner.scaling.minReplicas"]),
])
def test_no_problem_is_reported_on_a_default_standing_in_for_a_bad_value(overrides, reported):
    error, _ = evaluate_failure("dev", set=overrides)
    assert [problem.key for problem in error.problems] == reported
