"""The gateway's OpenAI conformance against a real llama.cpp server (built by .ci/llama-server) serving a tiny
random-weight model written here: what SDKs see through `python -m model_gateway`, as its image runs it; and a
gateway in front of two such servers, each serving a model of its own (GATEWAY_MODELS).

The model answers gibberish; what is tested is the protocol around the answers."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from harness import ROOT
from llama_server import CONTEXT_TOKENS, llama_server_command, running, write_tiny_llama

# The gateway tests' loopback and metrics helpers, shared rather than copied.
sys.path.insert(0, str(ROOT / "tests" / "gateway"))
from gateway_helpers import APP_DIR, metric_value  # noqa: E402
from loopback import eventually, free_port  # noqa: E402

MODEL = "tiny-llama"
SECOND_MODEL = "tiny-llama-b"
"""Served by a second engine, with other weights, in the tests of a gateway with an engine per model."""
API_KEY = "engine-lane-key"
SCOPED_KEY = "engine-lane-key-for-b"
"""A key limited to SECOND_MODEL."""
ORIGIN = "http://chat.example.com"
# Generous for a tiny model on a busy machine, short enough that a hang fails the test.
CLIENT_TIMEOUT_SECONDS = 30
MAX_TOKENS = 8


@contextmanager
def llama_server(build: Path, directory: Path, alias: str, seed: int, slots: int = 1) -> Iterator[str]:
    """Yields the base URL of a llama.cpp server on loopback serving a tiny model of random weights from `seed`
    as `alias`, with `slots` requests at once."""
    model = directory / f"{alias}.gguf"
    write_tiny_llama(model, build, seed)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = llama_server_command(build, model, alias, port, slots=slots)
    with running(command, f"{url}/health", directory / f"{alias}.log"):
        yield url


@pytest.fixture(scope="module")
def llama_server_url(llama_server_build: Path, tmp_path_factory) -> Iterator[str]:
    """The base URL of a llama.cpp server on loopback serving the tiny model as MODEL."""
    with llama_server(llama_server_build, tmp_path_factory.mktemp("llama-server"), MODEL, seed=0) as url:
        yield url


@contextmanager
def gateway(log: Path, **variables: str) -> Iterator[str]:
    """`python -m model_gateway` with API_KEY, and `variables` (GATEWAY_* settings without the prefix) naming the
    engines. Yields its base URL once /ready says an engine serves its model."""
    port = free_port()
    settings = {"API_KEYS": API_KEY, "PORT": str(port), **variables}
    environment = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    environment |= {"PYTHONPATH": str(APP_DIR), "GATEWAY_HOST": "127.0.0.1"} | {
        f"GATEWAY_{name}": value for name, value in settings.items()}
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "model_gateway"], f"{url}/ready", log, environment):
        yield url


def single_engine(llama_server_url: str) -> dict[str, str]:
    """The settings of a gateway serving MODEL on the one engine at `llama_server_url`."""
    return {"UPSTREAM_BASE_URL": f"{llama_server_url}/v1", "MODEL": MODEL}


@pytest.fixture(scope="module")
def gateway_url(llama_server_url: str, tmp_path_factory) -> Iterator[str]:
    with gateway(tmp_path_factory.mktemp("gateway") / "gateway.log", **single_engine(llama_server_url)) as url:
        yield url


@pytest.fixture(scope="module")
def cors_gateway_url(llama_server_url: str, tmp_path_factory) -> Iterator[str]:
    with gateway(tmp_path_factory.mktemp("cors-gateway") / "gateway.log", **single_engine(llama_server_url),
                 CORS_ALLOW_ORIGINS=ORIGIN) as url:
        yield url


@pytest.fixture(scope="module")
def second_llama_server_url(llama_server_build: Path, tmp_path_factory) -> Iterator[str]:
    """The base URL of another llama.cpp server, serving a tiny model of other weights as SECOND_MODEL."""
    with llama_server(llama_server_build, tmp_path_factory.mktemp("llama-server-b"), SECOND_MODEL, seed=1) as url:
        yield url


@pytest.fixture(scope="module")
def two_model_gateway_url(llama_server_url: str, second_llama_server_url: str, tmp_path_factory) -> Iterator[str]:
    """A gateway serving MODEL and SECOND_MODEL, each on its own engine, to API_KEY, and to SCOPED_KEY for
    SECOND_MODEL only."""
    models = {MODEL: f"{llama_server_url}/v1", SECOND_MODEL: f"{second_llama_server_url}/v1"}
    with gateway(tmp_path_factory.mktemp("two-model-gateway") / "gateway.log", MODELS=json.dumps(models),
                 API_KEYS=f"{API_KEY}\n{SCOPED_KEY} {SECOND_MODEL}") as url:
        yield url


def openai_client(gateway_url: str, api_key: str = API_KEY) -> openai.OpenAI:
    # No retries: the SDK retries 5xx answers, and a 5xx is a defect here that must show, not be papered over.
    return openai.OpenAI(
        base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )


@pytest.fixture
def client(gateway_url: str) -> Iterator[openai.OpenAI]:
    with openai_client(gateway_url) as client:
        yield client


def chat(client: openai.OpenAI, message: str = "Say something.", model: str = MODEL, **fields):
    # Greedy sampling over the whole prompt each time (llama.cpp would otherwise reuse the last request's cached
    # prompt, a different computation), so the same request gets the same answer.
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": message}], max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"cache_prompt": False}, **fields,
    )


def completion_tokens_counted(gateway_url: str) -> float:
    """The gateway's count of the completion tokens the engine reported for MODEL."""
    scraped = httpx.get(f"{gateway_url}/metrics").text
    return metric_value(scraped, "gateway_tokens_total", model=MODEL, kind="completion")


