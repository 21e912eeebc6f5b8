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
- the registry container joins a network of the test's (the program's docstring says why).
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from docker_engine import BASE_IMAGE, REGISTRY, build, docker, image_exists, require_docker_setup
from harness import ROOT, stack_config

sys.path.insert(0, str(ROOT / "tests" / "gateway"))
from loopback import free_port  # noqa: E402

pytestmark = pytest.mark.docker

HERE = Path(__file__).resolve().parent
# buildx's default BuildKit image for a docker-container builder (its driver/bkimage package).
BUILDKIT_IMAGE = "moby/buildkit:buildx-stable-1"
PROGRAM = "tests/engine/programs/dev_image_path.py"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def pushed_digest_reference(tag: str) -> str:
    """`tag` pushed to the lane's registry; its `repository@sha256:...` reference."""
    docker("push", tag)
    repository = tag.rsplit(":", 1)[0]
    digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", tag).stdout)
    return next(digest for digest in digests if digest.startswith(f"{repository}@"))


@pytest.fixture(scope="module")
def buildkit_image(toolchain, tmp_path_factory) -> str:
    """The image buildx runs for a docker-container builder, made from the toolchain's BuildKit when this engine
    has none of that name."""
    require_docker_setup()
    if not image_exists(BUILDKIT_IMAGE):
        context = tmp_path_factory.mktemp("buildkit-image")
        shutil.copy(HERE / "buildkit_image" / "Dockerfile", context / "Dockerfile")
        for binary in ("buildkitd", "buildctl"):
            shutil.copy(shutil.which(binary, path=toolchain["PATH"]), context / binary)
        build(context, BUILDKIT_IMAGE, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}")
    return BUILDKIT_IMAGE


@pytest.fixture(scope="module")
def registry_image(tmp_path_factory) -> str:
    require_docker_setup()
    context = tmp_path_factory.mktemp("registry-image")
    shutil.copy(HERE / "registry_image" / "Dockerfile", context / "Dockerfile")
    tag = build(context, f"{REGISTRY}/model-stack/lane-registry:{uuid.uuid4().hex[:12]}",
                "--build-arg", f"BASE_IMAGE={BASE_IMAGE}")
    return pushed_digest_reference(tag)


@pytest.fixture(scope="module")
def gateway_base_image(tmp_path_factory) -> str:
    require_docker_setup()
    context = tmp_path_factory.mktemp("gateway-base")
    shutil.copy(CA_BUNDLE, context / "ca-certificates.crt")
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n")
    return pushed_digest_reference(build(context, f"{REGISTRY}/model-stack/lane-python:{uuid.uuid4().hex[:12]}"))


@pytest.fixture
def registry_network() -> Iterator[str]:
    network = f"lane-registry-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--driver", "bridge", network)
    try:
        yield network
    finally:
        docker("network", "rm", network, check=False)


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
    config["cluster"]["kind"] = {**config["cluster"]["kind"], "registryPort": port, "registryImage": registry_image}
    config["images"] = {**config.get("images", {}), "gatewayBuild": {"baseImage": gateway_base_image}}
    cli = project(PROGRAM)
    cli.env["LANE_REGISTRY_NETWORK"] = registry_network
    stack = cli.stack(f"dev-images-{uuid.uuid4().hex[:8]}", config)
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
        assert "docker-container" in inspected and "network=host" in inspected

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
