"""The cluster layer: the kind cluster and its local registry, existing clusters, EKS, and the checks in front."""

import importlib
import json
import shutil
import subprocess
import sys
from unittest import mock

import pytest
import yaml

from harness import FAKE_SECRETS, ROOT, Secret, assert_rejected, evaluate, evaluate_failure
from stacks.cluster import ClusterPrerequisiteError, kind_release_for_every_node_image
from stacks.config import ConfigError
from stacks.config.cluster import INSTANCE_TYPES, KIND_NODE_IMAGES, NODE_DAEMONSET_MILLICORES

COMMAND = "command:local:Command"
PROVIDER = "pulumi:providers:kubernetes"

# kind.x-k8s.io/v1alpha4 fields, from https://kind.sigs.k8s.io/docs/user/configuration/ (and the Go types in
# sigs.k8s.io/kind/pkg/apis/config/v1alpha4/types.go): kind ignores nothing silently, it rejects unknown fields.
KIND_CLUSTER_FIELDS = {
    "kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig", "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902", "containerdConfigPatches", "containerdConfigPatchesJSON6902",
}
KIND_NODE_FIELDS = {
    "role", "image", "labels", "extraMounts", "extraPortMappings", "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902",
}
KIND_PORT_MAPPING_FIELDS = {"containerPort", "hostPort", "listenAddress", "protocol"}


@pytest.fixture(scope="module")
def dev():
    return evaluate("dev")


@pytest.fixture(scope="module")
def prod():
    return evaluate("prod")


def kind_config(evaluation):
    return yaml.safe_load(evaluation.one(COMMAND, "kind-cluster").inputs["stdin"])


# --- kind ----------------------------------------------------------------------------------------------------


def test_kind_config_uses_only_documented_v1alpha4_fields(dev):
    config = kind_config(dev)
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert set(config) <= KIND_CLUSTER_FIELDS
    for node in config["nodes"]:
        assert set(node) <= KIND_NODE_FIELDS
        assert node["role"] in {"control-plane", "worker"}
        for mapping in node.get("extraPortMappings", []):
            assert set(mapping) <= KIND_PORT_MAPPING_FIELDS
            assert mapping["protocol"] in {"TCP", "UDP", "SCTP"}


@pytest.mark.parametrize("version", sorted(KIND_NODE_IMAGES))
def test_every_node_runs_the_digest_pinned_image_of_the_configured_minor(version):
    config = kind_config(evaluate("dev", set={"cluster.kubernetesVersion": version, "cluster.kind.workers": 3}))
    assert [node["role"] for node in config["nodes"]] == ["control-plane", "worker", "worker", "worker"]
    images = {node["image"] for node in config["nodes"]}
    assert len(images) == 1
    (image,) = images
    assert image.startswith(f"kindest/node:v{version}.") and "@sha256:" in image and len(image.split("@sha256:")[1]) == 64


def test_kourier_node_ports_are_mapped_to_loopback_host_ports():
    evaluation = evaluate("dev", set={"cluster.kind.httpHostPort": 8080, "cluster.kind.httpsHostPort": 8443})
    control_plane = kind_config(evaluation)["nodes"][0]
    assert control_plane["role"] == "control-plane"
    assert control_plane["extraPortMappings"] == [
        {"containerPort": 31080, "hostPort": 8080, "listenAddress": "127.0.0.1", "protocol": "TCP"},
        {"containerPort": 31443, "hostPort": 8443, "listenAddress": "127.0.0.1", "protocol": "TCP"},
    ]


def test_containerd_reads_registry_hosts_from_certs_d(dev):
    (patch,) = kind_config(dev)["containerdConfigPatches"]
    assert patch.splitlines() == ['[plugins."io.containerd.grpc.v1.cri".registry]', '  config_path = "/etc/containerd/certs.d"']


