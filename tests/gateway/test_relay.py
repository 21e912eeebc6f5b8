"""Relaying the OpenAI API to the model server: answers, streams, headers and upstream failures."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from fake_upstream import FAKE_MODEL
from gateway_helpers import API_KEY, chat_request
from loopback import eventually, free_port
from model_gateway.upstream import relayed_headers


def stream_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def streamed_text(events: list[str], field: str) -> str:
    text = ""
    for event in events:
        if event == "[DONE]":
            break
        for choice in json.loads(event)["choices"]:
            text += choice["delta"].get("content", "") if field == "delta" else choice["text"]
    return text


def test_without_a_configured_model_the_models_are_listed_from_upstream(start_gateway, upstream):
    gateway_url = start_gateway(MODEL=None)
    upstream.behaviour.models = ("engine-model", "another-model")

    response = httpx.get(f"{gateway_url}/v1/models", headers={"authorization": f"Bearer {API_KEY}"})

    assert response.status_code == 200
    assert [model["id"] for model in response.json()["data"]] == ["engine-model", "another-model"]
    assert upstream.requests[-1].path == "/v1/models"


def test_chat_completion_is_relayed_with_its_usage(client):
    response = client.post("/v1/chat/completions", json=chat_request("hello there"))

    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Echo: hello there"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert response.headers["content-type"] == "application/json"


def test_completion_is_relayed(client):
    response = client.post("/v1/completions", json={"model": FAKE_MODEL, "prompt": "say something"})

    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == "Echo: say something"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", chat_request("one two three", stream=True), "delta"),
        ("/v1/completions", {"model": FAKE_MODEL, "prompt": "one two three", "stream": True}, "text"),
    ],
)
def test_streams_are_relayed_as_server_sent_events(client, path, body, field):
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = stream_events(response)

    assert events[-1] == "[DONE]"
    assert streamed_text(events, field) == "Echo: one two three"


def test_stream_events_reach_the_client_before_the_upstream_finishes(client, upstream):
    # The fake upstream holds its stream after the first event until the gate opens: a gateway that buffered
    # the stream could hand nothing to the client before then.
    gate = threading.Event()
    upstream.behaviour.stream_gate = gate

    with client.stream("POST", "/v1/chat/completions", json=chat_request("not buffered", stream=True)) as response:
        chunks = response.iter_raw()
        first_chunk = next(chunks)
        assert b"Echo:" in first_chunk
        assert upstream.finished_streams == 0
        gate.set()
        rest = b"".join(chunks)

    assert b"not" in rest and rest.endswith(b"data: [DONE]\n\n")
    assert (upstream.finished_streams, upstream.abandoned) == (1, 0)


def test_client_disconnect_closes_the_upstream_stream(client, upstream):
    upstream.behaviour.stream_gate = threading.Event()  # never opened: only a disconnect ends this stream

    with client.stream("POST", "/v1/chat/completions", json=chat_request("leaving early", stream=True)) as response:
        assert b"Echo:" in next(response.iter_raw())
    # Leaving the block closes the client's connection mid-stream.

    assert eventually(lambda: upstream.abandoned == 1), "the upstream stream was still open after the client left"
    assert upstream.finished_streams == 0


def test_client_leaving_before_the_answer_cancels_the_upstream_request(client, upstream):
    upstream.behaviour.response_delay_seconds = 5  # a long non-streamed generation

    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=chat_request(), timeout=0.3)

    assert eventually(lambda: upstream.abandoned == 1), "the upstream request went on after the client left"


def test_upstream_gets_its_own_key_and_the_request_id_but_not_the_clients_key(start_gateway, upstream):
    gateway_url = start_gateway(UPSTREAM_API_KEY="upstream-secret")

    response = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json=chat_request(),
        headers={"authorization": f"Bearer {API_KEY}", "x-request-id": "trace-42", "cookie": "session=1"},
    )

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42"
    sent_upstream = upstream.requests[-1].headers
    assert sent_upstream["authorization"] == "Bearer upstream-secret"
    assert sent_upstream["x-request-id"] == "trace-42"
    assert sent_upstream["content-type"] == "application/json"
    assert "cookie" not in sent_upstream


def test_a_request_id_is_made_when_the_client_sends_none_or_a_malformed_one(client, upstream):
    generated = client.post("/v1/chat/completions", json=chat_request()).headers["x-request-id"]
    replaced = client.post(
        "/v1/chat/completions", json=chat_request(), headers={"x-request-id": "bad id with spaces"}
    ).headers["x-request-id"]

    assert len(generated) == 32 and len(replaced) == 32 and generated != replaced
    assert upstream.requests[-1].headers["x-request-id"] == replaced


def test_upstream_client_errors_keep_their_status_and_message_in_openais_format(client):
    response = client.post("/v1/chat/completions", json={"model": FAKE_MODEL, "messages": []})

    assert response.status_code == 400
    assert response.json() == {
        "error": {"message": "invalid request body", "type": "invalid_request_error", "param": None, "code": None}
    }


@pytest.mark.parametrize(
    ("upstream_body", "expected_error"),
    [
        # Older vLLM: the error object at the top level, with a numeric code.
        (
            {"object": "error", "message": "bad value", "type": "BadRequestError", "param": None, "code": 400},
            {"message": "bad value", "type": "invalid_request_error", "param": None, "code": None},
        ),
        # vLLM's context overflow.
        (
            {"error": {"message": "This model's maximum context length is 2048 tokens. However, you requested 4000"}},
            {
                "message": "This model's maximum context length is 2048 tokens. However, you requested 4000",
                "type": "invalid_request_error",
                "param": None,
                "code": "context_length_exceeded",
            },
        ),
        # Ollama: the message as the error.
        (
            {"error": "invalid options"},
            {"message": "invalid options", "type": "invalid_request_error", "param": None, "code": None},
        ),
        (
            "not json",
            {
                "message": "the model server answered HTTP 422",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
        ),
    ],
)
def test_upstream_client_errors_in_other_formats_are_given_openais(client, upstream, upstream_body, expected_error):
    upstream.behaviour.failure_status = 422
    upstream.behaviour.failure_body = upstream_body

    response = client.post("/v1/chat/completions", json=chat_request())

    assert response.status_code == 422
    assert response.json() == {"error": expected_error}


@pytest.mark.parametrize(("upstream_status", "gateway_status"), [(500, 502), (502, 502), (503, 503), (504, 504)])
def test_upstream_server_errors_become_gateway_errors(client, upstream, upstream_status, gateway_status):
    upstream.behaviour.failure_status = upstream_status

    response = client.post("/v1/chat/completions", json=chat_request())

    assert response.status_code == gateway_status
    assert response.json()["error"] == {
        "message": f"the model server failed with HTTP {upstream_status}",
        "type": "upstream_error",
        "param": None,
        "code": None,
    }


def test_upstream_retry_after_is_kept_on_503(client, upstream):
    upstream.behaviour.failure_status = 503
    upstream.behaviour.failure_headers = {"retry-after": "7"}

    response = client.post("/v1/chat/completions", json=chat_request())

    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"


def test_upstream_that_does_not_answer_in_time_gives_504(start_gateway, upstream):
    gateway_url = start_gateway(REQUEST_TIMEOUT_SECONDS="0.2")
    upstream.behaviour.response_delay_seconds = 1.0

    response = httpx.post(
        f"{gateway_url}/v1/chat/completions", json=chat_request(), headers={"authorization": f"Bearer {API_KEY}"}
    )

    assert response.status_code == 504
    assert response.json()["error"] == {
        "message": "the model server sent nothing for 0.2s",
        "type": "upstream_timeout",
        "param": None,
        "code": None,
    }


def test_unreachable_upstream_gives_502(start_gateway):
    gateway_url = start_gateway(UPSTREAM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")

    response = httpx.post(
        f"{gateway_url}/v1/chat/completions", json=chat_request(), headers={"authorization": f"Bearer {API_KEY}"}
    )

    assert response.status_code == 502
    assert response.json()["error"] == {
        "message": "cannot connect to the model server",
        "type": "upstream_unavailable",
        "param": None,
        "code": None,
    }


def test_stream_broken_by_the_upstream_ends_with_an_error_event(client, upstream):
    upstream.behaviour.break_after_first_chunk = True

    with client.stream("POST", "/v1/chat/completions", json=chat_request(stream=True)) as response:
        assert response.status_code == 200
        events = stream_events(response)

    assert "Echo:" in events[0]
    assert json.loads(events[-1]) == {
        "error": {
            "message": "the connection to the model server failed",
            "type": "upstream_error",
            "param": None,
            "code": None,
        }
    }


def test_json_answer_broken_by_the_upstream_is_cut_off_not_completed(client, upstream):
    upstream.behaviour.break_after_first_chunk = True

    # An incomplete body must not pass for a complete one: the gateway drops the connection too.
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v1/chat/completions", json=chat_request())


def test_stream_stalled_by_the_upstream_ends_with_a_timeout_event(start_gateway, upstream):
    gateway_url = start_gateway(REQUEST_TIMEOUT_SECONDS="0.2")
    upstream.behaviour.stream_gate = threading.Event()  # the stream stalls after its first event

    with httpx.stream(
        "POST",
        f"{gateway_url}/v1/chat/completions",
        json=chat_request(stream=True),
        headers={"authorization": f"Bearer {API_KEY}"},
    ) as response:
        events = stream_events(response)

    assert json.loads(events[-1])["error"]["type"] == "upstream_timeout"
    assert eventually(lambda: upstream.abandoned == 1)


def test_request_over_the_size_limit_is_refused_before_reaching_upstream(start_gateway, upstream):
    gateway_url = start_gateway(MAX_REQUEST_BYTES="1000")
    headers = {"authorization": f"Bearer {API_KEY}"}
    oversized = json.dumps(chat_request("x" * 1000)).encode()

    declared = httpx.post(f"{gateway_url}/v1/chat/completions", content=oversized, headers=headers)
    # Without Content-Length (chunked upload) the limit applies while the body is read.
    undeclared = httpx.post(f"{gateway_url}/v1/chat/completions", content=iter([oversized]), headers=headers)
    within_limit = httpx.post(f"{gateway_url}/v1/chat/completions", json=chat_request("small"), headers=headers)

    assert declared.status_code == undeclared.status_code == 413
    assert declared.json()["error"]["message"] == "request body exceeds the gateway's limit of 1000 bytes"
    assert within_limit.status_code == 200
    assert [json.loads(request.body) for request in upstream.requests] == [chat_request("small")]


def test_unknown_paths_and_methods_get_json_errors(client):
    not_found = client.get("/v1/images/generations")
    wrong_method = client.get("/v1/chat/completions")

    assert not_found.status_code == 404
    assert not_found.json()["error"]["type"] == "invalid_request_error"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


def test_a_cookie_the_upstream_sets_is_not_sent_on_later_requests(start_gateway, upstream):
    # A host name, not an IP address: HTTP clients keep cookies only from named hosts.
    gateway_url = start_gateway(UPSTREAM_BASE_URL=upstream.base_url.replace("127.0.0.1", "localhost"))
    headers = {"authorization": f"Bearer {API_KEY}"}
    upstream.behaviour.failure_status = 400
    upstream.behaviour.failure_headers = {"set-cookie": "engine-session=abc; Path=/"}
    httpx.post(f"{gateway_url}/v1/chat/completions", json=chat_request(), headers=headers)
    upstream.behaviour.failure_status = None

    response = httpx.post(f"{gateway_url}/v1/chat/completions", json=chat_request(), headers=headers)

    assert response.status_code == 200
    assert "cookie" not in upstream.requests[-1].headers


def test_relayed_headers_are_lowercase_and_once_each_without_hop_by_hop_cors_or_the_gateways_own():
    upstream_headers = [
        (b"Content-Type", b"application/json"),
        (b"Connection", b"keep-alive, X-Engine-Hop"),
        (b"X-Engine-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Access-Control-Allow-Origin", b""),
        (b"Access-Control-Allow-Credentials", b"true"),
        (b"X-Accel-Buffering", b"no"),
        (b"Server", b"llama.cpp"),
        (b"Vary", b"Origin"),
        (b"vary", b"Accept-Encoding"),
        (b"X-Engine-Slot", b"3"),
    ]

    assert relayed_headers(upstream_headers) == [
        (b"content-type", b"application/json"),
        (b"vary", b"Origin, Accept-Encoding"),
        (b"x-engine-slot", b"3"),
    ]
