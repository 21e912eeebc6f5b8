"""The harness and the schema checks themselves: they must catch what they exist to catch."""

import pytest

from harness import Secret, _decode, set_path
from schemas import crd_schemas, validation_errors


def test_set_path_follows_pulumi_config_path_syntax():
    config = {"modelRunner": {"env": {"A": "1"}}}
    set_path(config, "modelRunner.resources.limits.memory", "8Gi")
    set_path(config, 'modelRunner.env["HF_HUB.OFFLINE"]', "1")
    set_path(config, "registry.mirrors[0].from", "docker.io/vllm")
    set_path(config, "modelRunner.env.A", None)
    assert config == {
        "modelRunner": {"env": {"HF_HUB.OFFLINE": "1"}, "resources": {"limits": {"memory": "8Gi"}}},
        "registry": {"mirrors": [{"from": "docker.io/vllm"}]},
    }


def test_secret_values_keep_their_marker():
    wire = {"data": {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "value": {"k": "v"}}}
    assert _decode(wire) == {"data": Secret({"k": "v"})}


@pytest.mark.parametrize(
    "obj",
    [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
         "spec": {"replicas": "two", "selector": {}, "template": {"spec": {"containers": [{"name": "c"}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": 80, "targetPorts": 1}]}},
        {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "x"},
         "spec": {"template": {"spec": {"containers": [{"image": "x", "readinessProbe": {"httpGet": {"pth": "/"}}}]}}}},
        {"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "x"}},
    ],
    ids=["wrong-type", "typo-builtin", "typo-knative", "unknown-kind"],
)
def test_schema_validation_rejects_what_the_api_server_would_reject_or_prune(obj):
    assert validation_errors(obj, "1.32") != []


def test_crds_applied_by_the_stack_validate_their_own_resources():
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "spec": {"group": "example.com", "names": {"kind": "Widget"}, "versions": [{
            "name": "v1", "served": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]},
    }
    schemas = crd_schemas([crd])
    assert validation_errors({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"size": 3}}, "1.32", schemas) == []
    assert validation_errors({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"sise": 3}}, "1.32", schemas)