def counts_up_by(gateway_url: str, before: float, tokens: int) -> bool:
    """Whether the gateway's count grows by `tokens`: it counts once the response has been sent, so a client can
    read the whole answer a moment before the count moves."""
    return eventually(lambda: completion_tokens_counted(gateway_url) - before == tokens)


def test_the_gateway_lists_the_model_the_engine_serves(client, gateway_url, llama_server_url):
    engine_models = httpx.get(f"{llama_server_url}/v1/models").json()

    assert [model.id for model in client.models.list()] == [MODEL]
    assert MODEL in [model["id"] for model in engine_models["data"]]
    # /ready checks the engine's own list, which is what let the gateway fixture start.
    assert httpx.get(f"{gateway_url}/ready").json() == {"status": "ready", "models": {MODEL: {"ready": True}}}


def test_a_chat_completion_has_content_and_usage_the_gateway_counts(client, gateway_url):
    counted_before = completion_tokens_counted(gateway_url)

    completion = chat(client)

    [choice] = completion.choices
    assert completion.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert counts_up_by(gateway_url, counted_before, usage.completion_tokens)


def test_a_streamed_chat_completion_arrives_in_order_and_ends_with_usage(client, gateway_url):
    counted_before = completion_tokens_counted(gateway_url)
    plain = chat(client)

    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))

    *answer, usage_chunk = chunks
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert answer and all(len(chunk.choices) == 1 for chunk in answer)
    finish_reasons = [chunk.choices[0].finish_reason for chunk in answer]
    # Only the last chunk of the answer finishes it, and the usage comes after it, alone.
    assert finish_reasons[:-1] == [None] * (len(answer) - 1) and finish_reasons[-1] in ("stop", "length")
    assert "".join(chunk.choices[0].delta.content or "" for chunk in answer) == plain.choices[0].message.content
    assert usage_chunk.choices == []
    assert 0 < usage_chunk.usage.completion_tokens <= MAX_TOKENS
    both_answers = plain.usage.completion_tokens + usage_chunk.usage.completion_tokens
    assert counts_up_by(gateway_url, counted_before, both_answers)


def test_a_stream_ends_with_the_done_event(gateway_url):
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS,
               "stream": True}
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", json=request,
                      headers={"authorization": f"Bearer {API_KEY}"}, timeout=CLIENT_TIMEOUT_SECONDS) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    *answer, last = events
    assert last == "[DONE]"
    assert all(json.loads(event)["object"] == "chat.completion.chunk" for event in answer)


def test_a_model_the_gateway_does_not_serve_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

    assert raised.value.status_code == 404
    assert raised.value.code == "model_not_found"