def test_cluster_command_creates_idempotently_and_deletes_the_cluster(dev):
    cluster = dev.one(COMMAND, "kind-cluster")
    create = cluster.inputs["create"]
    assert cluster.inputs["environment"] == {"KIND_CLUSTER": "model-stack"}
    assert 'kind get clusters | grep -qx "$KIND_CLUSTER"' in create
    assert 'kind create cluster --name "$KIND_CLUSTER" --config -' in create
    assert create.rstrip().endswith('kind get kubeconfig --name "$KIND_CLUSTER"')
    assert cluster.inputs["delete"] == 'kind delete cluster --name "$KIND_CLUSTER"'
    # A changed config re-creates the cluster, deleting the old one (same name) first.
    assert {"stdin", "environment"} <= set(cluster.replace_on_changes) and cluster.delete_before_replace


FAKE_KIND = """#!/bin/sh
case "$1 $2" in
  "get clusters") printf '%s\\n' $EXISTING_CLUSTERS ;;
  "get nodes") printf '%s\\n' $EXISTING_NODES ;;
  "get kubeconfig") echo "kubeconfig of $4" ;;
  "create cluster") cat > "$WORK/created" ;;
esac
"""
FAKE_DOCKER = """#!/bin/sh
echo "$EXISTING_IMAGE"
"""


def run_create(dev, tmp_path, clusters: str, nodes: str = "", image: str = "") -> subprocess.CompletedProcess:
    """The cluster command's create script against fake `kind` and `docker` CLIs describing what already runs."""
    for tool, script in (("kind", FAKE_KIND), ("docker", FAKE_DOCKER)):
        (tmp_path / tool).write_text(script)
        (tmp_path / tool).chmod(0o755)
    cluster = dev.one(COMMAND, "kind-cluster")
    env = {**cluster.inputs["environment"], "PATH": f"{tmp_path}:/usr/bin:/bin", "WORK": str(tmp_path),
           "EXISTING_CLUSTERS": clusters, "EXISTING_NODES": nodes, "EXISTING_IMAGE": image}
    return subprocess.run(["sh", "-c", cluster.inputs["create"]], input=cluster.inputs["stdin"], env=env,
                          capture_output=True, text=True)


DEV_NODES = "model-stack-control-plane model-stack-worker model-stack-worker2"


def test_a_missing_cluster_is_created_from_the_config(dev, tmp_path):
    result = run_create(dev, tmp_path, clusters="other")
    assert result.returncode == 0 and result.stdout == "kubeconfig of model-stack\n"
    assert (tmp_path / "created").read_text().strip() == dev.one(COMMAND, "kind-cluster").inputs["stdin"].strip()


def test_an_existing_cluster_with_the_configured_nodes_is_adopted(dev, tmp_path):
    # State lost (or the cluster made by hand): the same nodes on the same image are this cluster.
    result = run_create(dev, tmp_path, clusters="model-stack", nodes=DEV_NODES, image=KIND_NODE_IMAGES["1.32"].image)
    assert result.returncode == 0 and result.stdout == "kubeconfig of model-stack\n"
    assert "adopting it" in result.stderr and not (tmp_path / "created").exists()


@pytest.mark.parametrize("nodes,image", [
    (DEV_NODES, KIND_NODE_IMAGES["1.31"].image),
    ("model-stack-control-plane", KIND_NODE_IMAGES["1.32"].image),
], ids=["other-node-image", "other-node-count"])
def test_another_cluster_under_the_name_stops_with_what_to_do(dev, tmp_path, nodes, image):
    result = run_create(dev, tmp_path, clusters="model-stack", nodes=nodes, image=image)
    assert result.returncode != 0 and result.stdout == "" and not (tmp_path / "created").exists()
    assert "kind delete cluster --name model-stack" in result.stderr
    assert f"Its nodes run:\n  {image}" in result.stderr


def test_kubeconfig_is_a_secret_and_never_logged(dev):
    cluster = dev.one(COMMAND, "kind-cluster")
    assert cluster.additional_secret_outputs == ["stdout"]
    assert cluster.inputs["logging"] == "stderr"
    provider = dev.one(PROVIDER, "kind")
    assert provider.inputs["kubeconfig"] == Secret("# stdout of kind-cluster\n")
    assert provider.parent.endswith("model-stack:index:KindCluster::kind")


def test_provider_identity_is_the_cluster_not_its_kubeconfig(dev):
    # A re-issued certificate or a moved API server port changes the kubeconfig; only a new cluster may replace
    # the provider (and with it every object in the cluster).
    assert dev.one(PROVIDER, "kind").inputs["clusterIdentifier"] == "kind-cluster-id"


