"""`pulumi preview` of every stack file as users and CI run it: the `pulumi` CLI in the project directory, the Python
language host, every real plugin, and the policy pack loaded by `--policy-pack policy` (its own virtualenv, as the
workflow installs it). Then the workflow's pull-request preview run the way pulumi/actions runs it, producing the
diff its PR comment shows.

Where this machine forces a difference from a stack file, the test says so:
- prod's cluster is EKS, whose aws and eks plugins cannot be built here (.ci/toolchain.py): prod's own settings
  preview on the `existing` cluster provider against the lane's API server, with its images in the private
  registry;
- dev installs Knative from the release manifests in ../shared/knative (`knative.manifestsDir`), since GitHub's
  release downloads are out of reach.
"""

from __future__ import annotations

from pathlib import Path

from pulumi import automation as auto

from harness import stack_config
from schemas import KNATIVE_MANIFESTS
from apiserver import WITHOUT_NODES, config as apiserver_config

PRIVATE_REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
DIGEST = "@sha256:" + "2" * 64
SECRETS = {"hfToken": "hf_engine_lane", "gatewayApiKeys": "engine-lane-key"}


def policy_arguments(stack: str, pack: str = "policy") -> list[str]:
    """What the workflow passes: pulumi/actions' `policyPacks: policy` and `policyPackConfigs`."""
    return ["--policy-pack", pack, "--policy-pack-config", f"policy/config/{stack}.json"]


def prod_on_existing_cluster(kubeconfig: Path, chat_image: str) -> dict:
    """prod's own settings on the existing-cluster provider, with the images already in the private registry."""
    config = {key: value for key, value in stack_config("prod").items() if key != "images"}
    config["cluster"] = {"provider": "existing", "kubernetesVersion": "1.32",
                         "existing": {"kubeconfigPath": str(kubeconfig)}}
    # A namespace of its own: the lifecycle test leaves its retained model cache in `models`, on purpose.
    config["namespace"] = "prod-models"
    images = {"chat": chat_image, "embed": f"{PRIVATE_REGISTRY}/mirror/ghcr.io/ggml-org/llama.cpp:server-b9935{DIGEST}"}
    config["models"] = {name: {**model, "image": images[name], "cache": {**model["cache"], "storageClass": "standard"}}
                        for name, model in config["models"].items()}
    config["gateway"] = {**config["gateway"], "image": f"{PRIVATE_REGISTRY}/model-stack/model-gateway:0.1.0{DIGEST}"}
    return config


def test_dev_previews_with_its_policies(project):
    config = stack_config("dev")
    config["knative"] = {**config.get("knative", {}), "manifestsDir": str(KNATIVE_MANIFESTS)}
    stack = project().stack("dev", config)
    preview = stack.run("preview", "--diff", *policy_arguments("dev"))
    # Every layer is planned: the cluster, its registry, the gateway's build, Knative, the models.
    for planned in ("model-stack:index:KindCluster", "model-stack:index:LocalRegistry", "docker-build:index:Image",
                    "kubernetes:serving.knative.dev/v1:Service", "kubernetes:apps/v1:Deployment"):
        assert planned in preview.stdout, planned
    assert "mandatory" not in preview.stdout


def test_local_previews_with_its_policies(project):
    stack = project().stack("local", secrets={"hfToken": SECRETS["hfToken"]})
    preview = stack.run("preview", "--diff", *policy_arguments("local"))
    for planned in ("docker:index/container:Container", "docker-build:index:Image", "docker:index/volume:Volume"):
        assert planned in preview.stdout, planned


def test_prod_previews_with_its_mandatory_policies(control_plane, project):
    stack = project().stack("prod", prod_on_existing_cluster(
        control_plane.kubeconfig, f"{PRIVATE_REGISTRY}/mirror/vllm/vllm-openai:v0.11.0{DIGEST}"), secrets=SECRETS)
    assert stack.preview(*policy_arguments("prod")).get("create", 0) > 10


def test_a_mandatory_policy_stops_the_preview(control_plane, project):
    # Valid config (pinned by digest), but from a registry prod's policy does not allow.
    stack = project().stack("prod", prod_on_existing_cluster(
        control_plane.kubeconfig, f"docker.io/vllm/vllm-openai:v0.11.0{DIGEST}"), secrets=SECRETS)
    failed = stack.run("preview", *policy_arguments("prod"), check=False)
    assert failed.returncode != 0
    assert "allowed-image-registries" in failed.stdout and "docker.io/vllm/vllm-openai" in failed.stdout


def test_the_pull_request_preview_shows_the_diff_of_a_change(cluster, project):
    """.github/workflows/pulumi-stack.yml's `pulumi/actions@v6` step with `command: preview`, `diff: true`,
    `policyPacks: policy` and `policyPackConfigs: policy/config/<stack>.json`: the action selects the stack in the
    work directory and calls the Automation API's `preview` with those options, then posts its stdout as the PR
    comment. Run here the same way (the Automation API is the action's own tool), on a deployed stack whose config a
    pull request changes."""
    copy = project(WITHOUT_NODES)
    deployed = copy.stack("dev", {**apiserver_config(cluster.kubeconfig), "namespace": "pr-preview"})
    deployed.up()
    try:
        changed = deployed.config()
        changed["runner"] = {**changed["runner"], "loadBudgetSeconds": 900}
        deployed.write_config(changed)

        stack = auto.select_stack("dev", work_dir=str(copy.directory), opts=auto.LocalWorkspaceOptions(
            env_vars=copy.env, pulumi_home=copy.env["PULUMI_HOME"],
            pulumi_command=auto.PulumiCommand(root=copy.env["MODEL_STACK_TOOLCHAIN"])))
        preview = stack.preview(diff=True, policy_packs=["policy"], policy_pack_configs=["policy/config/dev.json"])
        comment = preview.stdout
        assert preview.change_summary.get("update", 0) >= 1 and "create" not in preview.change_summary
        # The comment names the workload that changes and the field with its old and new value.
        assert "kubernetes:apps/v1:Deployment: (update)" in comment
        assert "[urn=urn:pulumi:dev::model-stack::" in comment
        assert "failureThreshold" in comment, comment
        assert "Policies:" in comment or "model-stack-policy" in comment
    finally:
        deployed.destroy()