@pytest.mark.parametrize(
    "body", [b"", b'{"model": "tiny-llama", "messages": [', b"[]"], ids=["empty", "truncated", "array"]
)
def test_a_body_that_is_not_a_json_object_is_a_client_error(gateway_url, body):
    response = httpx.post(
        f"{gateway_url}/v1/chat/completions", content=body,
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_prompt_longer_than_the_context_is_a_context_length_error(client):
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, "hello " * (2 * CONTEXT_TOKENS))

    assert raised.value.status_code == 400
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.type == "invalid_request_error"


def test_a_wrong_api_key_is_refused(gateway_url):
    with openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="not-the-key", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError) as raised:
            chat(stranger)

    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"


def post_from_origin(base_url: str, stream: bool) -> httpx.Response:
    """A browser's chat request from ORIGIN, answered 200."""
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS,
              "stream": stream},
        headers={"authorization": f"Bearer {API_KEY}", "origin": ORIGIN},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )
    assert response.status_code == 200
    return response


def cors_headers(response: httpx.Response) -> Counter[str]:
    """How often each CORS header occurs in the response."""
    return Counter(name.decode().lower() for name, _ in response.headers.raw
                   if name.lower().startswith(b"access-control-"))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_without_allowed_origins_the_gateway_sends_no_cors_headers(llama_server_url, gateway_url, stream):
    # The engine answers CORS itself (it echoes any Origin): those are the headers the gateway must drop.
    assert cors_headers(post_from_origin(llama_server_url, stream))["access-control-allow-origin"] == 1

    assert cors_headers(post_from_origin(gateway_url, stream)) == Counter()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_with_allowed_origins_each_cors_header_comes_once(cors_gateway_url, stream):
    response = post_from_origin(cors_gateway_url, stream)

    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert set(cors_headers(response).values()) == {1}


def test_the_engine_serves_neither_its_web_ui_nor_its_slots(llama_server_url):
    settings = httpx.get(f"{llama_server_url}/props").json()
    page = httpx.get(f"{llama_server_url}/")
    slots = httpx.get(f"{llama_server_url}/slots")

    assert settings["ui"] is False and settings["endpoint_slots"] is False
    assert page.status_code == 404 and not page.headers.get("content-type", "").startswith("text/html")
    assert slots.status_code == 501


def test_a_gateway_of_two_engines_lists_both_models_and_checks_both(two_model_gateway_url):
    with openai_client(two_model_gateway_url) as client:
        listed = [model.id for model in client.models.list()]

    assert listed == [MODEL, SECOND_MODEL]
    assert httpx.get(f"{two_model_gateway_url}/ready").json() == {
        "status": "ready", "models": {MODEL: {"ready": True}, SECOND_MODEL: {"ready": True}}}


@pytest.mark.parametrize("model", [MODEL, SECOND_MODEL])
def test_each_model_is_answered_by_its_own_engine(two_model_gateway_url, model):
    with openai_client(two_model_gateway_url) as client:
        plain = chat(client, model=model)
        chunks = list(chat(client, model=model, stream=True))

    # llama.cpp names the model it serves (its --alias) in every answer, whatever model the request named.
    assert plain.model == model
    assert {chunk.model for chunk in chunks} == {model}
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == plain.choices[0].message.content


def test_a_model_neither_engine_serves_is_not_found(two_model_gateway_url):
    with openai_client(two_model_gateway_url) as client, pytest.raises(openai.NotFoundError) as raised:
        chat(client, model="gpt-4o")

    assert raised.value.code == "model_not_found"


def test_a_key_limited_to_one_model_cannot_use_or_see_the_other(two_model_gateway_url):
    with openai_client(two_model_gateway_url, api_key=SCOPED_KEY) as client:
        with pytest.raises(openai.NotFoundError) as raised:
            chat(client, model=MODEL)
        allowed = chat(client, model=SECOND_MODEL)
        listed = [model.id for model in client.models.list()]

    assert (raised.value.status_code, raised.value.code, raised.value.param) == (404, "model_not_found", "model")
    assert allowed.model == SECOND_MODEL
    assert listed == [SECOND_MODEL]
