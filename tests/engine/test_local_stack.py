"""The local stack (`runtime: docker`, Pulumi.local.yaml) on the real Docker engine, through the commands a user
types in the project directory (tests/engine/cli.py: the `pulumi` CLI, the Python language host, the docker plugin):
two llama.cpp models, each on an engine container of its own, behind one gateway container, talked to with the
official `openai` client; then its lifecycle: `pulumi preview --expect-no-changes`, a one-setting change, `pulumi
destroy`, and `pulumi up` again, which finds the models in the retained volumes.

What the stack pulls is made here, with no image hub:
- the engine image: the llama-server .ci/llama-server built, on the debootstrap base image, with curl (the model
  pull and the health check), pushed to the local registry (tests/engine/llama_cpp_image/Dockerfile);
- the gateway image: app/Dockerfile's `prod` target, pushed there too (`gateway.image`: the stack builds nothing);
- the model hub: two tiny random-weight GGUF files (tests/engine/llama_server.py) served over HTTP by this process
  as `<hub>/<owner>/<repo>/resolve/main/<file>`, which the stack's pull jobs fetch with curl.

The hub listens on the host's address on a bridge network of its own that nothing else joins (made here, removed
after): the stack's containers reach it through the host, and nothing outside this machine can.
The stack's container names are fixed (`gateway`, `model-runner-<model>`…): a Docker engine already running
containers of those names skips the test. Needs what .ci/docker-setup provides.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from docker_engine import build_image, docker, require_docker_setup
from harness import ROOT, stack_config
from lane_images import ENGINE_REPOSITORY, engine_image_tag
from llama_server import write_tiny_llama
from model_hub import serving

sys.path.insert(0, str(ROOT / "tests" / "gateway"))
from loopback import free_port  # noqa: E402

pytestmark = pytest.mark.docker

REPOSITORY = "engine-lane/tiny-model"
MODELS = {"chat": f"{REPOSITORY}/tiny.gguf", "small": f"{REPOSITORY}/tinier.gguf"}
CHAT, SMALL = MODELS["chat"], MODELS["small"]
API_KEY = "local-stack-key"
SCOPED_KEY = "local-stack-key-for-small"
"""A key limited to SMALL."""
CONTAINERS = ["gateway", *(f"model-runner-{name}{job}" for name in MODELS for job in ("", "-pull", "-cache-owner"))]
LOAD_BUDGET_SECONDS = 30
READY_SECONDS = 120
CLIENT_TIMEOUT_SECONDS = 30
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def docker_setup() -> None:
    require_docker_setup()
    taken = [name for name in CONTAINERS if docker("inspect", name, check=False).returncode == 0]
    if taken:
        pytest.skip(f"containers named as the local stack's already exist on this Docker engine: {taken}")


def image_id(reference: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()


@contextmanager
def pushed(tag: str) -> Iterator[str]:
    """`tag` pushed to the local registry. Afterwards its references go from this engine: the tag and the digest
    reference the stack's pull added (not the image by id, which an identical build elsewhere may share)."""
    try:
        docker("push", tag)
        yield tag
    finally:
        repository = tag.rsplit(":", 1)[0]
        digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", tag).stdout)
        for reference in [tag, *(digest for digest in digests if digest.startswith(f"{repository}@"))]:
            docker("image", "rm", reference, check=False)


@pytest.fixture(scope="module")
def engine_image(docker_setup, llama_server_build: Path, tmp_path_factory) -> Iterator[str]:
    """The llama.cpp engine image, pushed to the local registry; its reference."""
    with pushed(engine_image_tag(llama_server_build, tmp_path_factory.mktemp("engine-image"))) as tag:
        yield tag


@pytest.fixture(scope="module")
def gateway_image(docker_setup) -> Iterator[str]:
    """The gateway's prod image, pushed to the local registry; its reference."""
    with pushed(build_image("prod")) as tag:
        yield tag


