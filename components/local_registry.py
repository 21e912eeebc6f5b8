"""A local image registry container, the one kind's docs pair with a kind cluster."""


from typing import NotRequired, Optional, TypedDict

import pulumi
import pulumi_docker as docker

# registry 2.8.3 (the `registry:2` line), pinned to its multi-platform index digest.
REGISTRY_IMAGE = "registry:2.8.3@sha256:a3d8aaa63ed8681a604f1dea0aa03f100d5895b6a58ace528858a7b332415373"
REGISTRY_CONTAINER_PORT = 5000


class LocalRegistryArgs(TypedDict):
    host_port: int
    """Port published on 127.0.0.1: images are pushed to `localhost:<host_port>`."""

    container_name: NotRequired[str]
    """Container name, which is also its host name on the Docker networks it joins (default `kind-registry`)."""

    network: NotRequired[str]
    """A Docker network the container joins when it is created, for an engine without a default bridge network
    (`dockerd --bridge=none`), where a container on no network publishes no port; unset uses the default."""

    image: NotRequired[str]
    """The registry image (default `registry:2.8.3`, pinned by digest): a copy where Docker Hub is out of reach.
    It must serve the distribution API on port 5000 with its storage under /var/lib/registry, as `registry:2`
    does."""


class LocalRegistry(pulumi.ComponentResource):
    """`registry:2` on 127.0.0.1 with its data on a named volume, so pushed images survive container replacement."""

    push_host: pulumi.Output[str]
    """Registry host as seen from this machine (`localhost:5001`): push here."""

    cluster_endpoint: pulumi.Output[str]
    """URL under which containers on a shared Docker network reach the registry (`http://kind-registry:5000`)."""

    container_id: pulumi.Output[str]
    """The registry container (for `docker network connect`)."""

    def __init__(self, name: str, args: LocalRegistryArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:LocalRegistry", name, None, opts)
        container_name = args.get("container_name", "kind-registry")
        image = docker.RemoteImage(
            f"{name}-image", name=args.get("image", REGISTRY_IMAGE), keep_locally=True,
            opts=pulumi.ResourceOptions(parent=self)
        )
        volume = docker.Volume(
            f"{name}-data",
            name=f"{container_name}-data",
            # Deleting the stack would otherwise throw away every pushed image along with the container.
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
        )
        container = docker.Container(
            f"{name}-container",
            name=container_name,
            image=image.image_id,
            restart="unless-stopped",
            ports=[docker.ContainerPortArgs(internal=REGISTRY_CONTAINER_PORT, external=args["host_port"], ip="127.0.0.1")],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path="/var/lib/registry")],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args["network"])] if "network" in args else None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.push_host = pulumi.Output.from_input(f"localhost:{args['host_port']}")
        self.cluster_endpoint = container.name.apply(lambda host: f"http://{host}:{REGISTRY_CONTAINER_PORT}")
        self.container_id = container.id
        self.register_outputs(
            {"push_host": self.push_host, "cluster_endpoint": self.cluster_endpoint, "container_id": self.container_id}
        )