@pytest.mark.parametrize("stack,provider", [("dev", "kind"), ("prod", "eks")])
def test_settings_and_credentials_change_in_place(stack, provider):
    """Fixed-name ConfigMaps and Secrets (Knative's config-*, the gateway's keys) are updated, not deleted and
    re-created, when their data changes (the engine lane shows it against a real API server)."""
    inputs = evaluate(stack).one(PROVIDER, provider).inputs
    # Provider settings reach the engine as strings.
    assert inputs["enableConfigMapMutable"] == inputs["enableSecretMutable"] == "true"


def test_the_dev_preview_needs_no_docker_daemon(dev):
    provider = dev.one("pulumi:providers:docker", "docker")
    assert provider.inputs["disableDockerDaemonCheck"] == "true"
    registry_children = [r for r in dev.resources if r.type.startswith("docker:") and "registry" in r.name]
    assert registry_children and all(r.provider.startswith(provider.urn) for r in registry_children)


def test_local_registry_is_pinned_published_on_loopback_and_keeps_its_data():
    evaluation = evaluate("dev", set={"cluster.kind.registryPort": 5055})
    image = evaluation.one("docker:index/remoteImage:RemoteImage", "registry-image").inputs["name"]
    assert image.startswith("registry:2.") and "@sha256:" in image
    container = evaluation.one("docker:index/container:Container", "registry-container").inputs
    assert container["name"] == "kind-registry"
    assert container["restart"] == "unless-stopped"
    assert container["ports"] == [{"internal": 5000, "external": 5055, "ip": "127.0.0.1"}]
    volume = evaluation.one("docker:index/volume:Volume", "registry-data")
    assert container["volumes"] == [{"volumeName": volume.inputs["name"], "containerPath": "/var/lib/registry"}]
    assert volume.retain_on_delete


def test_a_second_dev_stack_on_the_machine_names_its_own_registry_container():
    evaluation = evaluate("dev", set={"cluster.kind.name": "second", "cluster.kind.registryName": "second-registry"})
    assert evaluation.one("docker:index/container:Container", "registry-container").inputs["name"] == "second-registry"
    assert evaluation.one("docker:index/volume:Volume", "registry-data").inputs["name"] == "second-registry-data"
    hosts = evaluation.one(COMMAND, "kind-registry-hosts").inputs["environment"]
    assert hosts["REGISTRY_ENDPOINT"] == "http://second-registry:5000"


@pytest.mark.parametrize("name, text", [
    ("Kind_Registry", "a DNS label"),
    ("model-stack-worker2", "the name of one of this cluster's node containers"),
    ("model-stack-control-plane", "the name of one of this cluster's node containers"),
])
def test_a_registry_name_that_docker_or_kind_cannot_take_is_refused(name, text):
    assert_rejected("dev", {"cluster.kind.registryName": name}, "cluster.kind.registryName", text, given=name)


def test_nodes_pull_the_push_host_from_the_registry_container():
    evaluation = evaluate("dev", set={"cluster.kind.registryPort": 5055})
    hosts = evaluation.one(COMMAND, "kind-registry-hosts")
    assert hosts.inputs["environment"] == {
        "KIND_CLUSTER": "model-stack", "REGISTRY_HOST": "localhost:5055", "REGISTRY_ENDPOINT": "http://kind-registry:5000",
    }
    assert 'kind get nodes --name "$KIND_CLUSTER"' in hosts.inputs["create"]
    assert '"/etc/containerd/certs.d/$REGISTRY_HOST/hosts.toml"' in hosts.inputs["create"]
    assert """printf '[host."%s"]\\n' "$REGISTRY_ENDPOINT\"""" in hosts.inputs["create"]
    cluster = evaluation.one(COMMAND, "kind-cluster")
    # Written again on every new cluster: the file lives in the node containers.
    assert hosts.inputs["triggers"] == ["kind-cluster-id"] and cluster.urn in hosts.dependencies

    network = evaluation.one(COMMAND, "kind-registry-network")
    assert network.inputs["environment"] == {"REGISTRY_CONTAINER": "registry-container-id"}
    # Connecting twice fails, so the script connects only a container that is not on the network yet.
    assert "{{json .NetworkSettings.Networks.kind}}" in network.inputs["create"]
    assert 'docker network connect kind "$REGISTRY_CONTAINER"' in network.inputs["create"]

    hosting = evaluation.one("kubernetes:core/v1:ConfigMap", "kind-local-registry-hosting")
    assert hosting.inputs["metadata"] == {"name": "local-registry-hosting", "namespace": "kube-public"}
    assert yaml.safe_load(hosting.inputs["data"]["localRegistryHosting.v1"])["host"] == "localhost:5055"
    assert hosting.provider.startswith(evaluation.one(PROVIDER, "kind").urn)


