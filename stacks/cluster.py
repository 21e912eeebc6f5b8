"""The cluster layer: which cluster the stack deploys into, and the provider every Kubernetes resource uses."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pulumi
import pulumi_docker as docker
import pulumi_kubernetes as k8s

from components.cluster_provider import cluster_provider
from components.kind_cluster import KindCluster
from components.local_registry import LocalRegistry

from .config import StackConfig
from .config.cluster import KIND_NODE_IMAGES, ClusterConfig, KindSettings, NodeGroupSize
from .config.secrets import StackSecrets

# Kourier's Service node ports on kind, fixed so the cluster can map host ports to them at creation.
KIND_INGRESS_NODE_PORTS = (31080, 31443)
# kind's local-path provisioner: ReadWriteOnce, on the node that first mounts the volume.
KIND_STORAGE_CLASS = "standard"

KIND_TOOLS = {
    "docker": "https://docs.docker.com/engine/install/",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
}


@dataclass(frozen=True)
class ClusterHandle:
    provider: k8s.Provider
    """Every Kubernetes resource of the stack is created through this provider."""

    kubeconfig: pulumi.Output[str]
    """Secret."""

    ready: list[pulumi.Resource] = field(default_factory=list)
    """Resources that must exist before anything is applied to the cluster (pass as depends_on)."""

    model_cache_storage_class: Optional[str] = None
    """Storage class for the model cache when its config names none; None means the cluster default."""

    ingress_node_ports: Optional[tuple[int, int]] = None
    """(http, https) node ports the ingress must use because the cluster maps host ports to them (kind)."""

    local_registry: Optional[str] = None
    """Host of a registry this machine pushes to and the nodes pull from without credentials, under the same
    image name (kind: `localhost:5001`); None when the cluster has none."""

    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    """Labels of the nodes with GPUs (empty: GPU nodes carry no distinguishing label)."""

    gpu_tolerations: list[dict[str, str]] = field(default_factory=list)
    """Tolerations a pod needs to be scheduled on GPU nodes (Kubernetes Toleration objects)."""


class ClusterPrerequisiteError(pulumi.RunError):
    """A tool the cluster provider runs is missing on this machine. RunError: Pulumi prints just the message."""


def provision_cluster(config: StackConfig, secrets: StackSecrets) -> ClusterHandle:
    cluster = config.cluster
    if cluster.provider == "kind":
        return _kind_cluster(cluster)
    if cluster.provider == "eks":
        return _eks_cluster(cluster, retain_model_cache=any(model.config.cache.protect for model in config.served_models))
    return _existing_cluster(cluster, secrets)


def _kind_cluster(cluster: ClusterConfig) -> ClusterHandle:
    node_image = KIND_NODE_IMAGES[cluster.kubernetes_version]
    # Only an update runs kind and docker commands: `pulumi preview` must work where they are absent (CI runners).
    if not pulumi.runtime.is_dry_run():
        check_kind_host(node_image.kind_version)
    settings = cluster.kind
    registry = local_registry(settings)
    http_port, https_port = KIND_INGRESS_NODE_PORTS
    kind = KindCluster(
        "kind",
        {
            "name": settings.name,
            "node_image": settings.node_image or node_image.image,
            "workers": settings.workers,
            "port_mappings": [
                {"node_port": http_port, "host_port": settings.http_host_port},
                {"node_port": https_port, "host_port": settings.https_host_port},
            ],
            "registry": {
                "host": f"localhost:{settings.registry_port}",
                "endpoint": registry.cluster_endpoint,
                "container": registry.container_id,
            },
        },
    )
    return ClusterHandle(
        provider=kind.provider,
        kubeconfig=kind.kubeconfig,
        # The component stands for all of its children: cluster, registry wiring and the hosting ConfigMap.
        ready=[kind, registry],
        model_cache_storage_class=KIND_STORAGE_CLASS,
        ingress_node_ports=KIND_INGRESS_NODE_PORTS,
        local_registry=f"localhost:{settings.registry_port}",
    )


def local_registry(settings: KindSettings) -> LocalRegistry:
    """The registry container on this machine that kind's nodes pull from."""
    # The Docker provider pings the daemon when it starts unless told not to; a preview needs no daemon, and an
    # update without one fails on the registry container with Docker's own message.
    docker_host = docker.Provider("docker", disable_docker_daemon_check=True)
    return LocalRegistry(
        "registry",
        {"host_port": settings.registry_port, "container_name": settings.registry_name,
         **({"image": settings.registry_image} if settings.registry_image else {}),
         **({"network": settings.registry_network} if settings.registry_network else {})},
        opts=pulumi.ResourceOptions(providers=[docker_host]),
    )


