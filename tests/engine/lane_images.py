"""Images the dev stack's lane tests need that no hub can supply here, built once a session from what this machine
has and pushed to the lane's registry (127.0.0.1:5000) where the stack pulls them:
- the BuildKit image buildx runs for the stack's docker-container builder, from the toolchain's buildkitd
  (tests/engine/buildkit_image);
- the registry image of the stack's local registry container: Debian's docker-registry (tests/engine/registry_image),
  standing in for `registry:2`;
- the gateway build's base: the debootstrap base image with this machine's CA bundle (its package indexes are reached
  through a TLS-intercepting proxy), standing in for the Python image;
- the llama.cpp engine image: the llama-server .ci/llama-server built, on the debootstrap base image, with curl for the
  model pull and the health check (tests/engine/llama_cpp_image);
- the metrics pipeline's images: Prometheus from the toolchain's build of the release the stack installs, and a
  stand-in for kube-state-metrics, whose module the proxy does not serve (tests/engine/kube_state_metrics_stand_in);
- KEDA's three images, from the toolchain's build of the release the stack installs (tests/engine/keda_image).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from components.image_rewrite import split_reference
from components.model_autoscaler import keda_images as keda_images_released
from docker_engine import BASE_IMAGE, REGISTRY, build, docker, image_exists, require_docker_setup

HERE = Path(__file__).resolve().parent
# buildx's default BuildKit image for a docker-container builder (its driver/bkimage package).
BUILDKIT_IMAGE = "moby/buildkit:buildx-stable-1"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ENGINE_DOCKERFILE = HERE / "llama_cpp_image" / "Dockerfile"
APT_INSTALL = HERE / "apt-install"
ENGINE_REPOSITORY = f"{REGISTRY}/model-stack/llama-cpp-engine"
KEDA_REPOSITORY = f"{REGISTRY}/kedacore"
# The binary each image of KEDA's release runs (its Deployments' commands), as the toolchain names them.
KEDA_BINARIES = {"keda": "keda", "keda-metrics-apiserver": "keda-adapter",
                 "keda-admission-webhooks": "keda-admission-webhooks"}


def pushed_digest_reference(tag: str) -> str:
    """`tag` pushed to the lane's registry; its `repository@sha256:...` reference."""
    docker("push", tag)
    repository = tag.rsplit(":", 1)[0]
    digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", tag).stdout)
    return next(digest for digest in digests if digest.startswith(f"{repository}@"))


@pytest.fixture(scope="session")
def buildkit_image(toolchain, tmp_path_factory) -> str:
    """The image buildx runs for a docker-container builder, made from the toolchain's BuildKit when this engine
    has none of that name."""
    require_docker_setup()
    if not image_exists(BUILDKIT_IMAGE):
        context = lane_context(tmp_path_factory.mktemp("buildkit-image"), [
            HERE / "buildkit_image" / "Dockerfile",
            *(Path(shutil.which(binary, path=toolchain["PATH"])) for binary in ("buildkitd", "buildctl"))])
        build(context, BUILDKIT_IMAGE, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}")
    return BUILDKIT_IMAGE


@pytest.fixture(scope="session")
def registry_image(tmp_path_factory) -> str:
    require_docker_setup()
    return pushed_image(tmp_path_factory.mktemp("registry-image"),
                        f"{REGISTRY}/model-stack/lane-registry:{uuid.uuid4().hex[:12]}",
                        [HERE / "registry_image" / "Dockerfile"])


@pytest.fixture(scope="session")
def gateway_base_image(tmp_path_factory) -> str:
    require_docker_setup()
    context = tmp_path_factory.mktemp("gateway-base")
    shutil.copy(CA_BUNDLE, context / "ca-certificates.crt")
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n")
    return pushed_digest_reference(build(context, f"{REGISTRY}/model-stack/lane-python:{uuid.uuid4().hex[:12]}"))


@pytest.fixture(scope="session")
def engine_image_digest(llama_server_build: Path, tmp_path_factory) -> str:
    """The llama.cpp engine image pushed to the lane's registry; its `repository@sha256:...` reference."""
    require_docker_setup()
    return pushed_digest_reference(engine_image_tag(llama_server_build, tmp_path_factory.mktemp("engine-image")))


def engine_image_tag(llama_server_build: Path, work: Path) -> str:
    """The llama.cpp engine image built here, under a tag of its own (not pushed)."""
    return lane_image(work, f"{ENGINE_REPOSITORY}:{uuid.uuid4().hex[:12]}",
                      [ENGINE_DOCKERFILE, llama_server_build / "llama-server"])


def lane_context(work: Path, files: list[Path]) -> Path:
    """`work` as the build context of a lane image: `files` (its Dockerfile among them), each copied in by its name,
    and the apt-install script its Dockerfile may mount."""
    for file in [*files, APT_INSTALL]:
        shutil.copy(file, work / file.name)
    return work


def lane_image(work: Path, tag: str, files: list[Path], *build_args: str) -> str:
    """The image built on the debootstrap base from lane_context(work, files), as `tag`."""
    return build(lane_context(work, files), tag, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *build_args)


def pushed_image(work: Path, tag: str, files: list[Path], *build_args: str) -> str:
    """lane_image(), pushed to the lane's registry as `tag`; its digest reference."""
    return pushed_digest_reference(lane_image(work, tag, files, *build_args))


@pytest.fixture(scope="session")
def prometheus_image(toolchain, tmp_path_factory) -> str:
    require_docker_setup()
    return pushed_image(tmp_path_factory.mktemp("prometheus-image"),
                        f"{REGISTRY}/model-stack/lane-prometheus:{uuid.uuid4().hex[:12]}",
                        [HERE / "prometheus_image" / "Dockerfile",
                         Path(shutil.which("prometheus", path=toolchain["PATH"]))])


@pytest.fixture(scope="session")
def kube_state_metrics_image(tmp_path_factory) -> str:
    require_docker_setup()
    return pushed_image(tmp_path_factory.mktemp("kube-state-metrics-image"),
                        f"{REGISTRY}/model-stack/lane-kube-state-metrics:{uuid.uuid4().hex[:12]}",
                        [HERE / "kube_state_metrics_stand_in" / name for name in ("Dockerfile", "serve.py")])


@pytest.fixture(scope="session")
def keda_images(toolchain, tmp_path_factory) -> dict[str, str]:
    """Each image of KEDA's release manifest (`ghcr.io/kedacore/<name>:<version>`) -> the same image built here from
    the toolchain's KEDA, pushed to the lane's registry as `kedacore/<name>:<version>`: that reference with its digest,
    so that a mirror of it keeps the release's tag, which the manifest pulls."""
    require_docker_setup()
    built = {}
    for image in keda_images_released():
        repository, tag = split_reference(image)
        name = repository.rpartition("/")[2]
        binary = Path(shutil.which(KEDA_BINARIES[name], path=toolchain["PATH"]))
        pushed = pushed_image(tmp_path_factory.mktemp(f"{name}-image"), f"{KEDA_REPOSITORY}/{name}{tag}",
                              [HERE / "keda_image" / "Dockerfile", binary], "--build-arg", f"BINARY={binary.name}")
        built[image] = pushed.replace("@", f"{tag}@")
    return built


@pytest.fixture
def registry_network() -> Iterator[str]:
    """A bridge network of this test, which the stack's registry container joins: this Docker engine has no
    default bridge network (`dockerd --bridge=none`), on which a container publishes no port."""
    network = f"lane-registry-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--driver", "bridge", network)
    try:
        yield network
    finally:
        docker("network", "rm", network, check=False)