# --- readiness -----------------------------------------------------------------------------------------------

CLUSTER_RESOURCE = {"dev": (COMMAND, "kind-cluster"), "prod": ("eks:index:Cluster", "eks")}


@pytest.mark.parametrize("stack", sorted(CLUSTER_RESOURCE))
def test_every_kubernetes_resource_waits_for_the_cluster(stack):
    evaluation = evaluate(stack)
    cluster = evaluation.one(*CLUSTER_RESOURCE[stack])
    kubernetes = [r for r in evaluation.resources if r.type.startswith("kubernetes:")]
    assert kubernetes
    assert [r.name for r in kubernetes if cluster.urn not in r.dependencies] == []


def test_workloads_wait_for_the_registry_wiring(dev):
    wiring = {dev.one(COMMAND, name).urn for name in ("kind-registry-hosts", "kind-registry-network")}
    outside = [r for r in dev.resources if r.type.startswith("kubernetes:") and "KindCluster" not in r.parent]
    assert outside and all(wiring <= set(r.dependencies) for r in outside)


# --- prerequisites -------------------------------------------------------------------------------------------


def _which_without(missing):
    return lambda tool: None if tool in missing else f"/usr/bin/{tool}"


def test_a_missing_tool_stops_the_update_before_any_resource():
    with mock.patch.object(shutil, "which", _which_without({"kind"})):
        error, evaluation = evaluate_failure("dev", check_host=True)
    assert isinstance(error, ClusterPrerequisiteError)
    assert "`kind` is not on PATH; install it: https://kind.sigs.k8s.io/docs/user/quick-start/#installation" in str(error)
    assert "docker" not in str(error)
    assert evaluation.resources == []


def test_a_kind_older_than_the_node_image_is_rejected():
    with mock.patch.object(shutil, "which", _which_without(set())), mock.patch(
        "stacks.cluster._kind_version", return_value=(0, 26, 0)
    ):
        error, evaluation = evaluate_failure("dev", check_host=True)
    assert "kind 0.26.0 is older than v0.30.0" in str(error)
    assert evaluation.resources == []


def test_a_current_kind_passes():
    with mock.patch.object(shutil, "which", _which_without(set())), mock.patch(
        "stacks.cluster._kind_version", return_value=(0, 30, 1)
    ):
        assert evaluate("dev", check_host=True).resources


def _kind_step(workflow: dict) -> str:
    (step,) = [step for step in workflow["jobs"]["pulumi"]["steps"] if step.get("name", "").startswith("kind CLI")]
    return step["run"]


@pytest.mark.parametrize("installed,downloaded", [
    ("kind v0.29.0 go1.24.2 linux/amd64", True),  # what a runner image may ship
    (None, True),
    ("kind v0.30.0 go1.24.6 linux/amd64", False),
])
def test_ci_installs_the_kind_release_the_pinned_node_images_need(tmp_path, installed, downloaded):
    release = kind_release_for_every_node_image()
    assert release == "0.30.0"  # the newest release in KIND_NODE_IMAGES
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/curl-args\ntouch "$2"\n')
    if installed is not None:
        (bin_dir / "kind").write_text(f"#!/bin/sh\necho '{installed}'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    workflow = yaml.safe_load((ROOT / ".github/workflows/pulumi-stack.yml").read_text())
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "RUNNER_TEMP": str(tmp_path), "GITHUB_PATH": str(tmp_path / "path")}
    subprocess.run(["bash", "-eo", "pipefail", "-c", _kind_step(workflow)], cwd=ROOT, env=env, check=True)
    assert (tmp_path / "curl-args").exists() == downloaded
    if downloaded:
        assert f"https://kind.sigs.k8s.io/dl/v{release}/kind-linux-amd64" in (tmp_path / "curl-args").read_text()
    assert f"sigs.k8s.io/kind@v{release}" in (ROOT / "README.md").read_text()