@pytest.fixture(scope="module")
def model_hub(docker_setup, llama_server_build: Path, tmp_path_factory) -> Iterator[str]:
    """A Hugging Face-like hub holding MODELS (other weights each), on the host address of a bridge network of its
    own; its base URL."""
    root = tmp_path_factory.mktemp("hub")
    for seed, model in enumerate(MODELS.values()):
        repository, _, filename = model.rpartition("/")
        path = root / repository / "resolve" / "main" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tiny_llama(path, llama_server_build, seed=seed)
    network = f"engine-hub-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--driver", "bridge", network)
    try:
        [ipam] = json.loads(docker("network", "inspect", "--format", "{{json .IPAM.Config}}", network).stdout)
        with serving(root, ipam["Gateway"]) as hub:
            yield hub.url
    finally:
        docker("network", "rm", network, check=False)


def local_config(engine_image: str, gateway_image: str, model_hub: str, suffix: str, port: int) -> dict:
    """Pulumi.local.yaml with its runner moved into two models served from `model_hub`, the prebuilt gateway, and
    names and a port of this run."""
    config = stack_config("local")
    del config["runner"]
    config["models"] = {
        name: {"engine": "llama.cpp", "model": model, "image": engine_image, "modelHub": model_hub,
               "loadBudgetSeconds": LOAD_BUDGET_SECONDS}
        for name, model in MODELS.items()
    }
    config["gateway"] = {**config.get("gateway", {}), "image": gateway_image}
    docker_settings = config["docker"]
    docker_settings["network"] = f"engine-local-{suffix}"
    docker_settings["cacheVolume"] = f"engine-models-{suffix}"
    # The runners get a memory limit each; the 2-core machines of CI have 2 CPUs to share between both.
    docker_settings["runner"] = {**docker_settings["runner"], "memory": "512m", "memorySwap": "512m", "cpus": 1}
    docker_settings["gateway"] = {**docker_settings["gateway"], "ports": [f"127.0.0.1:{port}:8080"]}
    return config


