"""The Kubernetes composition on the `existing` cluster provider, against a real API server: up, read back, up
again with no changes, change one setting, destroy.

Run as users run it: the `pulumi` CLI in the project directory and the Python language host (`project_stack`).
No node exists, so no pod ever runs: the program is the project's, wrapped by tests/engine/programs/without_nodes,
whose stack transform skips the awaits that need a running pod and lets Knative's webhooks fail open, and nothing
else.
Knative Services need the webhook's defaulting to be valid at all, so both workloads are Deployments here and
Knative Services stay under the mocks (tests/test_knative.py).
"""

from __future__ import annotations

import json
import subprocess

from pulumi import automation as auto

from apiserver import WITHOUT_NODES, config, kubectl

def registered_objects(stack: auto.Stack) -> list[dict]:
    """The Kubernetes objects in the stack's state, as the provider sent them."""
    resources = stack.export_stack().deployment["resources"]
    return [resource["inputs"] for resource in resources
            if resource["type"].startswith("kubernetes:") and not resource["type"].startswith("kubernetes:yaml")
            and "kind" in resource.get("inputs", {})]


def kubectl_items(control_plane, objects: list[dict]) -> list[dict]:
    """The live objects for `objects`, in the same order (kubectl reads their kinds, names and namespaces)."""
    result = subprocess.run(["kubectl", f"--kubeconfig={control_plane.kubeconfig}", "get", "-f", "-", "-o", "json"],
                            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    return found["items"] if found.get("kind") == "List" else [found]


def kind_and_name(obj: dict) -> str:
    return f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def assert_contains(live, meant, where: str) -> None:
    """Every field of `meant` is in `live` with the same value; lists item by item."""
    if isinstance(meant, dict):
        assert isinstance(live, dict), f"{where}: {live!r} is not a map"
        for key, value in meant.items():
            assert key in live, f"{where}: {key} is missing"
            assert_contains(live[key], value, f"{where}.{key}")
    elif isinstance(meant, list):
        assert isinstance(live, list) and len(live) == len(meant), f"{where}: {live!r} != {meant!r}"
        for index, (found, value) in enumerate(zip(live, meant)):
            assert_contains(found, value, f"{where}[{index}]")
    else:
        assert live == meant, f"{where}: {live!r} != {meant!r}"


def operations(result: auto.UpResult | auto.PreviewResult) -> dict:
    summary = result.summary.resource_changes if isinstance(result, auto.UpResult) else result.change_summary
    return {op: count for op, count in (summary or {}).items() if op != "same"}


def test_kubernetes_stack_lifecycle(cluster, project_stack):
    stack = project_stack("apiserver", config(cluster.kubeconfig), program=WITHOUT_NODES)

    up = stack.up(on_output=print)
    assert up.summary.result == "succeeded"

    # Read back what the program meant: every object the stack registered is in the API server with every field
    # the program set (the server may add defaults, but may not drop or change one).
    meant = registered_objects(stack)
    assert len(meant) > 70  # Knative and Kourier included
    live = kubectl_items(cluster, meant)
    for obj, found in zip(meant, live):
        assert_contains(found, {key: value for key, value in obj.items() if key != "metadata"}, kind_and_name(obj))
        assert_contains(found["metadata"], {key: obj["metadata"][key] for key in ("name", "labels", "annotations")
                                            if key in obj["metadata"]}, kind_and_name(obj))
    deployment = kubectl(cluster, "-n", "models", "get", "deployment", "model-runner")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 300
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    claim = kubectl(cluster, "-n", "models", "get", "pvc", "model-runner-cache")
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert kubectl(cluster, "get", "crd", "services.serving.knative.dev")["status"]["conditions"]
    autoscaler = kubectl(cluster, "-n", "knative-serving", "get", "configmap", "config-autoscaler")
    assert autoscaler["data"]["stable-window"] == "120s"
    assert kubectl(cluster, "-n", "kourier-system", "get", "deployment", "3scale-kourier-gateway")

    # Up again with no changes: what the API server defaulted must not show as a diff.
    preview = stack.preview(expect_no_changes=True, diff=True)
    assert operations(preview) == {}

    # One runner setting and one Knative setting change: updates in place, nothing replaced.
    autoscaler_uid = autoscaler["metadata"]["uid"]
    stack.set_config("model-stack:runner.loadBudgetSeconds", auto.ConfigValue("600"), path=True)
    stack.set_config("model-stack:knative.stableWindowSeconds", auto.ConfigValue("90"), path=True)
    change = stack.up(on_output=print)
    changed = operations(change)
    assert "replace" not in changed and "create" not in changed and "delete" not in changed, changed
    assert changed.get("update", 0) >= 2
    autoscaler = kubectl(cluster, "-n", "knative-serving", "get", "configmap", "config-autoscaler")
    assert autoscaler["data"]["stable-window"] == "90s"
    assert autoscaler["metadata"]["uid"] == autoscaler_uid

    # Destroy: everything goes but the protected model cache and its claim's data.
    claim_uid = claim["metadata"]["uid"]
    stack.destroy(on_output=print)
    assert kubectl(cluster, "-n", "models", "get", "pvc", "model-runner-cache")["metadata"]["uid"] == claim_uid
    remaining = kubectl(cluster, "-n", "models", "get", "deployments,services,configmaps,secrets")["items"]
    # The controller manager puts its CA bundle in every namespace; it is not the stack's.
    assert {item["metadata"]["name"] for item in remaining} <= {"kube-root-ca.crt"}

    # Up again: server-side apply adopts the retained namespace and claim, so the models are where they were.
    stack.up(on_output=print)
    assert kubectl(cluster, "-n", "models", "get", "pvc", "model-runner-cache")["metadata"]["uid"] == claim_uid
    stack.destroy(on_output=print)


def test_several_models_behind_one_gateway(cluster, project_stack):
    """Two models, each its own engine workload, cache and policy, and the gateway routing to both: what the API
    server holds after `up`, and a clean destroy (no cache is retained)."""
    settings = config(cluster.kubeconfig)
    engine = {key: value for key, value in settings.pop("runner").items() if key != "model"}
    engine["cache"] = {**engine["cache"], "protect": False}
    settings["namespace"] = "several-models"
    settings["models"] = {"chat": {**engine, "model": "engine-lane/tiny-model/tiny.gguf"},
                          "small": {**engine, "model": "engine-lane/tiny-model/tinier.gguf", "allowedNamespaces": ["batch"]}}
    stack = project_stack("several-models", settings, program=WITHOUT_NODES)

    assert stack.up(on_output=print).summary.result == "succeeded"

    def get(kind: str, name: str) -> dict:
        return kubectl(cluster, "-n", "several-models", "get", kind, name)

    gateway = get("deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    routes = json.loads(next(item["value"] for item in gateway["env"] if item["name"] == "GATEWAY_MODELS"))
    assert routes == {
        "engine-lane/tiny-model/tiny.gguf": "http://model-runner-chat.several-models.svc.cluster.local:8080/v1",
        "engine-lane/tiny-model/tinier.gguf": "http://model-runner-small.several-models.svc.cluster.local:8080/v1",
    }
    for name, namespaces in (("chat", []), ("small", ["batch"])):
        workload = f"model-runner-{name}"
        assert get("service", workload)["spec"]["ports"][0]["port"] == 8080
        assert get("pvc", f"{workload}-cache")["spec"]["resources"]["requests"]["storage"] == "1Gi"
        (rule,) = get("networkpolicy", workload)["spec"]["ingress"]
        assert [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for peer in rule["from"] if "namespaceSelector" in peer] == namespaces
    egress = get("networkpolicy", "gateway")["spec"]["egress"]
    assert [rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for rule in egress[1:]] == [
        "model-runner-chat", "model-runner-small"]

    stack.destroy(on_output=print)
    remaining = kubectl(cluster, "get", "namespaces")["items"]
    assert "several-models" not in {item["metadata"]["name"] for item in remaining}