def test_preview_needs_no_kind_on_the_machine():
    with mock.patch.object(shutil, "which", _which_without({"kind", "docker"})):
        assert evaluate("dev", preview=True, check_host=True).resources


# --- existing clusters ---------------------------------------------------------------------------------------

EXISTING = {"cluster.provider": "existing", "cluster.eks": None}
NO_KUBECONFIG = {key: value for key, value in FAKE_SECRETS.items() if key != "kubeconfig"}


def test_existing_cluster_from_the_kubeconfig_secret():
    evaluation = evaluate("prod", set={**EXISTING, "cluster.existing.context": "prod-admin"})
    provider = evaluation.one(PROVIDER, "cluster")
    assert provider.inputs["kubeconfig"] == Secret(FAKE_SECRETS["kubeconfig"])
    assert provider.inputs["context"] == "prod-admin"
    assert provider.inputs["clusterIdentifier"] == "existing/prod-admin"
    assert not evaluation.of_type("eks:index:Cluster")


def test_existing_cluster_from_a_kubeconfig_file(tmp_path):
    path = tmp_path / "config"
    path.write_text(FAKE_SECRETS["kubeconfig"])
    evaluation = evaluate("prod", set={**EXISTING, "cluster.existing.kubeconfigPath": str(path)}, secrets=NO_KUBECONFIG)
    # The provider gets the path, so its state holds no credentials.
    assert evaluation.one(PROVIDER, "cluster").inputs["kubeconfig"] == str(path)


def test_existing_cluster_from_another_stacks_output():
    evaluation = evaluate(
        "prod", set={**EXISTING, "cluster.existing.stackReference": "acme/platform/prod"}, secrets=NO_KUBECONFIG
    )
    assert evaluation.one(PROVIDER, "cluster").inputs["kubeconfig"] == Secret(FAKE_SECRETS["kubeconfig"])


@pytest.mark.parametrize(
    "overrides,secrets,key",
    [
        ({}, NO_KUBECONFIG, "cluster.existing"),
        # Any file will do as the second source: the kubeconfig secret is the one too many (the file is read and
        # must be a kubeconfig, so the rule is seen alone), and the second source is named by its key.
        ({"cluster.existing.kubeconfigPath": str(ROOT / "tests/fixtures/kubeconfig.yaml")}, FAKE_SECRETS,
         "cluster.existing.kubeconfigPath"),
    ],
    ids=["none", "two"],
)
def test_existing_cluster_needs_exactly_one_kubeconfig_source(overrides, secrets, key):
    error, evaluation = evaluate_failure("prod", set={**EXISTING, **overrides}, secrets=secrets)
    assert isinstance(error, ConfigError)
    (problem,) = error.problems
    assert problem.key == key
    assert "kubeconfigPath" in problem.message and "stackReference" in problem.message
    assert evaluation.resources == []


def test_a_missing_kubeconfig_file_names_the_key(tmp_path):
    missing = tmp_path / "nope"
    error, evaluation = evaluate_failure(
        "prod", set={**EXISTING, "cluster.existing.kubeconfigPath": str(missing)}, secrets=NO_KUBECONFIG
    )
    assert isinstance(error, ConfigError)
    assert [problem.key for problem in error.problems] == ["cluster.existing.kubeconfigPath"]
    assert "cannot be read" in str(error) and str(missing) in str(error)
    assert evaluation.resources == []


# --- config rules --------------------------------------------------------------------------------------------


