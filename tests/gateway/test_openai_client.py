"""What the official OpenAI Python client sees through the gateway: answers, streams, and errors with OpenAI's
status, type and code, so the client raises the same exceptions (and retries the same calls) as with OpenAI."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from fake_upstream import CONTEXT_SIZE, FAKE_MODEL
from gateway_helpers import API_KEY, CLIENT_TIMEOUT_SECONDS
from loopback import eventually

MESSAGES = [{"role": "user", "content": "one two three"}]


def openai_client(gateway_url: str, api_key: str = API_KEY, **options) -> openai.OpenAI:
    # No retries unless a test asks for them: a retried call would hide how many requests reached the engine.
    options = {"max_retries": 0, "timeout": CLIENT_TIMEOUT_SECONDS, **options}
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, **options)


@pytest.fixture
def client(gateway_url: str) -> openai.OpenAI:
    return openai_client(gateway_url)


def chat_calls(upstream) -> int:
    return sum(request.path == "/v1/chat/completions" for request in upstream.requests)


def test_chat_completion_with_usage(client):
    completion = client.chat.completions.create(model=FAKE_MODEL, messages=MESSAGES)

    assert completion.model == FAKE_MODEL
    assert completion.choices[0].message.content == "Echo: one two three"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 4)


def test_stream_chunks_arrive_in_order_and_end_with_the_usage_chunk(client, upstream):
    stream = client.chat.completions.create(
        model=FAKE_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)  # the client stops at `data: [DONE]`

    pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices]
    assert pieces == ["Echo:", " one", " two", " three"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert upstream.finished_streams == 1


def test_completion_stream(client):
    stream = client.completions.create(model=FAKE_MODEL, prompt="say it", stream=True)

    assert "".join(chunk.choices[0].text for chunk in stream) == "Echo: say it"


def test_the_model_list_and_the_accepted_models_agree(client, upstream):
    listed = [model.id for model in client.models.list()]

    assert listed == [FAKE_MODEL]
    assert client.chat.completions.create(model=listed[0], messages=MESSAGES).model == FAKE_MODEL
    assert upstream.requests[0].path == "/v1/chat/completions"  # listing asked the engine nothing


def test_a_model_the_gateway_does_not_serve_is_not_found(client, upstream):
    # The engine (like llama.cpp's) would answer any model name with its own model.
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert raised.value.code == "model_not_found"
    assert raised.value.type == "invalid_request_error"
    assert chat_calls(upstream) == 0


def test_a_request_naming_no_model_is_refused(client, upstream):
    with pytest.raises(openai.BadRequestError) as raised:
        client.post("/chat/completions", body={"messages": MESSAGES}, cast_to=httpx.Response)

    assert raised.value.param == "model"
    assert raised.value.type == "invalid_request_error"
    assert chat_calls(upstream) == 0


@pytest.mark.parametrize("body", [b"", b"{not json", b'["a list"]'])
def test_a_body_that_is_not_a_json_object_gets_400_from_the_gateway(gateway_url, upstream, body):
    # The engine (like llama.cpp's) would fail with a 500, which SDKs retry.
    response = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert chat_calls(upstream) == 0


def test_a_wrong_key_is_an_authentication_error_with_openais_code(gateway_url):
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(gateway_url, api_key="wrong-key").models.list()

    assert raised.value.code == "invalid_api_key"


def test_a_body_over_the_limit_gets_413(start_gateway, upstream):
    client = openai_client(start_gateway(MAX_REQUEST_BYTES="1000"))

    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=FAKE_MODEL, messages=[{"role": "user", "content": "x " * 1000}])

    assert raised.value.status_code == 413
    assert chat_calls(upstream) == 0


def test_a_context_overflow_is_openais_error_and_not_retried(gateway_url, upstream):
    client = openai_client(gateway_url, max_retries=2)
    too_long = [{"role": "user", "content": "word " * (CONTEXT_SIZE + 1)}]

    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=FAKE_MODEL, messages=too_long)

    assert raised.value.code == "context_length_exceeded"
    assert raised.value.type == "invalid_request_error"
    assert "exceeds the available context size" in raised.value.message
    assert chat_calls(upstream) == 1


def test_a_loading_model_gets_503_with_retry_after(client, upstream):
    upstream.behaviour.loading = True

    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=FAKE_MODEL, messages=MESSAGES)

    assert raised.value.status_code == 503
    assert int(raised.value.response.headers["retry-after"]) > 0


def test_closing_a_stream_closes_the_engines_stream(client, upstream):
    upstream.behaviour.stream_gate = threading.Event()  # never opened: only a disconnect ends this stream

    stream = client.chat.completions.create(model=FAKE_MODEL, messages=MESSAGES, stream=True)
    assert next(iter(stream)).choices[0].delta.content == "Echo:"
    stream.close()

    assert eventually(lambda: upstream.abandoned == 1), "the engine's stream was still open after the client left"
    assert upstream.finished_streams == 0


def test_a_client_that_gives_up_on_a_non_streamed_answer_closes_the_engines_request(gateway_url, upstream):
    upstream.behaviour.response_delay_seconds = 5  # a long generation

    with pytest.raises(openai.APITimeoutError):
        openai_client(gateway_url, timeout=0.3).chat.completions.create(model=FAKE_MODEL, messages=MESSAGES)

    assert eventually(lambda: upstream.abandoned == 1), "the engine's request went on after the client left"
