"""An Amazon EKS cluster for model serving: system and GPU node groups, the NVIDIA device plugin, and an EFS
storage class that lets every model-runner replica share one model cache (ReadWriteMany). EKS ships without
what the workloads count on elsewhere, so this adds it: metrics-server (HorizontalPodAutoscalers read it),
NetworkPolicy enforcement (the VPC CNI's policy agent) and the Cluster Autoscaler (nodes up to each group's
max when pods wait for room)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

try:
    import pulumi_aws as aws
    import pulumi_eks as eks
except ImportError as error:  # the AWS SDKs are an optional dependency (~270 MB)
    raise ImportError(
        "the eks cluster provider needs the AWS provider SDKs: install model-stack[eks] "
        "(pip install 'model-stack[eks]')"
    ) from error

from .cluster_provider import cluster_provider


@dataclass(frozen=True)
class PinnedChart:
    chart: str
    version: str
    repository: str


# NVIDIA's own chart: its values select and tolerate GPU nodes, and it tracks the plugin image per release.
# A chart rather than the static manifest, because the manifest would have to be edited for both.
DEVICE_PLUGIN = PinnedChart("nvidia-device-plugin", "0.17.1", "https://nvidia.github.io/k8s-device-plugin")
METRICS_SERVER = PinnedChart("metrics-server", "3.12.2", "https://kubernetes-sigs.github.io/metrics-server/")
# The autoscaler finds the node groups by the tags EKS puts on their Auto Scaling groups
# (k8s.io/cluster-autoscaler/enabled, k8s.io/cluster-autoscaler/<cluster>); its minor must match Kubernetes'.
CLUSTER_AUTOSCALER = PinnedChart("cluster-autoscaler", "9.46.3", "https://kubernetes.github.io/autoscaler")
CLUSTER_AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"
# https://github.com/kubernetes/autoscaler/blob/master/cluster-autoscaler/cloudprovider/aws/README.md
CLUSTER_AUTOSCALER_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeAutoScalingInstances",
                "autoscaling:DescribeLaunchConfigurations",
                "autoscaling:DescribeScalingActivities",
                "autoscaling:DescribeTags",
                "ec2:DescribeImages",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplateVersions",
                "ec2:GetInstanceTypesFromInstanceRequirements",
                "eks:DescribeNodegroup",
            ],
            "Resource": "*",
        },
        {
            "Effect": "Allow",
            "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
            "Resource": "*",
        },
    ],
}

MODEL_CACHE_STORAGE_CLASS = "efs-model-cache"
# The label GPU feature discovery would set; the device plugin chart's default node affinity selects it.
GPU_NODE_LABELS = {"nvidia.com/gpu.present": "true"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
NODE_POOL_LABEL = "model-stack/node-pool"

NODE_POLICIES = {
    "worker": "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "cni": "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "ecr": "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
}
EFS_CSI_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEFSCSIDriverPolicy"
EFS_CSI_SERVICE_ACCOUNT = "efs-csi-controller-sa"
NFS_PORT = 2049


def _assume_role_policy(principal: dict[str, str], actions: list[str]) -> str:
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": principal, "Action": actions}]}
    )



class NodeGroupArgs(TypedDict):
    instance_type: str
    """EC2 instance type of every node in the group."""

    min_size: int
    """Fewest nodes."""

    max_size: int
    """Most nodes."""

    desired_size: int
    """Nodes at creation; later scaling by an autoscaler is not reverted."""


class EksClusterArgs(TypedDict):
    name: str
    """EKS cluster name (unique per account and region)."""

    kubernetes_version: str
    """Kubernetes minor version, e.g. `1.32`."""

    region: str
    """AWS region of the cluster (the AWS provider's), for the Cluster Autoscaler's API calls."""

    vpc_id: str
    """VPC of the cluster."""

    private_subnet_ids: list[str]
    """Subnets of the nodes and of the EFS mount targets, one per availability zone."""

    public_subnet_ids: NotRequired[list[str]]
    """Subnets for internet-facing load balancers."""

    system_nodes: NodeGroupArgs
    """Node group for everything but the model runner."""

    gpu_nodes: NodeGroupArgs
    """Node group with NVIDIA GPUs, tainted so that only pods tolerating `nvidia.com/gpu` run there. The Cluster
    Autoscaler adds nodes up to `max_size` while GPU pods are pending and removes idle ones down to `min_size`."""

    deletion_protection: NotRequired[bool]
    """Refuse to delete the EKS cluster."""

    retain_model_cache: NotRequired[bool]
    """Leave the model cache's EFS file system (and the models in it) in the account when the stack is destroyed."""


class EksCluster(pulumi.ComponentResource):
    """An EKS cluster and the Kubernetes provider for it."""

    kubeconfig: pulumi.Output[str]
    """Secret: kubeconfig of the cluster (authenticates with `aws eks get-token`)."""

    model_cache_storage_class: pulumi.Output[str]
    """Storage class of the shared (ReadWriteMany, EFS) model cache."""

    provider: k8s.Provider
    """Kubernetes provider for the cluster, for every object the stack puts in it."""

    def __init__(self, name: str, args: EksClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:EksCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        subnets = args["private_subnet_ids"]

        node_role = aws.iam.Role(
            f"{name}-nodes",
            assume_role_policy=_assume_role_policy({"Service": "ec2.amazonaws.com"}, ["sts:AssumeRole"]),
            opts=child,
        )
        node_policies = [
            aws.iam.RolePolicyAttachment(f"{name}-nodes-{short}", role=node_role.name, policy_arn=arn, opts=child)
            for short, arn in NODE_POLICIES.items()
        ]
        cluster = eks.Cluster(
            name,
            name=args["name"],
            version=args["kubernetes_version"],
            vpc_id=args["vpc_id"],
            private_subnet_ids=subnets,
            public_subnet_ids=args.get("public_subnet_ids") or None,
            # Managed node groups only: they use the security group EKS creates, which the EFS rule below admits.
            skip_default_node_group=True,
            skip_default_security_groups=True,
            authentication_mode=eks.AuthenticationMode.API,
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            deletion_protection=args.get("deletion_protection", True),
            # The VPC CNI's network policy agent: without it EKS accepts NetworkPolicies and enforces none.
            vpc_cni_options=eks.VpcCniOptionsArgs(enable_network_policy=True),
            opts=child,
        )
        node_group_opts = pulumi.ResourceOptions(parent=self, depends_on=node_policies)
        system_nodes = self._node_group(
            f"{name}-system", cluster, node_role, subnets, args["system_nodes"],
            ami_type="AL2023_x86_64_STANDARD", labels={NODE_POOL_LABEL: "system"}, taints=[], opts=node_group_opts,
        )
        self._node_group(
            f"{name}-gpu", cluster, node_role, subnets, args["gpu_nodes"],
            # Amazon Linux 2023 with the NVIDIA driver and container toolkit; the device plugin comes below.
            ami_type="AL2023_x86_64_NVIDIA", labels={NODE_POOL_LABEL: "gpu", **GPU_NODE_LABELS},
            taints=[aws.eks.NodeGroupTaintArgs(key=GPU_TAINT["key"], value=GPU_TAINT["value"], effect="NO_SCHEDULE")],
            # Inference images (vLLM and CUDA) run to 10+ GB; the default 20 GiB root volume fills up.
            disk_size=100,
            opts=node_group_opts,
        )

        self.kubeconfig = pulumi.Output.secret(cluster.kubeconfig_json)
        self.provider = cluster_provider(
            name,
            self.kubeconfig,
            # The kubeconfig embeds the endpoint and CA, which may be re-issued; the cluster is its name.
            args["name"],
            opts=child,
        )

        file_system_id, mount_targets = self._model_cache_file_system(name, args, cluster)
        addon_opts = pulumi.ResourceOptions(parent=self, depends_on=[cluster, system_nodes])
        pod_identity_agent = aws.eks.Addon(
            f"{name}-pod-identity-agent", cluster_name=args["name"], addon_name="eks-pod-identity-agent", opts=addon_opts,
        )
        efs_csi_role = aws.iam.Role(
            f"{name}-efs-csi",
            assume_role_policy=_assume_role_policy(
                {"Service": "pods.eks.amazonaws.com"}, ["sts:AssumeRole", "sts:TagSession"]
            ),
            opts=child,
        )
        efs_csi_policy = aws.iam.RolePolicyAttachment(
            f"{name}-efs-csi", role=efs_csi_role.name, policy_arn=EFS_CSI_POLICY, opts=child
        )
        efs_csi_driver = aws.eks.Addon(
            f"{name}-efs-csi-driver",
            cluster_name=args["name"],
            addon_name="aws-efs-csi-driver",
            pod_identity_associations=[
                aws.eks.AddonPodIdentityAssociationArgs(role_arn=efs_csi_role.arn, service_account=EFS_CSI_SERVICE_ACCOUNT)
            ],
            opts=pulumi.ResourceOptions.merge(addon_opts, pulumi.ResourceOptions(depends_on=[pod_identity_agent, efs_csi_policy])),
        )
        storage_class = k8s.storage.v1.StorageClass(
            f"{name}-model-cache",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=MODEL_CACHE_STORAGE_CLASS),
            provisioner="efs.csi.aws.com",
            # One EFS access point (its own directory) per volume, created on demand by the driver.
            parameters={
                "provisioningMode": "efs-ap",
                "fileSystemId": file_system_id,
                "directoryPerms": "770",
                "basePath": "/model-cache",
            },
            # A released volume keeps its access point and data: models are deleted on purpose, never by a
            # claim that went away.
            reclaim_policy="Retain",
            # EFS is regional: a volume is reachable from every zone, so there is no reason to wait for a pod.
            volume_binding_mode="Immediate",
            # Pods can mount a volume only once the file system has a mount target in their zone.
            opts=pulumi.ResourceOptions(
                parent=self, provider=self.provider, depends_on=[cluster, efs_csi_driver, *mount_targets]
            ),
        )
        self._system_chart(
            f"{name}-nvidia-device-plugin", DEVICE_PLUGIN,
            {"nodeSelector": GPU_NODE_LABELS, "tolerations": [GPU_TOLERATION]}, [cluster],
        )
        system_only = {"nodeSelector": {NODE_POOL_LABEL: "system"}}
        self._system_chart(f"{name}-metrics-server", METRICS_SERVER, system_only, [cluster, system_nodes])
        self._cluster_autoscaler(name, args, cluster, system_only, addon_opts, pod_identity_agent)
        self.model_cache_storage_class = storage_class.metadata.apply(lambda metadata: metadata.name)
        self.register_outputs(
            {"kubeconfig": self.kubeconfig, "model_cache_storage_class": self.model_cache_storage_class}
        )

    def _cluster_autoscaler(
        self,
        name: str,
        args: EksClusterArgs,
        cluster: "eks.Cluster",
        placement: dict,
        addon_opts: pulumi.ResourceOptions,
        pod_identity_agent: "aws.eks.Addon",
    ) -> None:
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-cluster-autoscaler",
            assume_role_policy=_assume_role_policy(
                {"Service": "pods.eks.amazonaws.com"}, ["sts:AssumeRole", "sts:TagSession"]
            ),
            inline_policies=[
                aws.iam.RoleInlinePolicyArgs(name="cluster-autoscaler", policy=json.dumps(CLUSTER_AUTOSCALER_POLICY))
            ],
            opts=child,
        )
        identity = aws.eks.PodIdentityAssociation(
            f"{name}-cluster-autoscaler",
            cluster_name=args["name"],
            namespace="kube-system",
            service_account=CLUSTER_AUTOSCALER_SERVICE_ACCOUNT,
            role_arn=role.arn,
            opts=pulumi.ResourceOptions.merge(addon_opts, pulumi.ResourceOptions(depends_on=[pod_identity_agent])),
        )
        self._system_chart(
            f"{name}-cluster-autoscaler", CLUSTER_AUTOSCALER,
            {
                "cloudProvider": "aws",
                "awsRegion": args["region"],
                "autoDiscovery": {"clusterName": args["name"]},
                "rbac": {"serviceAccount": {"name": CLUSTER_AUTOSCALER_SERVICE_ACCOUNT}},
                "image": {"tag": f"v{args['kubernetes_version']}.0"},
                **placement,
            },
            [cluster, identity],
        )

    def _system_chart(
        self, name: str, pinned: PinnedChart, values: dict[str, Any], depends_on: list[pulumi.Resource]
    ) -> None:
        """A pinned Helm chart in kube-system, through the cluster's provider."""
        k8s.helm.v4.Chart(
            name,
            chart=pinned.chart,
            version=pinned.version,
            repository_opts=k8s.helm.v4.RepositoryOptsArgs(repo=pinned.repository),
            namespace="kube-system",
            values=values,
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=depends_on),
        )

    def _node_group(
        self,
        name: str,
        cluster: "eks.Cluster",
        role: "aws.iam.Role",
        subnets: list[str],
        size: NodeGroupArgs,
        *,
        ami_type: str,
        labels: dict[str, str],
        taints: list["aws.eks.NodeGroupTaintArgs"],
        opts: pulumi.ResourceOptions,
        disk_size: Optional[int] = None,
    ) -> "eks.ManagedNodeGroup":
        return eks.ManagedNodeGroup(
            name,
            cluster=cluster,
            node_role=role,
            subnet_ids=subnets,
            instance_types=[size["instance_type"]],
            ami_type=ami_type,
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=size["min_size"], max_size=size["max_size"], desired_size=size["desired_size"]
            ),
            # The cluster autoscaler (or an operator) owns the node count once the group exists.
            ignore_scaling_changes=True,
            labels=labels,
            taints=taints or None,
            disk_size=disk_size,
            opts=opts,
        )

    def _model_cache_file_system(
        self, name: str, args: EksClusterArgs, cluster: "eks.Cluster"
    ) -> tuple[pulumi.Output[str], list["aws.efs.MountTarget"]]:
        child = pulumi.ResourceOptions(parent=self)
        nfs = aws.ec2.SecurityGroup(
            f"{name}-model-cache-nfs",
            description="NFS from the cluster's nodes to the model cache file system",
            vpc_id=args["vpc_id"],
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=NFS_PORT, to_port=NFS_PORT,
                    security_groups=[cluster.cluster_security_group_id],
                )
            ],
            opts=child,
        )
        file_system = aws.efs.FileSystem(
            f"{name}-model-cache",
            encrypted=True,
            # Model loads read gigabytes in bursts after long idle spells: elastic throughput has no credit
            # balance to run dry, unlike bursting.
            throughput_mode="elastic",
            tags={"Name": f"{args['name']}-model-cache"},
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(retain_on_delete=args.get("retain_model_cache", False))),
        )
        mount_targets = [
            aws.efs.MountTarget(
                f"{name}-model-cache-{index}",
                file_system_id=file_system.id,
                subnet_id=subnet,
                security_groups=[nfs.id],
                opts=child,
            )
            for index, subnet in enumerate(args["private_subnet_ids"])
        ]
        return file_system.id, mount_targets