CONFIG_RULES = [
    ("prod", {"cluster.provider": "kind", "cluster.eks": None}, "cluster.provider", "production stacks need a real cluster"),
    ("dev", {"cluster.kubernetesVersion": "1.29"}, "cluster.kubernetesVersion", "pinned for 1.34, 1.33"),
    ("prod", {"cluster.kubernetesVersion": "1.29"}, "cluster.kubernetesVersion", "must be 1.30 or later"),
    ("dev", {"cluster.existing.context": "x"}, "cluster.existing.context", "applies only when provider is existing"),
    ("prod", {"cluster.kind.workers": 3}, "cluster.kind.workers", "applies only when provider is kind"),
    ("prod", {"cluster.eks": None}, "cluster.eks", "required when provider is eks"),
    ("prod", {"cluster.eks.gpuNodes.desiredSize": 9}, "cluster.eks.gpuNodes.desiredSize", "between minSize and maxSize"),
    ("prod", {"cluster.eks.privateSubnetIds": ["subnet-0a1b2c3d4e5f60001"]}, "cluster.eks.privateSubnetIds", "at least 2"),
    ("prod", {"cluster.eks.systemInstanceType": "m6i.huge"}, "cluster.eks.systemInstanceType", "'m6i.large'"),
    # The GPU group's AMI and device plugin need NVIDIA GPUs; the system group's is no GPU AMI.
    ("prod", {"cluster.eks.gpuInstanceType": "m6i.4xlarge"}, "cluster.eks.gpuInstanceType", "'g5.xlarge'"),
    ("prod", {"cluster.eks.systemInstanceType": "g5.xlarge"}, "cluster.eks.systemInstanceType", "'m6i.large'"),
    # Each model's pod against one node of the group it can land on: the shipped embedding model on the system
    # group's m6i.large, whose 1930m allocatable (EKS's reservation) less the DaemonSets' 150m is below 2 CPUs.
    ("prod", {"cluster.eks.systemInstanceType": "m6i.large"}, "models.embed.resources.requests.cpu",
     "requests 2 CPU in all (the engine's request with the stack's pull step), more than a node of the system node "
     "group (a pod without GPUs does not tolerate the GPU nodes' taint) can ever give it: a m6i.large has 1780m CPU"),
    ("prod", {"models.chat.gpu.count": 2}, "models.chat.gpu.count", "a g5.xlarge has 1 GPU allocatable"),
    # 16 GiB less 255Mi + 11Mi x 58 pods and the 100Mi eviction threshold.
    ("prod", {"models.chat.resources": {"requests": {"cpu": "3", "memory": "15392Mi"}, "limits": {"memory": "16Gi"}}},
     "models.chat.resources.requests.memory", "a g5.xlarge has 15391Mi memory allocatable"),
]


@pytest.mark.parametrize("stack,overrides,key,text", CONFIG_RULES, ids=[f"{case[0]}-{case[2]}" for case in CONFIG_RULES])
def test_cluster_config_rules(stack, overrides, key, text):
    error, evaluation = evaluate_failure(stack, set=overrides)
    assert isinstance(error, ConfigError)
    assert [(problem.key, text in problem.message) for problem in error.problems] == [(key, True)], str(error)
    assert evaluation.resources == []


# --- EKS -----------------------------------------------------------------------------------------------------


def test_eks_reserves_cpu_and_memory_per_node_as_its_formula_says():
    large = INSTANCE_TYPES["m6i.large"]
    assert large.allocatable_millicores() + NODE_DAEMONSET_MILLICORES == 1930
    assert large.allocatable_mebibytes() == 8192 - (255 + 11 * 29) - 100
    # 0.25% of each core above four, and managed node groups cap maxPods at 110 below 30 vCPUs, 250 above.
    assert INSTANCE_TYPES["g5.12xlarge"].allocatable_millicores() + NODE_DAEMONSET_MILLICORES == 48000 - 80 - 44 * 2.5
    assert INSTANCE_TYPES["g5.12xlarge"].max_pods == 250 and INSTANCE_TYPES["m6i.4xlarge"].max_pods == 110


def test_knatives_queue_proxy_counts_beside_the_engine():
    # What fits a node as a Deployment does not as a revision, whose queue proxy requests 25m more.
    error, evaluation = evaluate_failure("prod", set={
        "models.embed.resources.requests.cpu": "3770m", "models.embed.workload": "knative",
        "models.embed.scaling.targetCpuUtilization": None,
    }, secrets={**FAKE_SECRETS, "runnerApiKey": "runner-key-0123"})
    assert isinstance(error, ConfigError)
    (problem,) = error.problems
    assert problem.key == "models.embed.resources.requests.cpu" and (
        "requests 3795m CPU in all (the engine's request with the stack's pull step and Knative's queue proxy)"
        in problem.message)
    assert evaluation.resources == []


