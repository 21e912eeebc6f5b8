"""The real Docker engine .ci/docker-setup prepares: Debian's Docker CLI, the debootstrap base image and a registry
on 127.0.0.1:5000. Shared by the tests that build and push real images."""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx
import pytest

# Debian's docker.io client: its `docker build` speaks BuildKit (build secrets) without the buildx plugin.
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
BASE_IMAGE = os.environ.get("GATEWAY_TEST_BASE_IMAGE", "model-stack/base:bookworm")
REGISTRY = "127.0.0.1:5000"


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
