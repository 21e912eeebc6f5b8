"""The dev stack's image path on the real engine, through `pulumi up` in the project directory: the local registry
container (the docker plugin), the gateway built by the docker-build plugin with the stack's own host-network
BuildKit builder (created by the command plugin with `docker buildx create`) and pushed to that registry, then pulled
back by its digest; a second `up` rebuilds nothing and shows no changes; `destroy` removes the container and the
builder.

The program is tests/engine/programs/dev_image_path (the dev stack's registry and image functions, without the kind
cluster). Where this machine forces a difference from Pulumi.dev.yaml, the config says so below:
- `cluster.kind.registryImage`: `registry:2` cannot be pulled here; Debian's docker-registry (tests/engine/
  registry_image) pushed to the lane's registry stands in, pinned by digest as the default is;
- `images.gatewayBuild.baseImage`: the Python base image cannot be pulled either; the debootstrap base image with
  this machine's CA bundle (its package indexes are reached through a TLS-intercepting proxy), pushed likewise;
- the BuildKit image the builder runs is made here from the toolchain's buildkitd (tests/engine/buildkit_image);
- `cluster.kind.registryNetwork`: this Docker engine has no default bridge network (`dockerd --bridge=none`), on
  which the registry container would publish no port; it joins a network of the test's.
"""

from __future__ import annotations

import sys
import uuid

import httpx
import pytest

from docker_engine import docker
from harness import ROOT, stack_config

sys.path.insert(0, str(ROOT / "tests" / "gateway"))
from loopback import free_port  # noqa: E402

pytestmark = pytest.mark.docker

PROGRAM = "tests/engine/programs/dev_image_path.py"


def manifest_digest(registry: str, repository: str, tag: str) -> str:
    response = httpx.head(f"http://{registry}/v2/{repository}/manifests/{tag}", headers={"Accept": ", ".join([
        "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json"])}, timeout=10)
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"]


def test_the_dev_stack_builds_and_pushes_the_gateway_to_its_local_registry(
        project, buildkit_image, registry_image, gateway_base_image, registry_network):
    if docker("inspect", "kind-registry", check=False).returncode == 0:
        pytest.skip("a container named kind-registry (the dev stack's registry) already runs on this engine")
    port = free_port()
    config = stack_config("dev")
    config["cluster"]["kind"] = {**config["cluster"]["kind"], "registryPort": port, "registryImage": registry_image,
                                 "registryNetwork": registry_network}
    config["images"] = {**config.get("images", {}), "gatewayBuild": {"baseImage": gateway_base_image}}
    stack = project(PROGRAM).stack(f"dev-images-{uuid.uuid4().hex[:8]}", config)
    builder = f"model-stack-{stack.name}"
    try:
        assert "create" in stack.up()
        outputs = stack.outputs()
        reference = outputs["gatewayImage"]
        repository, _, digest = reference.partition("@")
        assert repository == f"localhost:{port}/model-gateway:dev", reference
        # What the registry container holds under the tag is exactly what the stack recorded.
        assert manifest_digest(f"127.0.0.1:{port}", "model-gateway", "dev") == digest
        # The builder the stack made is a BuildKit container on the host network.
        inspected = docker("buildx", "inspect", builder).stdout
        assert "Driver:        docker-container" in inspected and 'network="host"' in inspected

        # Pulled back by digest (what kind's nodes do), the image runs the gateway.
        docker("pull", reference)
        try:
            version = docker("run", "--rm", "--network", "host", "--entrypoint", "python", reference,
                             "-c", "import model_gateway, sys; print(sys.version_info[:2])").stdout
            assert version.strip()
        finally:
            docker("image", "rm", reference, check=False)

        # A second `up` rebuilds nothing: no change at all.
        assert stack.up() == {}
        assert stack.preview("--expect-no-changes") == {}
    finally:
        destroyed = stack.destroy()
        stack.run("stack", "rm", "--yes")
        docker("volume", "rm", "--force", "kind-registry-data", check=False)  # retained on delete, by design

    assert set(destroyed) == {"delete"}
    assert docker("inspect", "kind-registry", check=False).returncode != 0
    assert docker("buildx", "inspect", builder, check=False).returncode != 0