def _eks_cluster(cluster: ClusterConfig, retain_model_cache: bool) -> ClusterHandle:
    from components.eks_cluster import GPU_NODE_LABELS, GPU_TOLERATION, MODEL_CACHE_STORAGE_CLASS, EksCluster

    settings = cluster.eks
    assert settings is not None  # ClusterConfig.check requires it for provider eks

    def node_group(instance_type: str, size: NodeGroupSize) -> dict:
        return {
            "instance_type": instance_type,
            "min_size": size.min_size,
            "max_size": size.max_size,
            "desired_size": size.desired_size,
        }

    eks = EksCluster(
        "eks",
        {
            "name": f"model-stack-{pulumi.get_stack()}",
            "kubernetes_version": cluster.kubernetes_version,
            "region": pulumi.Config("aws").require("region"),
            "vpc_id": settings.vpc_id,
            "private_subnet_ids": list(settings.private_subnet_ids),
            "public_subnet_ids": list(settings.public_subnet_ids),
            "system_nodes": node_group(settings.system_instance_type, settings.system_nodes),
            "gpu_nodes": node_group(settings.gpu_instance_type, settings.gpu_nodes),
            "deletion_protection": settings.deletion_protection,
            "retain_model_cache": retain_model_cache,
        },
    )
    return ClusterHandle(
        provider=eks.provider,
        kubeconfig=eks.kubeconfig,
        ready=[eks],
        model_cache_storage_class=MODEL_CACHE_STORAGE_CLASS,
        gpu_node_selector=dict(GPU_NODE_LABELS),
        gpu_tolerations=[dict(GPU_TOLERATION)],
    )


def _existing_cluster(cluster: ClusterConfig, secrets: StackSecrets) -> ClusterHandle:
    settings = cluster.existing
    kubeconfig: pulumi.Output[str]
    if settings.kubeconfig_path is not None:
        path = Path(settings.kubeconfig_path).expanduser()
        if not path.is_file():
            raise ClusterPrerequisiteError(
                f"cluster.existing.kubeconfigPath: {path} is not a file on this machine "
                "(set the `kubeconfig` secret instead where the file is not available, e.g. in CI)"
            )
        # The provider reads the file itself: its state keeps the path, not the credentials.
        provider_kubeconfig: pulumi.Input[str] = str(path)
        kubeconfig = pulumi.Output.secret(path.read_text())
    elif settings.stack_reference is not None:
        reference = pulumi.StackReference(settings.stack_reference)
        kubeconfig = provider_kubeconfig = pulumi.Output.secret(reference.require_output(settings.stack_output))
    else:
        assert secrets.kubeconfig is not None  # StackSecrets.problems requires exactly one source
        kubeconfig = provider_kubeconfig = secrets.kubeconfig
    provider = cluster_provider(
        "cluster",
        provider_kubeconfig,
        # Rotated credentials or a moved endpoint are the same cluster; another context is another cluster.
        f"existing/{settings.context or 'current-context'}",
        context=settings.context,
    )
    return ClusterHandle(provider=provider, kubeconfig=kubeconfig)


def check_kind_host(minimum_kind_version: str) -> None:
    """Raises ClusterPrerequisiteError naming every missing tool, or a kind too old for the node image."""
    problems = [
        f"`{tool}` is not on PATH; install it: {hint}" for tool, hint in KIND_TOOLS.items() if shutil.which(tool) is None
    ]
    if not problems:
        installed = _kind_version()
        if installed is None or installed < _version_tuple(minimum_kind_version):
            shown = ".".join(map(str, installed)) if installed else "unknown"
            problems.append(
                f"kind {shown} is older than v{minimum_kind_version}, the release that built the pinned node "
                f"image (and writes containerd's certs.d registry config); upgrade: {KIND_TOOLS['kind']}"
            )
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ClusterPrerequisiteError(
            f"cluster.provider is kind, but this machine cannot run it; nothing was created.\n{lines}\n"
            "(`pulumi preview` skips this check.)"
        )


def kind_release_for_every_node_image() -> str:
    """The kind release that passes `check_kind_host` for every pinned node image: the newest that built one."""
    return max((image.kind_version for image in KIND_NODE_IMAGES.values()), key=_version_tuple)


def _kind_version() -> Optional[tuple[int, ...]]:
    result = subprocess.run(["kind", "version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.search(r"v(\d+\.\d+\.\d+)", result.stdout)
    return _version_tuple(match.group(1)) if match else None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))
