"""Which Kubernetes cluster the stack deploys into."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator, Literal, Optional

import yaml
from pydantic import Field
from pydantic.alias_generators import to_camel

from .base import DnsLabel, DockerNetworkName, ImageRef, InapplicableSetting, Problem, Section, join_key, matching, no_whitespace, set_keys, unique


@dataclass(frozen=True)
class KindNodeImage:
    kind_version: str
    """The kind release that built the image: kind supports a node image only with the release it shipped in."""

    image: str
    """Digest-pinned: kind's release notes say the tag alone does not guarantee an image built for that release."""


# From the "Images pre-built for this release" lists of https://github.com/kubernetes-sigs/kind/releases
# (v0.30.0; 1.30 was last built by v0.29.0).
KIND_NODE_IMAGES = {
    "1.34": KindNodeImage("0.30.0", "kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a"),
    "1.33": KindNodeImage("0.30.0", "kindest/node:v1.33.4@sha256:25a6018e48dfcaee478f4a59af81157a437f15e6e140bf103f85a2e7cd0cbbf2"),
    "1.32": KindNodeImage("0.30.0", "kindest/node:v1.32.8@sha256:abd489f042d2b644e2d033f5c2d900bc707798d075e8186cb65e3f1367a9d5a1"),
    "1.31": KindNodeImage("0.30.0", "kindest/node:v1.31.12@sha256:0f5cc49c5e73c0c2bb6e2df56e7df189240d83cf94edfa30946482eb08ec57d2"),
    "1.30": KindNodeImage("0.29.0", "kindest/node:v1.30.13@sha256:397209b3d947d154f6641f2d0ce8d473732bd91c87d9575ade99049aa33cd648"),
}

Port = Annotated[int, Field(ge=1, le=65535)]
# Served pods stop with a preStop sleep action (components/serving_workload.py `draining`), beta and on by default
# since Kubernetes 1.30 (KEP-3960).
MIN_KUBERNETES_VERSION = (1, 30)
SubnetId = Annotated[str, matching(r"subnet-[0-9a-f]{8,17}", "a subnet id such as subnet-0a1b2c3d4e5f60001")]
_SUBNET_ONCE = "a subnet is listed once (EKS and the EFS mount targets, one per zone, take each once)"
# Pulumi's stack references: `[<org>/]<project>/<stack>`, each part letters, digits, '-', '_' or '.'.
StackReference = Annotated[str, matching(
    r"(?:[A-Za-z0-9_.-]+/){1,2}[A-Za-z0-9_.-]+", "a stack reference <org>/<project>/<stack> (or <project>/<stack>)")]


