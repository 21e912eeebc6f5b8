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
    ("dev", {"models.chat.engine": "tgi"}, "models.chat.engine", "'docker-model-runner', 'vllm', 'ollama' or 'llama.cpp'"),
    ("dev", {"models.chat.cache.size": "-5Gi"}, "models.chat.cache.size", "positive Kubernetes quantity"),
    ("dev", {"models.chat.resources.requests.cpu": "-1"}, "models.chat.resources.requests.cpu", "positive Kubernetes quantity"),
    ("dev", {"models.chat.resources.requests.memory": "2GB"}, "models.chat.resources.requests.memory", "Mi"),
    ("dev", {"models.chat.resources.limits.memory": "512Mi"}, "models.chat.resources.limits.memory", "at least requests.memory"),
    ("dev", {"models.chat.scaling.minReplicas": -1}, "models.chat.scaling.minReplicas", "greater than or equal to 0"),
    ("prod", {"models.chat.scaling.maxReplicas": 1}, "models.chat.scaling.maxReplicas", "at least minReplicas"),
    ("dev", {"models.chat.port": 70000}, "models.chat.port", "65535"),
    ("dev", {"models.chat.loadBudgetSeconds": "ten minutes"}, "models.chat.loadBudgetSeconds", "valid integer"),
    ("dev", {"models.chat.image": "Docker/Model-Runner"}, "models.chat.image", "image reference"),
    ("prod", {"models.chat.image": "vllm/vllm-openai:latest"}, "models.chat.image", "digest-pinned"),
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
        "models.chat.port": 70000,
        "gateway.scaling.minReplicas": "two",
        "models.chat.scaling.minReplicas": 3,
        "models.chat.scaling.maxReplicas": 2,
        "models.chat.cache.accessMode": "ReadWriteOnce",
        "gateway.scaling.maxReplicas": 1,
        "gateway.scaling.targetCpuUtilization": 5,
    })
    assert sorted(problem.key for problem in error.problems) == sorted([
        "models.chat.port",
        "gateway.scaling.minReplicas",
        "gateway.scaling.targetCpuUtilization",
        "models.chat.scaling.maxReplicas",  # below minReplicas
        "models.chat.scaling.maxReplicas",  # above 1 on a ReadWriteOnce cache
    ])
    assert evaluation.resources == []


def test_production_floors_are_checked_beside_field_errors():
    error, _ = evaluate_failure("prod", set={"models.chat.port": 0, "gateway.scaling.minReplicas": 1, "models.chat.cache.protect": False})
    assert [problem.key for problem in error.problems] == [
        "models.chat.port", "gateway.scaling.minReplicas", "models.chat.cache.protect"
    ]


@pytest.mark.parametrize("overrides,reported", [
    # The RWO rule would fire on the default access mode that stands in for the bad one.
    ({"models.chat.cache.accessMode": "RWX", "models.chat.scaling.maxReplicas": 3}, ["models.chat.cache.accessMode"]),
    # A misspelt key leaves its default in force; a rule resting on that default would blame the user wrongly.
    ({"models.chat.cache.acessMode": "ReadWriteMany", "models.chat.scaling.maxReplicas": 3}, ["models.chat.cache.acessMode"]),
    ({"models.chat.scaling.minReplicas": 500, "models.chat.scaling.maxReplicas": 3, "models.chat.cache.accessMode": "ReadWriteMany"},
     ["models.chat.scaling.minReplicas"]),
])
def test_no_problem_is_reported_on_a_default_standing_in_for_a_bad_value(overrides, reported):
    error, _ = evaluate_failure("dev", set=overrides)
    assert [problem.key for problem in error.problems] == reported
