"""Other projects use the components: a Python consumer under examples/ runs under mocks, and the plugin package
in plugin/ exposes a schema Pulumi can generate SDKs for other languages from."""

from __future__ import annotations

import json

import yaml

from harness import FAKE_SECRETS, ROOT, evaluate, evaluate_program
from model_stack_components.plugin import COMPONENTS, PACKAGE_NAME
from pulumi.provider.experimental.component import ComponentProvider

EXAMPLE = ROOT / "examples" / "consumer"


def test_the_example_consumer_deploys_a_model_runner_through_its_own_provider():
    evaluation = evaluate_program(EXAMPLE, "dev", {}, {"team-chat-model:kubeconfig": FAKE_SECRETS["kubeconfig"]})
    runner = evaluation.one("model-stack:index:ModelRunner", "chat-model")
    provider = evaluation.one("pulumi:providers:kubernetes", "shared-cluster")
    kubernetes = [r for r in evaluation.resources if r.custom and r.type.startswith("kubernetes:")]
    assert {r.provider.rsplit("::", 1)[0] for r in kubernetes} == {provider.urn}
    assert [r.name for r in kubernetes if r.parent == runner.urn or r.parent.startswith(runner.urn)]
    deployment = evaluation.one("kubernetes:apps/v1:Deployment", "chat-model")
    assert deployment.inputs["metadata"]["namespace"] == "team-chat"
    assert evaluation.outputs["modelUrl"] == "http://chat-model.team-chat.svc.cluster.local:11434/v1"


def schema() -> dict:
    return json.loads(ComponentProvider(COMPONENTS, PACKAGE_NAME, None, "0.0.0").schema)


def test_the_plugin_manifest_runs_the_component_host():
    manifest = yaml.safe_load((ROOT / "plugin" / "PulumiPlugin.yaml").read_text())
    assert manifest["runtime"]["name"] == "python"
    main = (ROOT / "plugin" / "__main__.py").read_text()
    assert "component_provider_host(COMPONENTS, PACKAGE_NAME)" in main


def test_the_inferred_schema_has_every_component_under_the_token_the_stack_registers():
    resources = schema()["resources"]
    assert set(resources) == {f"{PACKAGE_NAME}:index:{component.__name__}" for component in COMPONENTS}
    registered = {resource.type for resource in evaluate("dev").resources if resource.type.startswith(f"{PACKAGE_NAME}:")}
    assert {"model-stack:index:ModelRunner", "model-stack:index:KindCluster"} <= registered <= set(resources) | {
        "model-stack:index:EksCluster"
    }


def test_the_inferred_schema_documents_inputs_and_outputs():
    package = schema()
    runner = package["resources"]["model-stack:index:ModelRunner"]
    assert set(runner["requiredInputs"]) == {
        "namespace", "engine", "model", "resources", "cache", "scaling", "loadBudgetSeconds", "probePeriodSeconds"
    }
    assert runner["properties"]["url"]["type"] == "string"
    assert runner["inputProperties"]["cache"]["$ref"] == "#/types/model-stack:index:CacheArgs"
    undocumented = [
        f"{token}.{name}"
        for token, resource in package["resources"].items()
        for name, prop in [*resource["inputProperties"].items(), *resource["properties"].items()]
        if not prop.get("description")
    ] + [
        f"{token}.{name}"
        for token, type_ in package["types"].items()
        for name, prop in type_["properties"].items()
        if not prop.get("description")
    ]
    assert undocumented == []
