"""A local kind cluster, driven through kind's own CLI, wired to a local registry the way kind's docs do it
(https://kind.sigs.k8s.io/docs/user/local-registry/)."""


from typing import NotRequired, Optional, TypedDict

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s
import yaml

from .cluster_provider import cluster_provider
from .kind_config import CONTAINERD_REGISTRY_CONFIG_DIR, KindPortMapping, kind_cluster_config, kind_config_yaml

# Scripts read their parameters from the environment, so their text never changes and no value is ever
# interpolated into shell syntax. The kubeconfig is the only thing written to stdout.

# An existing cluster of that name (state lost, or made by hand) is adopted only if its nodes run exactly the
# node images the config asks for, one per node; anything else would silently be another cluster.
CREATE_CLUSTER = """set -eu
config="$(cat)"
if kind get clusters | grep -qx "$KIND_CLUSTER"; then
  wanted="$(printf '%s\\n' "$config" | sed -n 's/^[ -]*image: *//p' | sort)"
  running="$(for node in $(kind get nodes --name "$KIND_CLUSTER"); do docker inspect -f '{{.Config.Image}}' "$node"; done | sort)"
  if [ "$running" != "$wanted" ]; then
    {
      echo "A kind cluster named $KIND_CLUSTER already exists, but it is not the one this config describes."
      echo "Its nodes run:"; printf '%s\\n' "$running" | sed 's/^/  /'
      echo "The config wants:"; printf '%s\\n' "$wanted" | sed 's/^/  /'
      echo "Delete it (its workloads and volumes go with it): kind delete cluster --name $KIND_CLUSTER"
      echo "or keep it and give this cluster another name."
    } >&2
    exit 1
  fi
  echo "kind cluster $KIND_CLUSTER already exists with the configured node images; adopting it" >&2
else
  printf '%s\\n' "$config" | kind create cluster --name "$KIND_CLUSTER" --config - --wait 5m >&2
fi
kind get kubeconfig --name "$KIND_CLUSTER"
"""
DELETE_CLUSTER = 'kind delete cluster --name "$KIND_CLUSTER"'
WRITE_REGISTRY_HOSTS = f"""set -eu
for node in $(kind get nodes --name "$KIND_CLUSTER"); do
  docker exec "$node" mkdir -p "{CONTAINERD_REGISTRY_CONFIG_DIR}/$REGISTRY_HOST"
  printf '[host."%s"]\\n' "$REGISTRY_ENDPOINT" | docker exec -i "$node" cp /dev/stdin "{CONTAINERD_REGISTRY_CONFIG_DIR}/$REGISTRY_HOST/hosts.toml"
done
"""
CONNECT_REGISTRY = """set -eu
if [ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY_CONTAINER")" = null ]; then
  docker network connect kind "$REGISTRY_CONTAINER"
fi
"""
LOCAL_REGISTRY_DOCS = "https://kind.sigs.k8s.io/docs/user/local-registry/"


class KindRegistryArgs(TypedDict):
    host: str
    """Registry host in image names, for pushes from this machine and pulls on the nodes alike (`localhost:5001`)."""

    endpoint: pulumi.Input[str]
    """Where containerd on the nodes actually pulls from, over the `kind` Docker network (`http://kind-registry:5000`)."""

    container: pulumi.Input[str]
    """Id or name of the registry container, connected to the `kind` network."""


class KindClusterArgs(TypedDict):
    name: str
    """Cluster name (`kind get clusters`)."""

    node_image: str
    """Digest-pinned `kindest/node` image for every node."""

    workers: int
    """Worker nodes besides the control plane."""

    port_mappings: NotRequired[list[KindPortMapping]]
    """Host ports on 127.0.0.1 forwarded to node ports (e.g. the ingress's)."""

    registry: NotRequired[KindRegistryArgs]
    """A local registry the nodes pull from."""


class KindCluster(pulumi.ComponentResource):
    """A kind cluster whose kubeconfig and provider the rest of the stack deploys through."""

    kubeconfig: pulumi.Output[str]
    """Secret: kubeconfig of the cluster (API server on 127.0.0.1)."""

    provider: k8s.Provider
    """Kubernetes provider for the cluster, for every object the stack puts in it."""

    def __init__(self, name: str, args: KindClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:KindCluster", name, None, opts)
        config = kind_cluster_config(args["name"], args["node_image"], args["workers"], args.get("port_mappings", []))
        cluster = command.local.Command(
            f"{name}-cluster",
            create=CREATE_CLUSTER,
            delete=DELETE_CLUSTER,
            stdin=kind_config_yaml(config),
            environment={"KIND_CLUSTER": args["name"]},
            # Pulumi's log would otherwise show the kubeconfig, client key included.
            logging=command.local.Logging.STDERR,
            opts=pulumi.ResourceOptions(
                parent=self,
                additional_secret_outputs=["stdout"],
                # kind cannot change nodes or port mappings of a running cluster: a new config means a new
                # cluster, and the old one (same name) must be gone before it is created.
                replace_on_changes=["stdin", "environment"],
                delete_before_replace=True,
            ),
        )
        self.kubeconfig = pulumi.Output.secret(cluster.stdout)
        self.provider = cluster_provider(
            name,
            self.kubeconfig,
            # The kubeconfig changes whenever kind re-issues certificates or the API server port; only a new
            # cluster (a new create command) means the objects in it are gone and must be created again.
            cluster.id,
            # A kind cluster deleted behind Pulumi's back leaves nothing to delete; don't block `pulumi destroy`.
            delete_unreachable=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        registry = args.get("registry")
        if registry is not None:
            self._wire_registry(name, args["name"], registry, cluster)
        self.register_outputs({"kubeconfig": self.kubeconfig})

    def _wire_registry(
        self, name: str, cluster_name: str, registry: KindRegistryArgs, cluster: command.local.Command
    ) -> None:
        node_opts = pulumi.ResourceOptions(parent=self, depends_on=[cluster])
        command.local.Command(
            f"{name}-registry-hosts",
            create=WRITE_REGISTRY_HOSTS,
            environment={
                "KIND_CLUSTER": cluster_name,
                "REGISTRY_HOST": registry["host"],
                "REGISTRY_ENDPOINT": registry["endpoint"],
            },
            # The file lives on the node containers: a re-created cluster needs it written again.
            triggers=[cluster.id],
            opts=node_opts,
        )
        command.local.Command(
            f"{name}-registry-network",
            create=CONNECT_REGISTRY,
            environment={"REGISTRY_CONTAINER": registry["container"]},
            # `kind create cluster` creates the `kind` network the first time; the connection is lost when either
            # the registry container or the network's cluster is re-created.
            triggers=[cluster.id],
            opts=node_opts,
        )
        # KEP-1755: tells tools (Tilt, ko, skaffold) which registry this cluster pulls local images from.
        k8s.core.v1.ConfigMap(
            f"{name}-local-registry-hosting",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="local-registry-hosting", namespace="kube-public"),
            data={"localRegistryHosting.v1": yaml.safe_dump({"host": registry["host"], "help": LOCAL_REGISTRY_DOCS})},
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[cluster]),
        )