def test_a_pod_that_fits_a_node_exactly_is_accepted():
    # An init container's request counts once, beside the running ones (Kubernetes' effective request).
    evaluate("prod", set={"models.embed.resources.requests.cpu": "3770m"})


def test_eks_cluster_uses_managed_node_groups_only(prod):
    cluster = prod.one("eks:index:Cluster", "eks").inputs
    assert cluster["name"] == "model-stack-prod" and cluster["version"] == "1.32"
    assert cluster["skipDefaultNodeGroup"] is True and cluster["deletionProtection"] is True
    assert cluster["vpcId"] == "vpc-0a1b2c3d4e5f67890" and len(cluster["privateSubnetIds"]) == 3


def test_system_and_gpu_node_groups(prod):
    system = prod.one("eks:index:ManagedNodeGroup", "eks-system").inputs
    gpu = prod.one("eks:index:ManagedNodeGroup", "eks-gpu").inputs
    assert system["instanceTypes"] == ["m6i.xlarge"] and "taints" not in system
    assert system["scalingConfig"] == {"minSize": 2, "maxSize": 4, "desiredSize": 3}
    assert gpu["instanceTypes"] == ["g5.xlarge"] and gpu["amiType"] == "AL2023_x86_64_NVIDIA"
    assert gpu["scalingConfig"] == {"minSize": 2, "maxSize": 6, "desiredSize": 2}
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    assert gpu["labels"]["nvidia.com/gpu.present"] == "true"


def test_device_plugin_is_pinned_and_runs_on_the_tainted_gpu_nodes(prod):
    chart = prod.one("kubernetes:helm.sh/v4:Chart", "eks-nvidia-device-plugin").inputs
    assert (chart["chart"], chart["version"]) == ("nvidia-device-plugin", "0.17.1")
    assert chart["repositoryOpts"] == {"repo": "https://nvidia.github.io/k8s-device-plugin"}
    gpu = prod.one("eks:index:ManagedNodeGroup", "eks-gpu").inputs
    assert chart["values"]["nodeSelector"].items() <= gpu["labels"].items()
    (toleration,) = chart["values"]["tolerations"]
    (taint,) = gpu["taints"]
    assert toleration == {"key": taint["key"], "operator": "Exists", "effect": "NoSchedule"}


def test_the_protected_model_cache_file_system_outlives_the_stack(prod):
    assert prod.one("aws:efs/fileSystem:FileSystem").retain_on_delete
    # Retained while any model's cache is protected.
    assert evaluate("prod", set={"models.chat.cache.protect": False, "environment": "development"}).one(
        "aws:efs/fileSystem:FileSystem").retain_on_delete
    assert not evaluate("prod", set={"models.chat.cache.protect": False, "models.embed.cache.protect": False,
                                     "environment": "development"}).one("aws:efs/fileSystem:FileSystem").retain_on_delete


def test_model_cache_storage_class_is_efs_access_points(prod):
    storage_class = prod.one("kubernetes:storage.k8s.io/v1:StorageClass").inputs
    file_system = prod.one("aws:efs/fileSystem:FileSystem")
    assert storage_class["metadata"]["name"] == "efs-model-cache"
    assert storage_class["provisioner"] == "efs.csi.aws.com"
    assert storage_class["parameters"]["provisioningMode"] == "efs-ap"
    assert storage_class["reclaimPolicy"] == "Retain"  # a deleted claim never takes the models with it
    assert storage_class["parameters"]["fileSystemId"] == f"{file_system.name}-id"
    assert file_system.inputs["encrypted"] is True
    mount_targets = prod.of_type("aws:efs/mountTarget:MountTarget")
    cluster = prod.one("eks:index:Cluster", "eks").inputs
    assert sorted(m.inputs["subnetId"] for m in mount_targets) == sorted(cluster["privateSubnetIds"])
    storage_class_dependencies = prod.one("kubernetes:storage.k8s.io/v1:StorageClass").dependencies
    assert {m.urn for m in mount_targets} <= set(storage_class_dependencies)
    nfs = prod.one("aws:ec2/securityGroup:SecurityGroup").inputs["ingress"]
    assert nfs == [{"protocol": "tcp", "fromPort": 2049, "toPort": 2049, "securityGroups": ["sg-eks"]}]