def wait_ready(url: str, seconds: float = READY_SECONDS) -> dict:
    """The gateway's /ready once it answers 200 (both engines have loaded their models)."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/ready", timeout=5)
            if response.status_code == 200:
                return response.json()
            last = f"{response.status_code} {response.text}"
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.5)
    logs = {name: docker("logs", "--tail", "20", name, check=False) for name in CONTAINERS}
    raise AssertionError(f"the gateway was not ready within {seconds}s ({last}); logs:\n" + "\n".join(
        f"--- {name}\n{result.stdout}{result.stderr}" for name, result in logs.items()))


def client(base_url: str, api_key: str = API_KEY) -> openai.OpenAI:
    # No retries: a 5xx is a defect here that must show.
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS)


def chat(openai_client: openai.OpenAI, model: str, **fields):
    return openai_client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say something."}], max_tokens=MAX_TOKENS,
        temperature=0, extra_body={"cache_prompt": False}, **fields,
    )


def container_ids() -> dict[str, str]:
    return {name: docker("inspect", "--format", "{{.Id}}", name).stdout.strip()
            for name in ["gateway", *(f"model-runner-{model}" for model in MODELS)]}


def test_the_local_stack_serves_two_llama_cpp_models_behind_one_gateway(
        project, engine_image, gateway_image, model_hub):
    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    config = local_config(engine_image, gateway_image, model_hub, suffix, port)
    stack = project().stack(f"local-{suffix}", config, secrets={"gatewayApiKeys": f"{API_KEY}\n{SCOPED_KEY} {SMALL}"})
    volumes = [f"engine-models-{suffix}-{name}" for name in MODELS]
    destroyed = None
    try:
        assert "create" in stack.up()
        base_url = stack.outputs()["gatewayUrl"]
        assert base_url == f"http://127.0.0.1:{port}/v1"
        ready = wait_ready(base_url.removesuffix("/v1"))
        assert ready == {"status": "ready", "models": {CHAT: {"ready": True}, SMALL: {"ready": True}}}

        with client(base_url) as everyone:
            assert sorted(model.id for model in everyone.models.list()) == sorted([CHAT, SMALL])
            for model in (CHAT, SMALL):
                plain = chat(everyone, model)
                chunks = list(chat(everyone, model, stream=True))
                # llama.cpp names the model it serves (its --alias) in every answer: this model's own engine.
                assert plain.model == model
                assert plain.choices[0].message.content
                assert {chunk.model for chunk in chunks} == {model}
                streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
                assert streamed == plain.choices[0].message.content
            with pytest.raises(openai.NotFoundError) as not_served:
                chat(everyone, "gpt-4o")
            assert not_served.value.code == "model_not_found"

        with client(base_url, SCOPED_KEY) as scoped:
            with pytest.raises(openai.NotFoundError) as refused:
                chat(scoped, CHAT)
            assert refused.value.code == "model_not_found"
            assert chat(scoped, SMALL).model == SMALL
            assert [model.id for model in scoped.models.list()] == [SMALL]

        # Each engine container serves its own model from its own cache volume.
        for name, model in MODELS.items():
            inspected = json.loads(docker("inspect", f"model-runner-{name}").stdout)[0]
            assert inspected["State"]["Running"] and inspected["Config"]["User"] == "10001:10001"
            # The stack pulled the pushed image and runs it by its registry digest.
            assert inspected["Config"]["Image"].startswith(f"{ENGINE_REPOSITORY}@sha256:")
            assert inspected["Image"] == image_id(engine_image)
            assert any(mount.get("Name") == f"engine-models-{suffix}-{name}" for mount in inspected["Mounts"])

        # What Docker reads back must not show as a diff.
        assert stack.preview("--expect-no-changes") == {}

        # One setting: the small model's load budget. Its engine container's health check gives it that long to
        # start, and the gateway holds its requests that long while it has no ready engine; the other model's
        # engine is not touched.
        before = container_ids()
        config["models"]["small"]["loadBudgetSeconds"] = LOAD_BUDGET_SECONDS + 30
        stack.write_config(config)
        planned = stack.planned_steps()
        assert planned.pop("gateway") == "replace" and set(planned) == {"model-runner-small"}, planned
        stack.up()
        after = container_ids()
        assert after["model-runner-chat"] == before["model-runner-chat"]
        inspected = json.loads(docker("inspect", "model-runner-small").stdout)[0]
        start_period_ns = inspected["Config"]["Healthcheck"]["StartPeriod"]
        assert start_period_ns == (LOAD_BUDGET_SECONDS + 30) * 10**9, start_period_ns
        gateway_env = json.loads(docker("inspect", "gateway").stdout)[0]["Config"]["Env"]
        routing = json.loads(next(item.split("=", 1)[1] for item in gateway_env if item.startswith("GATEWAY_ROUTING=")))
        assert routing[SMALL]["holdSeconds"] == LOAD_BUDGET_SECONDS + 30, routing
        wait_ready(base_url.removesuffix("/v1"))

        # Destroy, then up again: the models come from the retained volumes, and every model answers again.
        assert set(stack.destroy()) == {"delete"}
        retained = [volume for volume in volumes if docker("volume", "inspect", volume, check=False).returncode == 0]
        assert retained == volumes
        assert "create" in stack.up()
        wait_ready(base_url.removesuffix("/v1"))
        with client(base_url) as everyone:
            assert {chat(everyone, model).model for model in (CHAT, SMALL)} == {CHAT, SMALL}
    finally:
        destroyed = stack.destroy()
        stack.run("stack", "rm", "--yes")
        # Retained on delete by design (the next `pulumi up` finds the models in them): removed here.
        for volume in volumes:
            docker("volume", "rm", "--force", volume, check=False)

    assert set(destroyed) == {"delete"}
    for name in CONTAINERS:
        assert docker("inspect", name, check=False).returncode != 0, f"{name} outlived the stack"
    assert docker("network", "inspect", f"engine-local-{suffix}", check=False).returncode != 0