class KindSettings(Section):
    """A local kind cluster with a local image registry."""

    name: Annotated[str, matching(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?", "a lowercase DNS label of at most 32 characters")] = "model-stack"
    """Cluster name (`kind get clusters`); kubectl's context becomes `kind-<name>`."""

    workers: Annotated[int, Field(ge=0, le=8)] = 2
    """Worker nodes besides the control plane. Two by default, so spreading and disruption budgets behave as on a
    real cluster while a laptop still copes."""

    http_host_port: Port = 80
    """Host port (on 127.0.0.1) that reaches the ingress's HTTP node port, so Knative URLs such as
    `http://gateway.models.127.0.0.1.sslip.io` work without a port. Pick another if 80 is taken."""

    https_host_port: Port = 443
    """Host port (on 127.0.0.1) that reaches the ingress's HTTPS node port."""

    registry_port: Port = 5001
    """Host port of the local registry (`localhost:<port>`): images are pushed there and the nodes pull the same
    name. 5001 as in kind's docs, because macOS's AirPlay receiver holds 5000."""

    node_image: Optional[ImageRef] = None
    """Node image of every node; unset uses the kindest/node image kind built for `kubernetesVersion`, pinned by
    digest. Set it for a node image of your own (`kind build node-image`) or one copied into a registry you can
    reach; it must run the Kubernetes minor `kubernetesVersion` names."""

    registry_name: DnsLabel = "kind-registry"
    """Name of the local registry container, which is also the host the nodes pull from on kind's network
    (`http://<name>:5000`); its images live on the Docker volume `<name>-data`, kept when the stack is destroyed.
    A second dev stack on the same machine needs its own, as it needs its own `name` and ports."""

    registry_image: Optional[ImageRef] = None
    """Image of the local registry container; unset uses `registry:2.8.3`, pinned by digest. Set it where Docker
    Hub cannot be reached (a copy in your own registry)."""

    registry_network: Optional[DockerNetworkName] = None
    """An existing Docker network the registry container joins when it is created. Set it where Docker runs
    without its default bridge network (`dockerd --bridge=none`), on which a container publishes no port, so
    `localhost:<registryPort>` would not answer; unset: Docker's default network. The nodes reach the registry on
    kind's own network either way."""

    def check(self, path: str) -> Iterator[Problem]:
        # The cluster maps the ingress's ports and the registry container publishes its own, all on 127.0.0.1 over
        # TCP (stacks/cluster.py): each takes its host port, and the second of two would fail to start.
        taken: dict[int, str] = {}
        for name in ("http_host_port", "https_host_port", "registry_port"):
            key, port = join_key(path, to_camel(name)), getattr(self, name)
            if port in taken:
                yield Problem(key, f"publishes 127.0.0.1:{port} on the host, which {taken[port]} takes already (the "
                                   "ingress's HTTP and HTTPS ports and the local registry each need a port of their "
                                   "own)", port)
            taken.setdefault(port, key)
        # kind names its node containers after the cluster; Docker refuses a second container of one name.
        nodes = {f"{self.name}-control-plane", f"{self.name}-worker",
                 *(f"{self.name}-worker{index}" for index in range(2, self.workers + 1))}
        if self.registry_name in nodes:
            yield Problem(join_key(path, "registryName"), f"is the name of one of this cluster's node containers "
                                                         f"(kind names them {', '.join(sorted(nodes))})",
                          self.registry_name)


class ExistingSettings(Section):
    """Where the kubeconfig of an existing cluster comes from, besides the `kubeconfig` secret."""

    kubeconfig_path: Optional[str] = None
    """Path of a kubeconfig file on the machine running Pulumi (`~` expands). Only the path is stored in the
    state, so exec-based credentials (`aws eks get-token`, `gke-gcloud-auth-plugin`) keep refreshing."""

    stack_reference: Optional[StackReference] = None
    """`<org>/<project>/<stack>` of a stack that exports the cluster's kubeconfig (e.g. a platform team's
    cluster stack)."""

    stack_output: Annotated[str, no_whitespace("a stack output name")] = "kubeconfig"
    """Name of the kubeconfig output of `stackReference`."""

    context: Optional[str] = None
    """Kubeconfig context to use; unset uses the kubeconfig's current context."""

    def kubeconfig_problems(self, path: str) -> Iterator[Problem]:
        """A kubeconfig file that is missing, is no kubeconfig, or lacks the chosen context."""
        if self.kubeconfig_path is None:
            return
        key = join_key(path, "kubeconfigPath")
        try:
            text = Path(self.kubeconfig_path).expanduser().read_text()
        except (OSError, UnicodeDecodeError) as error:
            yield Problem(key, f"cannot be read ({getattr(error, 'strerror', None) or error})", self.kubeconfig_path)
            return
        yield from kubeconfig_problems(text, key, self.kubeconfig_path, self.context, join_key(path, "context"))


def kubeconfig_problems(
    text: str, key: str, shown_as: Optional[str], context: Optional[str], context_key: str
) -> Iterator[Problem]:
    """A kubeconfig (`text`, configured under `key`) that is no YAML, no kubeconfig, or lacks `context`. Only the
    line and kind of a YAML error are told, never the text: a kubeconfig holds credentials. `shown_as` names it
    in messages (its path; None for the secret, which is never shown)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}: {getattr(error, 'problem', '')})" if mark is not None else ""
        yield Problem(key, f"is not YAML{where}", shown_as)
        return
    if not isinstance(document, dict) or document.get("kind") != "Config":
        yield Problem(key, "is not a kubeconfig (a YAML map with `kind: Config`)", shown_as)
        return
    contexts = [entry.get("name") for entry in document.get("contexts") or [] if isinstance(entry, dict)]
    if context is not None and context not in contexts:
        yield Problem(context_key, f"is not a context of {shown_as or 'the kubeconfig secret'} "
                      f"(it has: {', '.join(map(str, contexts)) or 'none'})", context)


@dataclass(frozen=True)
class InstanceType:
    """What an EC2 instance type offers the pods of one node."""

    vcpus: int
    memory_gib: int
    gpus: int
    """NVIDIA GPUs (`nvidia.com/gpu`)."""

    eni_max_pods: int
    """Pods the VPC CNI can address on it (amazon-eks-ami `eni-max-pods.txt`)."""

    @property
    def max_pods(self) -> int:
        """The kubelet's maxPods on a managed node group, which caps the ENI figure at 110 below 30 vCPUs and at
        250 above (EKS user guide, "Amazon EKS recommended maximum Pods for each Amazon EC2 instance type")."""
        return min(self.eni_max_pods, 110 if self.vcpus < 30 else 250)

    def allocatable_millicores(self) -> int:
        """CPU left for pods after EKS's kube-reserved (6% of the first core, 1% of the second, 0.5% of the next
        two, 0.25% of the rest; an m6i.large keeps 1930m) and the per-node DaemonSets' requests."""
        cores = [60, 10, 5, 5] + [2.5] * max(self.vcpus - 4, 0)
        return int(self.vcpus * 1000 - sum(cores[:self.vcpus])) - NODE_DAEMONSET_MILLICORES

    def allocatable_mebibytes(self) -> int:
        """Memory left for pods after EKS's kube-reserved (255Mi plus 11Mi per pod the node may run) and the
        kubelet's hard eviction threshold (100Mi). Counted from the nominal size: the kernel keeps a little more,
        so a pod this refuses can never fit, and one it accepts may still not."""
        return self.memory_gib * 1024 - (255 + 11 * self.max_pods) - 100


# Requests of the DaemonSets on every node of the EKS cluster: aws-node and its network policy agent (25m each, the
# VPC CNI chart's `resources`, which both containers use) and kube-proxy (100m, the EKS add-on's). The pod identity
# agent, EFS CSI node and NVIDIA device plugin DaemonSets set no requests in their defaults. None requests memory.
NODE_DAEMONSET_MILLICORES = 25 + 25 + 100

# x86 instance types the node groups may use (the AMIs are AL2023 x86_64, standard and NVIDIA), with the figures
# the scheduling check needs: vCPUs, GiB, NVIDIA GPUs (AWS instance type pages) and ENI max pods (eni-max-pods.txt).
INSTANCE_TYPES = {
    name: InstanceType(*figures)
    for name, figures in {
        "m6i.large": (2, 8, 0, 29), "m6i.xlarge": (4, 16, 0, 58), "m6i.2xlarge": (8, 32, 0, 58),
        "m6i.4xlarge": (16, 64, 0, 234), "m6i.8xlarge": (32, 128, 0, 234),
        "m7i.large": (2, 8, 0, 29), "m7i.xlarge": (4, 16, 0, 58), "m7i.2xlarge": (8, 32, 0, 58),
        "m7i.4xlarge": (16, 64, 0, 234), "m7i.8xlarge": (32, 128, 0, 234),
        "c6i.large": (2, 4, 0, 29), "c6i.xlarge": (4, 8, 0, 58), "c6i.2xlarge": (8, 16, 0, 58),
        "c6i.4xlarge": (16, 32, 0, 234), "c6i.8xlarge": (32, 64, 0, 234),
        "r6i.large": (2, 16, 0, 29), "r6i.xlarge": (4, 32, 0, 58), "r6i.2xlarge": (8, 64, 0, 58),
        "r6i.4xlarge": (16, 128, 0, 234),
        # NVIDIA A10G (24 GiB) each.
        "g5.xlarge": (4, 16, 1, 58), "g5.2xlarge": (8, 32, 1, 58), "g5.4xlarge": (16, 64, 1, 234),
        "g5.8xlarge": (32, 128, 1, 234), "g5.12xlarge": (48, 192, 4, 737), "g5.16xlarge": (64, 256, 1, 234),
        "g5.24xlarge": (96, 384, 4, 737), "g5.48xlarge": (192, 768, 8, 345),
        # NVIDIA L4 (24 GiB) each.
        "g6.xlarge": (4, 16, 1, 58), "g6.2xlarge": (8, 32, 1, 58), "g6.4xlarge": (16, 64, 1, 234),
        "g6.8xlarge": (32, 128, 1, 234), "g6.12xlarge": (48, 192, 4, 234), "g6.16xlarge": (64, 256, 1, 737),
        "g6.24xlarge": (96, 384, 4, 737), "g6.48xlarge": (192, 768, 8, 737),
        # NVIDIA L40S (48 GiB) each.
        "g6e.xlarge": (4, 32, 1, 58), "g6e.2xlarge": (8, 64, 1, 58), "g6e.12xlarge": (48, 384, 4, 292),
        "g6e.48xlarge": (192, 1536, 8, 492),
        # NVIDIA A100 (40 GiB) and H100 (80 GiB), eight each.
        "p4d.24xlarge": (96, 1152, 8, 737), "p5.48xlarge": (192, 2048, 8, 100),
    }.items()
}
CpuInstanceType = Literal[tuple(name for name, spec in INSTANCE_TYPES.items() if not spec.gpus)]  # type: ignore[valid-type]
GpuInstanceType = Literal[tuple(name for name, spec in INSTANCE_TYPES.items() if spec.gpus)]  # type: ignore[valid-type]


class NodeGroupSize(Section):
    """Size bounds of a managed node group."""

    min_size: Annotated[int, Field(ge=0)]
    """Fewest nodes the group scales down to."""

    max_size: Annotated[int, Field(ge=1)]
    """Most nodes the group scales up to."""

    desired_size: Annotated[int, Field(ge=0)]
    """Nodes at creation; later changes by an autoscaler are left alone."""

    def check(self, path: str) -> Iterator[Problem]:
        if not self.min_size <= self.desired_size <= self.max_size:
            yield Problem(
                join_key(path, "desiredSize"), "must lie between minSize and maxSize",
                f"{self.min_size} <= {self.desired_size} <= {self.max_size}",
            )


class EksSettings(Section):
    """An Amazon EKS cluster with a system and a GPU node group and EFS for the shared model cache. The region is
    the AWS provider's `aws:region`."""

    vpc_id: Annotated[str, matching(r"vpc-[0-9a-f]{8,17}", "a VPC id such as vpc-0a1b2c3d4e5f67890")]
    """VPC the cluster runs in (required: production clusters live in a VPC the network team owns)."""

    private_subnet_ids: Annotated[list[SubnetId], Field(min_length=2), unique(_SUBNET_ONCE)]
    """Private subnets for nodes and EFS mount targets, one per availability zone (EKS needs two zones at least)."""

    public_subnet_ids: Annotated[list[SubnetId], unique(_SUBNET_ONCE)] = []
    """Public subnets for internet-facing load balancers; empty keeps every load balancer internal."""

    system_instance_type: CpuInstanceType = "m6i.large"
    """Instance type of the system node group (gateway, Knative, cluster add-ons, and every model with gpu.count
    0): 2 vCPU / 8 GiB is ample for the add-ons; size it up for CPU models (each model's pod must fit one node's
    allocatable CPU and memory, which the config checks)."""

    system_nodes: NodeGroupSize = NodeGroupSize(minSize=2, maxSize=4, desiredSize=2)
    """System node group size: two nodes at least, so add-ons survive a node replacement."""

    gpu_instance_type: GpuInstanceType = "g5.xlarge"
    """Instance type of the GPU node group: one NVIDIA A10G (24 GiB), the smallest that serves 7-8B models."""

    gpu_nodes: NodeGroupSize = NodeGroupSize(minSize=1, maxSize=4, desiredSize=1)
    """GPU node group size. Nodes carry the taint `nvidia.com/gpu=true:NoSchedule`, so only pods that tolerate it
    (the model runner) land there."""

    deletion_protection: bool = True
    """Refuse to delete the EKS cluster (set false before tearing a stack down)."""

    def check(self, path: str) -> Iterator[Problem]:
        private = set(self.private_subnet_ids)
        for index, subnet in enumerate(self.public_subnet_ids):
            if subnet in private:
                yield Problem(join_key(join_key(path, "publicSubnetIds"), index),
                              "is listed in privateSubnetIds too: a subnet is private (nodes, EFS) or public (internet-"
                              "facing load balancers), not both", subnet)


class ClusterConfig(Section):
    provider: Literal["kind", "existing", "eks"] = "kind"
    """`kind` creates a local multi-node cluster with a local registry; `existing` deploys into a cluster you
    already run (see `existing`); `eks` creates an Amazon EKS cluster with GPU nodes (needs `pip install
    model-stack[eks]`)."""

    kubernetes_version: Annotated[str, matching(r"1\.[0-9]{2}", "a Kubernetes minor version such as 1.32")] = "1.32"
    """Minor Kubernetes version the cluster runs (`1.32`): picks the kind node image and the schema every
    emitted object is validated against. 1.30 at least: served pods drain with a preStop sleep."""

    kind: KindSettings = KindSettings()
    """Settings of the kind cluster (provider `kind`)."""

    existing: ExistingSettings = ExistingSettings()
    """Where an existing cluster's kubeconfig comes from (provider `existing`): exactly one of the `kubeconfig`
    secret, `existing.kubeconfigPath` or `existing.stackReference`."""

    eks: Optional[EksSettings] = None
    """Settings of the EKS cluster (provider `eks`, where `eks.vpcId` and `eks.privateSubnetIds` are required)."""

    def check(self, path: str) -> Iterator[Problem]:
        yield from self.existing.kubeconfig_problems(join_key(path, "existing"))
        for section in ("kind", "existing", "eks"):
            if section in self.model_fields_set and section != self.provider:
                for key, given in set_keys(getattr(self, section), join_key(path, section)):
                    yield InapplicableSetting(key, f"applies only when provider is {section}, and does nothing with "
                                                   f"provider {self.provider}; remove it", given)
        if self.provider == "kind" and self.kubernetes_version not in KIND_NODE_IMAGES:
            yield Problem(
                join_key(path, "kubernetesVersion"),
                f"kind node images are pinned for {', '.join(KIND_NODE_IMAGES)} only",
                self.kubernetes_version,
            )
        version = tuple(int(part) for part in self.kubernetes_version.split("."))
        if self.provider != "kind" and version < MIN_KUBERNETES_VERSION:
            yield Problem(
                join_key(path, "kubernetesVersion"),
                f"must be {'.'.join(map(str, MIN_KUBERNETES_VERSION))} or later: served pods drain with a preStop "
                "sleep, which older clusters refuse",
                self.kubernetes_version,
            )
        if self.provider == "eks" and self.eks is None:
            yield Problem(join_key(path, "eks"), "is required when provider is eks (set eks.vpcId and eks.privateSubnetIds)")
