"""The dev stack's image path alone: its local registry container and the gateway built by docker-build with the
stack's own host-network builder and pushed there. The rest of the dev stack needs the kind cluster, whose nodes
cannot run from this lane's images yet (README, "Verified / not verified"); these are the functions `__main__.py`
runs for the dev stack, given the registry in place of the cluster that waits for it. It stands in for the project
copy's `__main__.py` (tests/engine/cli.py)."""

import pulumi

from stacks.cluster import ClusterHandle, local_registry
from stacks.config import load
from stacks.images import publish_images

config, secrets = load()
settings = config.cluster.kind
registry = local_registry(settings)
handle = ClusterHandle(provider=None, kubeconfig=None, ready=[registry], local_registry=f"localhost:{settings.registry_port}")
# Nothing mirrored: the engine's and Knative's images come from hubs this machine cannot reach.
images = publish_images(config, secrets, handle, deployed=[])
pulumi.export("gatewayImage", images.gateway_image)
pulumi.export("registryContainer", registry.container_id)
