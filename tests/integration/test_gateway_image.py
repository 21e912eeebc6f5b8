"""The gateway's image on a real Docker engine: built from app/Dockerfile, run the way a cluster runs it
(read-only root filesystem, non-root, no capabilities), pushed to a registry and pulled back by digest.

Needs what .ci/docker-setup provides: a Docker engine, the debootstrap base image and a registry on
127.0.0.1:5000. Containers use the host network, so the container reaches the fake model server this test
process serves on loopback, and the test reaches the container's gateway the same way.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Iterator

import httpx
import pytest

from docker_engine import BASE_IMAGE, REGISTRY, build_image, docker, image_exists, require_docker_setup
from docker_engine import GATEWAY_REPOSITORY as REPOSITORY
from fake_upstream import FAKE_MODEL, FakeUpstream
from loopback import answers, eventually, free_port

pytestmark = pytest.mark.docker

OFFICIAL_BASE_IMAGE = "python:3.12-slim-bookworm"
API_KEY = "container-test-key"
RUNTIME_USER = "10001:10001"
# What `docker push` writes: a single-image manifest (Docker's, or OCI's from a containerd image store).
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json")
# The image's health check runs every 15s; the test asks for every second to see the status change quickly.
HEALTH_INTERVAL = "1s"
_WAIT_SECONDS = 60


@pytest.fixture(scope="module", autouse=True)
def docker_setup() -> None:
    require_docker_setup()


@pytest.fixture(scope="module")
def prod_image() -> Iterator[str]:
    tag = build_image("prod")
    yield tag
    docker("image", "rm", "--force", tag, check=False)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream().serving() as upstream:
        yield upstream


@contextlib.contextmanager
def running_container(image: str, upstream: FakeUpstream) -> Iterator[tuple[str, str]]:
    """Runs `image` as a cluster would (read-only root filesystem with a /tmp tmpfs, no capabilities, no
    privilege escalation) until its /health answers; yields (container name, gateway URL)."""
    port = free_port()
    name = f"gateway-test-{uuid.uuid4().hex[:12]}"
    # fmt: off
    docker(
        "run", "--detach", "--name", name,
        "--network", "host",
        "--read-only", "--tmpfs", "/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--health-interval", HEALTH_INTERVAL,
        "--env", f"GATEWAY_UPSTREAM_BASE_URL={upstream.base_url}",
        "--env", f"GATEWAY_PORT={port}",
        "--env", f"GATEWAY_MODEL={FAKE_MODEL}",
        "--env", f"GATEWAY_API_KEYS={API_KEY}",
        image,
    )
    # fmt: on
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{url}/health"), "the container's /health", logs_of=name)
        yield name, url
    finally:
        docker("rm", "--force", name, check=False)


def wait_until(condition, description: str, logs_of: str) -> None:
    if not eventually(condition, timeout=_WAIT_SECONDS):
        logs = docker("logs", logs_of, check=False)
        raise AssertionError(
            f"{description} not reached in {_WAIT_SECONDS}s; container logs:\n{logs.stdout}{logs.stderr}"
        )


def inspect(reference: str, template: str) -> object:
    return json.loads(docker("inspect", "--format", f"{{{{json {template}}}}}", reference).stdout)


@pytest.fixture(scope="class")
def container(prod_image: str, upstream: FakeUpstream) -> Iterator[tuple[str, str]]:
    """The prod image running for the tests of one class, removed before the push test deletes the image."""
    with running_container(prod_image, upstream) as container:
        yield container


class TestRunningContainer:
    def test_image_runs_as_a_numeric_non_root_user_with_a_healthcheck(self, prod_image, container):
        name, _ = container
        assert inspect(prod_image, ".Config.User") == RUNTIME_USER
        assert inspect(prod_image, ".Config.Healthcheck.Test") == [
            "CMD",
            "/opt/venv/bin/python",
            "-m",
            "model_gateway.healthcheck",
        ]
        assert docker("exec", name, "id", "-u").stdout.strip() == "10001"

    def test_root_filesystem_is_read_only_to_the_process(self, container):
        name, _ = container
        attempt = docker("exec", name, "python", "-c", "open('/opt/gateway/probe', 'w')", check=False)

        assert attempt.returncode != 0
        assert "Read-only file system" in attempt.stderr

    def test_docker_healthcheck_becomes_healthy(self, container):
        name, _ = container
        wait_until(lambda: inspect(name, ".State.Health.Status") == "healthy", "health status 'healthy'", logs_of=name)

    def test_ready_reflects_the_upstream(self, container, upstream):
        _, url = container
        upstream.reset()
        ready = httpx.get(f"{url}/ready")
        upstream.behaviour.models = ("another-model",)
        model_missing = httpx.get(f"{url}/ready")
        upstream.reset()
        upstream.behaviour.failure_status = 500
        upstream_failing = httpx.get(f"{url}/ready")
        upstream.reset()
        recovered = httpx.get(f"{url}/ready")

        assert [ready.status_code, model_missing.status_code, upstream_failing.status_code, recovered.status_code] == [
            200,
            503,
            503,
            200,
        ]
        assert model_missing.json()["reason"] == f"model '{FAKE_MODEL}' is not listed by the model server"

    def test_a_chat_stream_passes_through_the_container(self, container, upstream):
        _, url = container
        upstream.reset()
        request = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "from a container"}], "stream": True}

        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=request, headers={"authorization": f"Bearer {API_KEY}"}
        ) as response:
            body = response.read().decode()

        assert response.status_code == 200
        assert body.endswith("data: [DONE]\n\n")
        assert '"content": " container"' in body

    def test_logs_are_json_lines(self, container):
        name, url = container
        httpx.get(f"{url}/v1/models")  # a 401, logged like any request

        logs = docker("logs", name)
        entries = [json.loads(line) for line in (logs.stdout + logs.stderr).splitlines()]

        assert any(entry["message"] == "request" and entry["status"] == 401 for entry in entries)


def test_docker_stop_ends_the_gateway_gracefully_and_promptly(prod_image, upstream):
    # The gateway is PID 1 in its container, where signals without a handler are ignored: it must handle
    # SIGTERM itself, or every stop would wait for Docker's SIGKILL.
    with running_container(prod_image, upstream) as (name, _):
        stop_seconds = timed(lambda: docker("stop", "--time", "10", name))
        assert inspect(name, ".State.ExitCode") == 0
        messages = [json.loads(line)["message"] for line in docker("logs", name).stdout.splitlines()]

    assert stop_seconds < 5
    assert "Application shutdown complete." in messages


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def test_invalid_settings_stop_the_container_with_a_clear_message(prod_image):
    # fmt: off
    result = docker(
        "run", "--rm", "--network", "host", "--read-only",
        "--env", "GATEWAY_UPSTREAM_BASE_URL=http://127.0.0.1:9/v1",
        "--env", "GATEWAY_REQUEST_TIMEOUT_SECONDS=forever",
        prod_image,
        check=False,
    )
    # fmt: on

    assert result.returncode == 2
    assert (
        "model-gateway: GATEWAY_REQUEST_TIMEOUT_SECONDS='forever' is invalid: expected a number of seconds > 0"
        in result.stderr.splitlines()
    )


def test_the_pushed_digest_is_the_built_image(prod_image):
    """What a pull by the pushed digest gets is the image built: the registry's manifest under that digest names the
    image's own config (whose digest is the image id) with the runtime user. Read from the registry itself, since the
    local engine cannot drop the image to pull it back while any container (another test's) runs it."""
    image_id = inspect(prod_image, ".Id")
    docker("push", prod_image)
    [digest_reference] = [
        reference for reference in inspect(prod_image, ".RepoDigests") if reference.startswith(f"{REPOSITORY}@")
    ]
    repository, digest = digest_reference.split("@")
    api = f"http://{REGISTRY}/v2/{repository.removeprefix(REGISTRY + '/')}"

    manifest = httpx.get(f"{api}/manifests/{digest}", headers={"accept": ", ".join(MANIFEST_TYPES)})
    manifest.raise_for_status()
    config = httpx.get(f"{api}/blobs/{manifest.json()['config']['digest']}")
    config.raise_for_status()

    assert manifest.json()["config"]["digest"] == image_id
    assert config.json()["config"]["User"] == RUNTIME_USER


def test_dev_target_serves_with_reload_and_debug_logs(upstream):
    dev_image = build_image("dev")
    try:
        with running_container(dev_image, upstream) as (name, _):
            logs = docker("logs", name)
    finally:
        docker("image", "rm", "--force", dev_image, check=False)

    entries = [json.loads(line) for line in (logs.stdout + logs.stderr).splitlines()]
    assert any(entry["message"].startswith("Started reloader process") for entry in entries)
    # The dev image logs at debug, where the /health calls that waited for the container show up.
    assert any(entry.get("path") == "/health" and entry["level"] == "debug" for entry in entries)


def usr_local_python_base() -> str:
    """The Debian base rearranged the way the official python images are: the interpreter in /usr/local/bin and
    none in /usr/bin. The official image itself cannot be pulled here; this shows the Dockerfile doesn't assume
    where the base keeps Python."""
    tag = f"{BASE_IMAGE}-usr-local-python"
    dockerfile = (
        f"FROM {BASE_IMAGE}\n"
        "RUN mv /usr/bin/python3.11 /usr/local/bin/ && ln -s python3.11 /usr/local/bin/python3"
        " && rm /usr/bin/python3 && ! test -e /usr/bin/python3\n"
    )
    docker("build", "--network", "none", "--tag", tag, "-", input=dockerfile)
    return tag


def official_python_base() -> str:
    if not image_exists(OFFICIAL_BASE_IMAGE):
        pytest.skip(f"{OFFICIAL_BASE_IMAGE} is not in the local engine (no image hub is reachable to pull it)")
    return OFFICIAL_BASE_IMAGE


@pytest.mark.parametrize(
    "make_base", [usr_local_python_base, official_python_base], ids=["usr-local-python", "official-python-slim"]
)
def test_image_builds_from_a_base_with_python_in_usr_local(upstream, make_base):
    image = build_image("prod", base_image=make_base())
    try:
        with running_container(image, upstream) as (name, url):
            assert httpx.get(f"{url}/ready").status_code == 200
            interpreter = docker(
                "exec", name, "python", "-c", "import os, sys; print(os.path.realpath(sys.executable))"
            )
        assert interpreter.stdout.startswith("/usr/local/bin/python3")
    finally:
        docker("image", "rm", "--force", image, check=False)
