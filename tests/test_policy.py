"""The CrossGuard pack's validators, called directly with realistic Kubernetes inputs, and run over what the prod
stack registers under the mocks with prod's own policy config."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import jsonschema
import pytest
import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
)
from pulumi_policy.proxy import unknown_checking_proxy

from components import model_runner
from harness import ROOT, STACKS, evaluate, set_path

sys.path.insert(0, str(ROOT / "policy"))
from model_stack_policy.rules import POLICIES, names_a_secret, type_token  # noqa: E402

POLICY = {policy.name: policy for policy in POLICIES}
DIGEST = "sha256:" + "a" * 64
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
KSERVICE = "kubernetes:serving.knative.dev/v1:Service"

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
VLLM_CONTAINER = {
    "name": "vllm",
    "image": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/mirror/vllm/vllm-openai:v0.9.2@{DIGEST}",
    "args": ["--model", "Qwen/Qwen2.5-7B-Instruct", "--port", "8000"],
    "ports": [{"name": "http", "containerPort": 8000}],
    "env": [
        {"name": "HF_HOME", "value": "/models"},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}},
    ],
    "resources": {
        "requests": {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "24Gi", "nvidia.com/gpu": "1"},
    },
    "readinessProbe": {"httpGet": {"path": "/v1/models", "port": 8000}},
    "livenessProbe": {"httpGet": {"path": "/health", "port": 8000}},
    "startupProbe": {"httpGet": {"path": "/health", "port": 8000}, "failureThreshold": 60, "periodSeconds": 10},
    "securityContext": RESTRICTED,
}
GOOD_DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "model-runner-chat", "namespace": "models"},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "model-runner-chat"}},
        "template": {
            "metadata": {"labels": {"app": "model-runner-chat"}},
            "spec": {
                "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
                "containers": [VLLM_CONTAINER],
                "volumes": [
                    {"name": "models", "persistentVolumeClaim": {"claimName": "model-cache"}},
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
                ],
            },
        },
    },
}
GOOD_PDB = {
    "apiVersion": "policy/v1",
    "kind": "PodDisruptionBudget",
    "metadata": {"name": "model-runner-chat", "namespace": "models"},
    "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "model-runner-chat"}}},
}
PROD_CONFIG = json.loads((ROOT / "policy/config/prod.json").read_text())
NO_OPTIONS = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
PROTECTED = PolicyResourceOptions(True, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


def policy_config(stack_config: dict, name: str) -> dict:
    """What the engine hands one policy from a `--policy-pack-config` file (properties without the level)."""
    entry = stack_config.get(name)
    return {k: v for k, v in entry.items() if k != "enforcementLevel"} if isinstance(entry, dict) else {}


def enforcement(stack_config: dict, name: str) -> EnforcementLevel:
    entry = stack_config.get(name, stack_config.get("all", "advisory"))
    level = entry.get("enforcementLevel", stack_config.get("all", "advisory")) if isinstance(entry, dict) else entry
    return EnforcementLevel(level)


def violations(policy_name, resource_type_or_resources, props=None, config=None, opts=NO_OPTIONS, name="runner"):
    """Messages one policy reports: for a single resource, or for a list of (type, props) stack resources. Props
    are wrapped the way the engine hands them over (read-only Mapping/Sequence proxies, not dicts and lists)."""
    policy = POLICY[policy_name]
    found: list[str] = []
    report = lambda message, urn=None: found.append(message)  # noqa: E731
    if isinstance(policy, ResourceValidationPolicy):
        args = ResourceValidationArgs(
            resource_type_or_resources, unknown_checking_proxy(props), f"urn:pulumi:prod::model-stack::{resource_type_or_resources}::{name}",
            name, opts, None, config or {},
        )
    else:
        resources = [
            PolicyResource(type_, unknown_checking_proxy(obj), f"urn:{i}", f"r{i}", NO_OPTIONS, None, None, [], {})
            for i, (type_, obj) in enumerate(resource_type_or_resources)
        ]
        args = StackValidationArgs(resources, config or {})
    policy.validate(args, report)
    return found


def changed(obj: dict, **paths) -> dict:
    """A copy of `obj` with `--path`-style edits (`spec.template.spec.containers[0].image`)."""
    result = copy.deepcopy(obj)
    for path, value in paths.items():
        set_path(result, path.replace("__", "."), value)
    return result


CONTAINER = "spec__template__spec__containers[0]"


@pytest.mark.parametrize("policy_name", [p.name for p in POLICIES if isinstance(p, ResourceValidationPolicy)])
def test_a_good_model_runner_deployment_passes_every_resource_policy(policy_name):
    config = policy_config(PROD_CONFIG, policy_name)
    assert violations(policy_name, DEPLOYMENT, GOOD_DEPLOYMENT, config) == []


VIOLATIONS = [
    # (policy, resource type, props, config, words the message must contain)
    ("no-floating-image-tags", DEPLOYMENT, changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__image": "vllm/vllm-openai:latest"}),
     {}, ["container 'vllm'", "vllm/vllm-openai:latest", "pin"]),
    ("no-floating-image-tags", DEPLOYMENT, changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__image": "vllm/vllm-openai"}),
     {}, ["Deployment models/model-runner", "vllm/vllm-openai"]),
    ("no-floating-image-tags", DEPLOYMENT, changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__image": "vllm/vllm-openai:v0.9.2"}),
     {"requireDigest": True}, ["a digest"]),
    ("allowed-image-registries", DEPLOYMENT, changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__image": f"vllm/vllm-openai@{DIGEST}"}),
     {"allowedRegistries": ["123456789012.dkr.ecr.us-east-1.amazonaws.com"]}, ["docker.io/vllm/vllm-openai", "mirror"]),
    ("allowed-image-registries", DEPLOYMENT,
     changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__image": f"123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.io/x@{DIGEST}"}),
     {"allowedRegistries": ["123456789012.dkr.ecr.us-east-1.amazonaws.com"]}, ["outside the allowed registries"]),
    ("container-resources", DEPLOYMENT, changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__resources__limits": {}}),
     {}, ["container 'vllm'", "resources.limits.memory"]),
    ("container-resources", DEPLOYMENT, changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__resources": None}),
     {}, ["requests.cpu", "requests.memory", "limits.memory"]),
    ("serving-probes", DEPLOYMENT, changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__readinessProbe": None}),
     {}, ["serving container 'vllm'", "readinessProbe"]),
    ("serving-probes", KSERVICE,
     {"metadata": {"name": "gateway"}, "spec": {"template": {"spec": {"containers": [{"image": "gw:1.0"}]}}}},
     {}, ["Service gateway", "readinessProbe or livenessProbe"]),
    ("restricted-pod-security", DEPLOYMENT, changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__securityContext": None}),
     {}, ["not 'restricted'", "allowPrivilegeEscalation", "runAsNonRoot", "seccompProfile", "drop ALL"]),
    ("restricted-pod-security", DEPLOYMENT,
     changed(GOOD_DEPLOYMENT, **{"spec__template__spec__hostNetwork": True,
                                 "spec__template__spec__volumes[0]": {"name": "models", "hostPath": {"path": "/models"}},
                                 f"{CONTAINER}__securityContext__privileged": True}),
     {}, ["sets hostNetwork", "volume 'models' is of type hostPath", "is privileged"]),
    ("no-plain-secrets", DEPLOYMENT,
     changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__env[2]": {"name": "HF_TOKEN", "value": "hf_abc"}}),
     {}, ["env HF_TOKEN", "plain text", "secretKeyRef"]),
    ("no-plain-secrets", DEPLOYMENT,
     changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__env[0]": {"name": "EXTRA", "value": "key=hf_" + "x" * 34}}),
     {}, ["env EXTRA", "Hugging Face token"]),
    ("no-plain-secrets", "kubernetes:core/v1:ConfigMap",
     {"metadata": {"name": "gateway", "namespace": "models"}, "data": {"apiKeys": "k1,k2", "logLevel": "info"}},
     {}, ["ConfigMap models/gateway", "data.apiKeys", "Secret"]),
]


@pytest.mark.parametrize(
    "policy_name,resource_type,props,config,words", VIOLATIONS, ids=[f"{c[0]}-{i}" for i, c in enumerate(VIOLATIONS)]
)
def test_each_violation_is_reported_with_a_clear_message(policy_name, resource_type, props, config, words):
    found = violations(policy_name, resource_type, props, config)
    assert len(found) == 1, found
    assert all(word in found[0] for word in words), found[0]


@pytest.mark.parametrize("key,secret", [
    ("HF_TOKEN", True), ("OPENAI_API_KEY", True), ("apiKeys", True), ("db.password", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("TOKENIZERS_PARALLELISM", False), ("MAX_TOKENS", False),
    ("HF_TOKEN_PATH", False), ("PASSWORD_FILE", False), ("KEY", False),
])
def test_secret_names_are_told_apart_from_lookalikes(key, secret):
    assert names_a_secret(key) is secret


def test_switches_and_numbers_under_secret_like_names_are_not_credentials():
    props = changed(GOOD_DEPLOYMENT, **{
        f"{CONTAINER}__env[0]": {"name": "ENABLE_SECRET_INFORMER_FILTERING_BY_CERT_UID", "value": "false"},
        f"{CONTAINER}__env[1]": {"name": "TOKEN_REFRESH_SECONDS", "value": "300"},
    })
    assert violations("no-plain-secrets", DEPLOYMENT, props) == []
    leaked = changed(GOOD_DEPLOYMENT, **{f"{CONTAINER}__env[0]": {"name": "DB_PASSWORD", "value": "s3cr3t-false"}})
    assert len(violations("no-plain-secrets", DEPLOYMENT, leaked)) == 1


def test_config_maps_without_credentials_pass():
    props = {"metadata": {"name": "config-network"}, "data": {"ingress-class": "kourier.ingress.networking.knative.dev",
                                                              "MAX_TOKENS": "4096"}}
    assert violations("no-plain-secrets", "kubernetes:core/v1:ConfigMap", props) == []


MODEL_CACHE = {"metadata": {"name": "model-cache", "namespace": "models"},
               "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "200Gi"}}}}


def test_a_model_cache_claim_must_be_protected():
    pvc = "kubernetes:core/v1:PersistentVolumeClaim"
    found = violations("protected-model-cache", pvc, MODEL_CACHE)
    assert len(found) == 1 and "PersistentVolumeClaim models/model-cache" in found[0] and "retain_on_delete" in found[0]
    assert violations("protected-model-cache", pvc, MODEL_CACHE, opts=PROTECTED) == []
    retained = changed(MODEL_CACHE, **{"metadata__annotations": {model_runner.RETAINED_ANNOTATION: "true"}})
    assert violations("protected-model-cache", pvc, retained) == []
    assert violations("protected-model-cache", pvc, changed(MODEL_CACHE, **{"metadata__name": "postgres-data"})) == []


HPA = {"metadata": {"name": "model-runner-chat", "namespace": "models"},
       "spec": {"minReplicas": 3, "maxReplicas": 6, "scaleTargetRef": {"kind": "Deployment", "name": "model-runner-chat"}}}
KNATIVE_GATEWAY = {
    "metadata": {"name": "gateway", "namespace": "models"},
    "spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "2"}},
                          "spec": {"containers": [{"image": "gw:1.0"}]}}},
}
PDB = "kubernetes:policy/v1:PodDisruptionBudget"


def test_replicas_count_from_the_deployment_an_hpa_or_knative_min_scale():
    config = policy_config(PROD_CONFIG, "min-replicas")
    single = changed(GOOD_DEPLOYMENT, spec__replicas=1)
    found = violations("min-replicas", [(DEPLOYMENT, single)], config=config)
    assert len(found) == 1 and "Deployment models/model-runner-chat can run 1 replica(s)" in found[0]
    assert violations("min-replicas", [(DEPLOYMENT, single), ("kubernetes:autoscaling/v2:HorizontalPodAutoscaler", HPA)],
                      config=config) == []
    scale_to_zero = changed(KNATIVE_GATEWAY, **{"spec__template__metadata__annotations": {}})
    assert "can run 0 replica(s)" in violations("min-replicas", [(KSERVICE, scale_to_zero)], config=config)[0]
    system = changed(single, metadata__namespace="knative-serving")
    assert violations("min-replicas", [(DEPLOYMENT, system)], config=config) == []


def test_replicated_workloads_need_a_budget_that_selects_their_pods():
    config = policy_config(PROD_CONFIG, "pod-disruption-budget")
    assert violations("pod-disruption-budget", [(DEPLOYMENT, GOOD_DEPLOYMENT), (PDB, GOOD_PDB)], config=config) == []
    for budget in (changed(GOOD_PDB, metadata__namespace="other"),
                   changed(GOOD_PDB, spec__selector={"matchLabels": {"app": "gateway"}}),
                   changed(GOOD_PDB, spec__selector={})):
        found = violations("pod-disruption-budget", [(DEPLOYMENT, GOOD_DEPLOYMENT), (PDB, budget)], config=config)
        assert len(found) == 1 and "no PodDisruptionBudget" in found[0], budget
    by_expression = changed(GOOD_PDB, spec__selector={"matchExpressions": [
        {"key": "serving.knative.dev/service", "operator": "In", "values": ["gateway"]}]})
    assert violations("pod-disruption-budget", [(KSERVICE, KNATIVE_GATEWAY), (PDB, by_expression)], config=config) == []


def test_prod_makes_every_policy_mandatory_and_dev_only_advises():
    dev = json.loads((ROOT / "policy/config/dev.json").read_text())
    assert {enforcement(PROD_CONFIG, p.name) for p in POLICIES} == {EnforcementLevel.MANDATORY}
    assert EnforcementLevel.MANDATORY not in {enforcement(dev, p.name) for p in POLICIES}


def test_policy_config_files_match_each_policys_config_schema():
    levels = {level.value for level in EnforcementLevel}
    for path in sorted((ROOT / "policy/config").glob("*.json")):
        for name, entry in json.loads(path.read_text()).items():
            if name == "all" or not isinstance(entry, dict):
                assert name == "all" or name in POLICY, f"{path.name}: no policy named {name!r}"
                assert entry in levels, f"{path.name}: {name}: {entry!r} is not one of {levels}"
                continue
            assert name in POLICY, f"{path.name}: no policy named {name!r}"
            schema = POLICY[name].config_schema
            jsonschema.validate(
                entry,
                {"type": "object", "additionalProperties": False,
                 "properties": {"enforcementLevel": {"enum": sorted(levels)}, **(schema.properties if schema else {})}},
            )


def test_the_pack_entry_point_registers_every_policy():
    # The CLI runs policy/__main__.py from policy/; PolicyPack itself would start a gRPC server and block.
    program = (
        "import runpy, pulumi_policy\n"
        "pulumi_policy.PolicyPack = lambda name, policies, **options: print(name, sorted(p.name for p in policies))\n"
        "runpy.run_path('__main__.py', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT / "policy", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"model-stack {sorted(POLICY)}"


@pytest.mark.parametrize("on_knative", [False, True], ids=["as-committed", "gateway-on-knative"])
def test_the_prod_stack_has_no_mandatory_violations(on_knative, pinned_knative_release):
    # With the gateway on Knative, Knative's and Kourier's own objects face the same policies (their images
    # pinned as in the upstream release, and mapped to the private registry).
    registry = PROD_CONFIG["allowed-image-registries"]["allowedRegistries"][0]
    knative = {
        "gateway.workload": "knative",
        "gateway.scaling.targetCpuUtilization": None,  # Knative ignores it; the config refuses it there
        "knative.domain": "models.example.com",
        "knative.manifestsDir": str(pinned_knative_release),
        'images.rewrite["opencsg-registry.cn-beijing.cr.aliyuncs.com"]': f"{registry}/mirror/knative",
    }
    evaluation = evaluate("prod", set=knative if on_knative else {})
    objects = [
        (type_token(obj["apiVersion"], obj["kind"]), obj, resource)
        for resource, obj in evaluation.kubernetes_objects()
    ]
    assert objects, "prod registers no Kubernetes objects, so the policies would pass vacuously"
    found = []
    for policy in POLICIES:
        if enforcement(PROD_CONFIG, policy.name) != EnforcementLevel.MANDATORY:
            continue
        config = policy_config(PROD_CONFIG, policy.name)
        report = lambda message, urn=None, name=policy.name: found.append(f"{name}: {message}")  # noqa: E731
        if isinstance(policy, ResourceValidationPolicy):
            for type_, obj, resource in objects:
                opts = PolicyResourceOptions(resource.protect, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
                policy.validate(ResourceValidationArgs(type_, unknown_checking_proxy(obj), resource.urn, resource.name, opts, None, config),
                                report)
        else:
            resources = [PolicyResource(type_, unknown_checking_proxy(obj), resource.urn, resource.name, NO_OPTIONS, None, None, [], {})
                         for type_, obj, resource in objects]
            policy.validate(StackValidationArgs(resources, config), report)
    assert found == []


def test_ci_previews_every_stack_with_its_own_policy_config():
    workflow = yaml.safe_load((ROOT / ".github/workflows/pulumi.yml").read_text())
    assert sorted(workflow["jobs"]["preview"]["strategy"]["matrix"]["stack"]) == STACKS
    assert sorted(path.stem for path in (ROOT / "policy/config").glob("*.json")) == STACKS