def test_network_policies_are_enforced(prod):
    # EKS accepts NetworkPolicy objects and ignores them unless the VPC CNI runs its policy agent.
    assert prod.one("eks:index:Cluster", "eks").inputs["vpcCniOptions"]["enableNetworkPolicy"] is True
    assert any(obj["kind"] == "NetworkPolicy" for _, obj in prod.kubernetes_objects())


def test_metrics_server_feeds_the_autoscalers(prod):
    chart = prod.one("kubernetes:helm.sh/v4:Chart", "eks-metrics-server")
    assert (chart.inputs["chart"], chart.inputs["version"]) == ("metrics-server", "3.12.2")
    assert chart.inputs["repositoryOpts"] == {"repo": "https://kubernetes-sigs.github.io/metrics-server/"}
    assert chart.inputs["namespace"] == "kube-system"
    assert chart.provider.startswith(prod.one(PROVIDER, "eks").urn)
    assert prod.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")  # what it is there for


def test_cluster_autoscaler_adds_gpu_nodes_up_to_the_groups_max(prod):
    chart = prod.one("kubernetes:helm.sh/v4:Chart", "eks-cluster-autoscaler").inputs
    assert (chart["chart"], chart["version"]) == ("cluster-autoscaler", "9.46.3")
    values = chart["values"]
    assert values["autoDiscovery"] == {"clusterName": "model-stack-prod"} and values["awsRegion"] == "us-east-1"
    assert values["image"] == {"tag": "v1.32.0"}  # its minor follows the cluster's
    identity = prod.one("aws:eks/podIdentityAssociation:PodIdentityAssociation", "eks-cluster-autoscaler").inputs
    assert identity["serviceAccount"] == values["rbac"]["serviceAccount"]["name"]
    assert (identity["namespace"], identity["clusterName"]) == ("kube-system", "model-stack-prod")
    assert identity["roleArn"] == "arn:aws:iam::123456789012:role/eks-cluster-autoscaler"
    (policy,) = prod.one("aws:iam/role:Role", "eks-cluster-autoscaler").inputs["inlinePolicies"]
    actions = {action for statement in json.loads(policy["policy"])["Statement"] for action in statement["Action"]}
    assert {"autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"} <= actions
    # Scaling happens in the groups' bounds; the program does not undo the autoscaler's count.
    gpu = prod.one("eks:index:ManagedNodeGroup", "eks-gpu").inputs
    assert gpu["ignoreScalingChanges"] is True and gpu["scalingConfig"]["maxSize"] > gpu["scalingConfig"]["desiredSize"]


def test_efs_csi_driver_runs_with_its_own_pod_identity(prod):
    addon = prod.one("aws:eks/addon:Addon", "eks-efs-csi-driver").inputs
    role = prod.one("aws:iam/role:Role", "eks-efs-csi")
    assert addon["addonName"] == "aws-efs-csi-driver" and addon["clusterName"] == "model-stack-prod"
    assert addon["podIdentityAssociations"] == [
        {"roleArn": "arn:aws:iam::123456789012:role/eks-efs-csi", "serviceAccount": "efs-csi-controller-sa"}
    ]
    assert "pods.eks.amazonaws.com" in role.inputs["assumeRolePolicy"]
    assert prod.one("aws:eks/addon:Addon", "eks-pod-identity-agent").urn in prod.one(
        "aws:eks/addon:Addon", "eks-efs-csi-driver"
    ).dependencies


def test_eks_kubeconfig_is_a_secret_with_a_stable_identity(prod):
    provider = prod.one(PROVIDER, "eks").inputs
    assert isinstance(provider["kubeconfig"], Secret)
    assert provider["clusterIdentifier"] == "model-stack-prod"


def test_eks_without_its_optional_dependency_says_what_to_install():
    with mock.patch.dict(sys.modules, {"pulumi_eks": None}):
        sys.modules.pop("components.eks_cluster", None)
        with pytest.raises(ImportError, match=r"install model-stack\[eks\]"):
            importlib.import_module("components.eks_cluster")
    sys.modules.pop("components.eks_cluster", None)
