"""The real Docker engine .ci/docker-setup prepares: Debian's Docker CLI, the debootstrap base image and a registry
on 127.0.0.1:5000. Shared by the tests that build and push real images."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

# Debian's docker.io client: its `docker build` speaks BuildKit (build secrets) without the buildx plugin.
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
BASE_IMAGE = os.environ.get("GATEWAY_TEST_BASE_IMAGE", "model-stack/base:bookworm")
REGISTRY = "127.0.0.1:5000"
APP_DIR = Path(__file__).resolve().parents[1] / "app"
GATEWAY_REPOSITORY = f"{REGISTRY}/model-stack/gateway"
BUILD_TIMEOUT_SECONDS = 600


def docker(*arguments: str, timeout: float = 120, check: bool = True, **options) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [DOCKER, *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},  # builds use BuildKit, for the Dockerfile's secret mounts
        **options,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(arguments)} failed ({result.returncode}):\n{result.stderr}")
    return result


def image_exists(reference: str) -> bool:
    return docker("image", "inspect", reference, check=False).returncode == 0


def missing_docker_setup() -> str | None:
    """What of .ci/docker-setup's work is missing here, or None."""
    if not shutil.which(DOCKER):
        return f"no Docker CLI at {DOCKER}"
    if docker("info", check=False).returncode != 0:
        return "the Docker engine is not running"
    if not image_exists(BASE_IMAGE):
        return f"the base image {BASE_IMAGE} is missing"
    try:
        httpx.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except httpx.HTTPError:
        return f"no registry answers on {REGISTRY}"
    return None


def require_docker_setup() -> None:
    """Skips the calling test without the setup (fails it in CI, where the setup is part of the job)."""
    problem = missing_docker_setup()
    if problem is None:
        return
    message = f"{problem}: run .ci/docker-setup (as root) first"
    if os.environ.get("CI") == "true":
        pytest.fail(f"Docker image tests cannot run in CI: {message}")
    pytest.skip(message)


@contextlib.contextmanager
def build_secrets() -> Iterator[list[str]]:
    """`--secret` arguments that give pip (or apt) inside the build what it has here: the CA bundle it trusts
    (needed behind a TLS-intercepting proxy, harmless elsewhere) and PIP_INDEX_URL when one is set."""
    arguments = []
    ca_candidates = (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt")
    ca_bundle = next((path for path in ca_candidates if path and os.path.isfile(path)), None)
    if ca_bundle:
        arguments += ["--secret", f"id=ca_bundle,src={ca_bundle}"]
    with tempfile.TemporaryDirectory() as directory:
        index_url = os.environ.get("PIP_INDEX_URL")
        if index_url:
            pip_config = Path(directory) / "pip.conf"
            pip_config.write_text(f"[global]\nindex-url = {index_url}\n")
            arguments += ["--secret", f"id=pip_config,src={pip_config}"]
        yield arguments


def build(context: Path, tag: str, *options: str) -> str:
    """`docker build` of `context` as `tag` on the host network (the engine has no bridge network: pip and apt
    reach their indexes this way), with build_secrets(); returns the tag."""
    with build_secrets() as secrets:
        docker("build", "--network", "host", *options, *secrets, "--tag", tag, str(context),
               timeout=BUILD_TIMEOUT_SECONDS)
    return tag


def build_image(target: str, base_image: str = BASE_IMAGE) -> str:
    """Builds app/Dockerfile's `target` (the gateway) from `base_image`, returning a tag unique to this run."""
    tag = f"{GATEWAY_REPOSITORY}:{target}-{uuid.uuid4().hex[:12]}"
    return build(APP_DIR, tag, "--target", target, "--build-arg", f"BASE_IMAGE={base_image}")
