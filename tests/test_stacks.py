"""Every Pulumi.<stack>.yaml in the repo, evaluated under mocks: it runs, what it emits is valid, and a second
evaluation registers exactly the same thing (so `pulumi preview` after `pulumi up` shows no changes)."""

import pytest

from harness import STACKS, diffed_inputs, evaluate, stack_config
from schemas import crd_schemas, validation_errors


@pytest.fixture(scope="module", params=STACKS)
def evaluation(request):
    return evaluate(request.param)


def test_the_repo_has_a_dev_and_a_prod_stack():
    assert {"dev", "prod"} <= set(STACKS)


def test_every_kubernetes_object_validates_strictly(evaluation):
    version = stack_config(evaluation.stack).get("cluster", {}).get("kubernetesVersion", "1.32")
    objects = list(evaluation.kubernetes_objects())
    stack_crds = crd_schemas(obj for _, obj in objects)
    problems = {
        f"{resource.type} {resource.name} -> {obj['kind']} {obj.get('metadata', {}).get('name')}": errors
        for resource, obj in objects
        if (errors := validation_errors(obj, version, stack_crds))
    }
    assert problems == {}


def test_every_kubernetes_resource_uses_an_explicit_provider(evaluation):
    implicit = [
        resource.name
        for resource in evaluation.resources
        if resource.custom and resource.type.startswith("kubernetes:") and not resource.provider.startswith("urn:")
    ]
    assert implicit == []


def _registered(evaluation):
    # Resources whose inputs resolve concurrently register in no fixed order, and the engine does not care.
    return sorted((r.urn, diffed_inputs(r), sorted(r.dependencies)) for r in evaluation.resources)


def test_a_second_evaluation_registers_identical_inputs(evaluation):
    again = evaluate(evaluation.stack)
    assert _registered(again) == _registered(evaluation)
    assert again.outputs == evaluation.outputs


def test_a_preview_registers_what_an_update_would(evaluation):
    # CI runs `pulumi preview --diff` on pull requests: outputs are unknown there (no kubeconfig, no digests).
    preview = evaluate(evaluation.stack, preview=True)
    assert sorted((r.type, r.name) for r in preview.resources) == sorted((r.type, r.name) for r in evaluation.resources)
