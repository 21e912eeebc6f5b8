"""kind's cluster config file (kind.x-k8s.io/v1alpha4, https://kind.sigs.k8s.io/docs/user/configuration/)."""


from typing import Any, Sequence, TypedDict

import yaml

# containerd reads per-registry `hosts.toml` files from here; node images since kind v0.27 default to it, and
# setting it keeps older images and custom images on the same layout.
CONTAINERD_REGISTRY_CONFIG_DIR = "/etc/containerd/certs.d"
CONTAINERD_CONFIG_PATCH = f"""[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{CONTAINERD_REGISTRY_CONFIG_DIR}"
"""


class KindPortMapping(TypedDict):
    node_port: int
    """Port on the node (a Service NodePort)."""

    host_port: int
    """Port on 127.0.0.1 of the machine running Docker."""


def kind_cluster_config(
    name: str, node_image: str, workers: int, port_mappings: Sequence[KindPortMapping]
) -> dict[str, Any]:
    """One control plane plus `workers` workers, all on `node_image`; host ports map to node ports on the
    control plane (kube-proxy forwards a NodePort from any node, so one node suffices)."""
    control_plane: dict[str, Any] = {"role": "control-plane", "image": node_image}
    if port_mappings:
        control_plane["extraPortMappings"] = [
            {
                "containerPort": mapping["node_port"],
                "hostPort": mapping["host_port"],
                # Only this machine: a dev cluster's ingress has no authentication in front of it.
                "listenAddress": "127.0.0.1",
                "protocol": "TCP",
            }
            for mapping in port_mappings
        ]
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "name": name,
        "nodes": [control_plane, *({"role": "worker", "image": node_image} for _ in range(workers))],
        "containerdConfigPatches": [CONTAINERD_CONFIG_PATCH],
    }


class _LiteralBlocks(yaml.SafeDumper):
    """Writes multi-line strings (the containerd patch) as `|` blocks, as kind's docs show them."""


_LiteralBlocks.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def kind_config_yaml(config: dict[str, Any]) -> str:
    return yaml.dump(config, Dumper=_LiteralBlocks, sort_keys=False)
