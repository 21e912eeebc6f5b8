"""Promise: names, label keys and values, env keys and quantities follow Kubernetes' own grammar
(k8s.io/apimachinery validation and resource.Quantity): what the API server would refuse is a config error
naming its key, and everything it accepts is accepted."""

import pytest

from harness import assert_rejected, evaluate, evaluate_failure

LONG_LABEL = "a" * 64

REFUSED = [
    ({"runner.namespace": "Models"}, "runner.namespace", "DNS label"),
    ({"runner.namespace": "m" * 64}, "runner.namespace", "at most 63"),
    ({"runner.namespace": "kube-system"}, "runner.namespace", "reserved"),
    ({"runner.namespace": "kube-ml"}, "runner.namespace", "reserved"),
    ({"runner.namespace": "default"}, "runner.namespace", "reserved"),
    ({"runner.namespace": "knative-serving"}, "runner.namespace", "reserved"),
    ({"runner.namespace": "ml.models"}, "runner.namespace", "DNS label"),
    ({"runner.allowedNamespaces": ["batch_jobs"]}, "runner.allowedNamespaces[0]", "DNS label"),
    ({"runner.cache.existingClaim": "Cache"}, "runner.cache.existingClaim", "DNS subdomain"),
    ({"runner.cache.existingClaim": "a" * 254}, "runner.cache.existingClaim", "at most 253"),
    ({"runner.cache.storageClass": "fast_ssd"}, "runner.cache.storageClass", "DNS subdomain"),
    ({"runner.gpu.runtimeClassName": "NVIDIA"}, "runner.gpu.runtimeClassName", "DNS subdomain"),
    ({"runner.env": {"1ST": "x"}}, 'runner.env["1ST"]', "environment variable name"),
    ({"runner.env": {"A B": "x"}}, 'runner.env["A B"]', "environment variable name"),
    ({"runner.resources.requests.cpu": "1K"}, "runner.resources.requests.cpu", "Kubernetes quantity"),
    ({"runner.resources.requests.cpu": "0"}, "runner.resources.requests.cpu", "positive"),
    ({"runner.resources.limits.memory": "512m"}, "runner.resources.limits.memory", "did you mean 512Mi"),
    ({"runner.resources.requests.memory": "2G", "runner.resources.limits.memory": "512m"},
     "runner.resources.limits.memory", "0.512 bytes"),
    ({"runner.cache.size": "10gi"}, "runner.cache.size", "Kubernetes quantity"),
    ({"runner.cache.size": "100m"}, "runner.cache.size", "did you mean 100Mi"),
]


@pytest.mark.parametrize("overrides,key,text", REFUSED, ids=[f"{case[1]}={list(case[0].values())[0]}"[:60] for case in REFUSED])
def test_what_kubernetes_refuses_is_a_config_error(overrides, key, text):
    assert_rejected("dev", overrides, key, text)


def gpu_stack(**overrides):
    return {"runner.engine": "vllm", "runner.model": "Qwen/Qwen2.5-0.5B-Instruct", "runner.gpu.count": 1, **overrides}


ACCEPTED = [
    ("dev", {"runner.namespace": "m" * 63}),
    ("dev", {"runner.namespace": "kubeflow-models"}),
    ("dev", {"runner.allowedNamespaces": ["kube-system", "default"]}),
    ("dev", {"runner.cache.existingClaim": "models.cache-v2"}),
    ("dev", {"runner.cache.storageClass": "efs.csi.aws.com"}),
    ("dev", {"runner.env": {"my.setting-1": "x", "_PRIVATE": "y"}}),
    ("dev", {"runner.resources.requests.cpu": "1e-1"}),
    ("dev", {"runner.resources.requests.cpu": 0.5}),
    ("dev", {"runner.resources.requests.memory": "1e9", "runner.resources.limits.memory": "2e9"}),
    ("dev", {"runner.resources.requests.memory": "1.5Gi", "runner.resources.limits.memory": "2G"}),
    ("dev", {"runner.env.THREADS": 8, "runner.env.VERBOSE": True}),
    ("prod", {"runner.gpu.nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G", "zone": ""}}),
]


@pytest.mark.parametrize("stack,overrides", ACCEPTED, ids=[f"{next(iter(c[1]))}" for c in ACCEPTED])
def test_what_kubernetes_accepts_is_accepted(stack, overrides):
    evaluate(stack, set=overrides)


def test_numbers_and_switches_as_env_values_reach_the_engine_as_text():
    evaluation = evaluate("dev", set={"runner.env.THREADS": 8, "runner.env.VERBOSE": True})
    data = next(r.plain()["data"] for r in evaluation.of_type("kubernetes:core/v1:ConfigMap") if "THREADS" in r.plain().get("data", {}))
    assert (data["THREADS"], data["VERBOSE"]) == ("8", "true")


@pytest.mark.parametrize("selector,key", [
    ({"nvidia.com/": "x"}, 'runner.gpu.nodeSelector["nvidia.com/"]'),
    ({"-gpu": "x"}, 'runner.gpu.nodeSelector["-gpu"]'),
    ({LONG_LABEL: "x"}, f"runner.gpu.nodeSelector.{LONG_LABEL}"),
    ({"Example.com/gpu": "x"}, 'runner.gpu.nodeSelector["Example.com/gpu"]'),
    ({"gpu": "A10G!"}, "runner.gpu.nodeSelector.gpu"),
    ({"gpu": LONG_LABEL}, "runner.gpu.nodeSelector.gpu"),
])
def test_node_selectors_follow_the_label_grammar(selector, key):
    assert_rejected("prod", {"runner.gpu.nodeSelector": selector}, key, "label" if len(selector[next(iter(selector))]) < 64 else "at most 63")


def test_every_grammar_problem_is_reported_at_once():
    error, evaluation = evaluate_failure("dev", set={
        "runner.namespace": "kube-system",
        "runner.cache.storageClass": "Fast",
        "runner.resources.limits.memory": "4096m",
        "runner.env": {"1X": "y"},
    })
    assert sorted(problem.key for problem in error.problems) == sorted([
        "runner.namespace", "runner.cache.storageClass", "runner.resources.limits.memory", 'runner.env["1X"]'
    ])
    assert evaluation.resources == []
