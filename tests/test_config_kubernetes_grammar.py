"""Promise: names, label keys and values, env keys and quantities follow Kubernetes' own grammar
(k8s.io/apimachinery validation and resource.Quantity): what the API server would refuse is a config error
naming its key, and everything it accepts is accepted."""

import pytest

from harness import assert_rejected, evaluate, evaluate_failure

LONG_LABEL = "a" * 64

REFUSED = [
    ({"namespace": "Models"}, "namespace", "DNS label"),
    ({"namespace": "m" * 64}, "namespace", "at most 63"),
    ({"namespace": "kube-system"}, "namespace", "reserved"),
    ({"namespace": "kube-ml"}, "namespace", "reserved"),
    ({"namespace": "default"}, "namespace", "reserved"),
    ({"namespace": "knative-serving"}, "namespace", "reserved"),
    ({"namespace": "ml.models"}, "namespace", "DNS label"),
    ({"models.chat.allowedNamespaces": ["batch_jobs"]}, "models.chat.allowedNamespaces[0]", "DNS label"),
    ({"models.chat.cache.existingClaim": "Cache"}, "models.chat.cache.existingClaim", "DNS subdomain"),
    ({"models.chat.cache.existingClaim": "a" * 254}, "models.chat.cache.existingClaim", "at most 253"),
    ({"models.chat.cache.storageClass": "fast_ssd"}, "models.chat.cache.storageClass", "DNS subdomain"),
    ({"models.chat.gpu.runtimeClassName": "NVIDIA"}, "models.chat.gpu.runtimeClassName", "DNS subdomain"),
    ({"models.chat.env": {"1ST": "x"}}, 'models.chat.env["1ST"]', "environment variable name"),
    ({"models.chat.env": {"A B": "x"}}, 'models.chat.env["A B"]', "environment variable name"),
    ({"models.chat.resources.requests.cpu": "1K"}, "models.chat.resources.requests.cpu", "Kubernetes quantity"),
    ({"models.chat.resources.requests.cpu": "0"}, "models.chat.resources.requests.cpu", "positive"),
    ({"models.chat.resources.limits.memory": "512m"}, "models.chat.resources.limits.memory", "did you mean 512Mi"),
    ({"models.chat.resources.requests.memory": "2G", "models.chat.resources.limits.memory": "512m"},
     "models.chat.resources.limits.memory", "0.512 bytes"),
    ({"models.chat.cache.size": "10gi"}, "models.chat.cache.size", "Kubernetes quantity"),
    ({"models.chat.cache.size": "100m"}, "models.chat.cache.size", "did you mean 100Mi"),
]


@pytest.mark.parametrize("overrides,key,text", REFUSED, ids=[f"{case[1]}={list(case[0].values())[0]}"[:60] for case in REFUSED])
def test_what_kubernetes_refuses_is_a_config_error(overrides, key, text):
    assert_rejected("dev", overrides, key, text)


def gpu_stack(**overrides):
    return {"models.chat.engine": "vllm", "models.chat.model": "Qwen/Qwen2.5-0.5B-Instruct", "models.chat.gpu.count": 1, **overrides}


ACCEPTED = [
    ("dev", {"namespace": "m" * 63}),
    ("dev", {"namespace": "kubeflow-models"}),
    ("dev", {"models.chat.allowedNamespaces": ["kube-system", "default"]}),
    ("dev", {"models.chat.cache.existingClaim": "models.cache-v2"}),
    ("dev", {"models.chat.cache.storageClass": "efs.csi.aws.com"}),
    ("dev", {"models.chat.env": {"my.setting-1": "x", "_PRIVATE": "y"}}),
    ("dev", {"models.chat.resources.requests.cpu": "1e-1"}),
    ("dev", {"models.chat.resources.requests.cpu": 0.5}),
    ("dev", {"models.chat.resources.requests.memory": "1e9", "models.chat.resources.limits.memory": "2e9"}),
    ("dev", {"models.chat.resources.requests.memory": "1.5Gi", "models.chat.resources.limits.memory": "2G"}),
    ("dev", {"models.chat.env.THREADS": 8, "models.chat.env.VERBOSE": True}),
    ("prod", {"models.chat.gpu.nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G", "zone": ""}}),
]


@pytest.mark.parametrize("stack,overrides", ACCEPTED, ids=[f"{next(iter(c[1]))}" for c in ACCEPTED])
def test_what_kubernetes_accepts_is_accepted(stack, overrides):
    evaluate(stack, set=overrides)


def test_numbers_and_switches_as_env_values_reach_the_engine_as_text():
    evaluation = evaluate("dev", set={"models.chat.env.THREADS": 8, "models.chat.env.VERBOSE": True})
    data = next(r.plain()["data"] for r in evaluation.of_type("kubernetes:core/v1:ConfigMap") if "THREADS" in r.plain().get("data", {}))
    assert (data["THREADS"], data["VERBOSE"]) == ("8", "true")


@pytest.mark.parametrize("selector,key", [
    ({"nvidia.com/": "x"}, 'models.chat.gpu.nodeSelector["nvidia.com/"]'),
    ({"-gpu": "x"}, 'models.chat.gpu.nodeSelector["-gpu"]'),
    ({LONG_LABEL: "x"}, f"models.chat.gpu.nodeSelector.{LONG_LABEL}"),
    ({"Example.com/gpu": "x"}, 'models.chat.gpu.nodeSelector["Example.com/gpu"]'),
    ({"gpu": "A10G!"}, "models.chat.gpu.nodeSelector.gpu"),
    ({"gpu": LONG_LABEL}, "models.chat.gpu.nodeSelector.gpu"),
])
def test_node_selectors_follow_the_label_grammar(selector, key):
    assert_rejected("prod", {"models.chat.gpu.nodeSelector": selector}, key, "label" if len(selector[next(iter(selector))]) < 64 else "at most 63")


def test_every_grammar_problem_is_reported_at_once():
    error, evaluation = evaluate_failure("dev", set={
        "namespace": "kube-system",
        "models.chat.cache.storageClass": "Fast",
        "models.chat.resources.limits.memory": "4096m",
        "models.chat.env": {"1X": "y"},
    })
    assert sorted(problem.key for problem in error.problems) == sorted([
        "namespace", "models.chat.cache.storageClass", "models.chat.resources.limits.memory", 'models.chat.env["1X"]'
    ])
    assert evaluation.resources == []
