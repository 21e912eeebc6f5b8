"""/health, /ready and the Prometheus metrics."""

from __future__ import annotations

import threading

import httpx
import pytest

from fake_upstream import FAKE_MODEL
from gateway_helpers import API_KEY, chat_request, metric_value
from loopback import free_port


def test_health_answers_while_the_upstream_is_down(start_gateway):
    gateway_url = start_gateway(UPSTREAM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")

    response = httpx.get(f"{gateway_url}/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_when_the_upstream_lists_the_model(gateway_url):
    response = httpx.get(f"{gateway_url}/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "models": {FAKE_MODEL: {"ready": True}}}


def test_ready_without_a_configured_model_needs_only_an_answering_upstream(start_gateway, upstream):
    gateway_url = start_gateway(MODEL=None)
    upstream.behaviour.models = ()

    assert httpx.get(f"{gateway_url}/ready").json() == {"status": "ready", "models": {}}


def test_not_ready_when_the_upstream_does_not_list_the_model(gateway_url, upstream):
    upstream.behaviour.models = ("another-model",)

    response = httpx.get(f"{gateway_url}/ready")

    assert response.status_code == 503
    reason = "model 'fake-model' is not listed by the model server"
    assert response.json() == {
        "status": "unavailable",
        "reason": reason,
        "models": {FAKE_MODEL: {"ready": False, "reason": reason}},
    }


def test_not_ready_when_the_upstream_is_unreachable(start_gateway):
    gateway_url = start_gateway(UPSTREAM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")

    response = httpx.get(f"{gateway_url}/ready")

    assert response.status_code == 503
    assert response.json()["reason"] == "cannot connect to the model server"


def test_ready_follows_an_upstream_outage_and_recovery_immediately(gateway_url, upstream):
    readiness = []
    for failure_status in (None, 500, None):
        upstream.behaviour.failure_status = failure_status
        response = httpx.get(f"{gateway_url}/ready")
        readiness.append((response.status_code, response.json().get("reason")))

    assert readiness == [(200, None), (503, "model server answered /models with HTTP 500"), (200, None)]


def test_ready_sends_the_upstream_key(start_gateway, upstream):
    gateway_url = start_gateway(UPSTREAM_API_KEY="upstream-secret")

    httpx.get(f"{gateway_url}/ready")

    assert upstream.requests[-1].headers["authorization"] == "Bearer upstream-secret"


def test_ready_gives_up_on_a_stalled_upstream_within_the_request_timeout(start_gateway, upstream):
    gateway_url = start_gateway(REQUEST_TIMEOUT_SECONDS="0.2")
    upstream.behaviour.response_delay_seconds = 1.0

    response = httpx.get(f"{gateway_url}/ready")

    assert response.status_code == 503
    assert response.json()["reason"] == "the model server did not answer /models within 0.2s"


@pytest.fixture
def metrics(start_gateway):
    """A fresh gateway and a function returning its current metrics exposition."""
    gateway_url = start_gateway()
    client = httpx.Client(base_url=gateway_url, headers={"authorization": f"Bearer {API_KEY}"})
    yield client, lambda: httpx.get(f"{gateway_url}/metrics").text
    client.close()


def test_requests_are_counted_by_route_method_and_status(metrics):
    client, exposition = metrics
    client.post("/v1/chat/completions", json=chat_request())
    client.post("/v1/chat/completions", json=chat_request() | {"model": "missing"})
    client.get("/v1/models", headers={"authorization": "Bearer wrong-key"})
    client.get("/no/such/path/42")

    scraped = exposition()
    assert (
        metric_value(scraped, "gateway_requests_total", route="/v1/chat/completions", method="POST", status="200") == 1
    )
    assert (
        metric_value(scraped, "gateway_requests_total", route="/v1/chat/completions", method="POST", status="404") == 1
    )
    assert metric_value(scraped, "gateway_requests_total", route="/v1/models", method="GET", status="401") == 1
    assert metric_value(scraped, "gateway_requests_total", route="unmatched", method="GET", status="404") == 1
    assert (
        metric_value(scraped, "gateway_request_duration_seconds_count", route="/v1/chat/completions", method="POST")
        == 2
    )
    assert metric_value(scraped, "gateway_requests_in_flight") == 0  # the scrape does not count itself


def test_tokens_are_counted_from_json_and_streamed_usage(metrics):
    client, exposition = metrics
    client.post("/v1/chat/completions", json=chat_request("three words here"))  # usage 3 prompt, 4 completion
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json=chat_request("two words", stream=True, stream_options={"include_usage": True}),
    ) as response:
        response.read()  # usage 2 prompt, 3 completion
    with client.stream("POST", "/v1/chat/completions", json=chat_request("no usage asked", stream=True)) as response:
        response.read()

    scraped = exposition()
    assert metric_value(scraped, "gateway_tokens_total", model=FAKE_MODEL, kind="prompt") == 5
    assert metric_value(scraped, "gateway_tokens_total", model=FAKE_MODEL, kind="completion") == 7


def test_tokens_are_labelled_with_the_routed_model_not_the_one_the_answer_names(metrics, upstream):
    client, exposition = metrics
    upstream.behaviour.models = ("engine-chosen-name",)  # what the engine writes in its answers' `model`

    client.post("/v1/chat/completions", json=chat_request("three words here"))

    scraped = exposition()
    assert metric_value(scraped, "gateway_tokens_total", model=FAKE_MODEL, kind="prompt") == 3
    assert "engine-chosen-name" not in scraped


def test_without_served_models_tokens_get_no_model_label_value(start_gateway, upstream):
    gateway_url = start_gateway(MODEL=None)
    headers = {"authorization": f"Bearer {API_KEY}"}

    httpx.post(f"{gateway_url}/v1/chat/completions", json=chat_request(model="client-chosen-name"), headers=headers)

    scraped = httpx.get(f"{gateway_url}/metrics").text
    assert metric_value(scraped, "gateway_tokens_total", model="", kind="prompt") == 2
    assert "client-chosen-name" not in scraped and FAKE_MODEL not in scraped


def test_upstream_errors_are_counted_by_reason(metrics, upstream):
    client, exposition = metrics
    upstream.behaviour.failure_status = 500
    client.post("/v1/chat/completions", json=chat_request())
    upstream.behaviour.failure_status = None
    upstream.behaviour.break_after_first_chunk = True
    with client.stream("POST", "/v1/chat/completions", json=chat_request(stream=True)) as response:
        response.read()

    scraped = exposition()
    assert (
        metric_value(
            scraped, "gateway_upstream_errors_total", route="/v1/chat/completions", model=FAKE_MODEL,
            reason="server_error",
        )
        == 1
    )
    assert (
        metric_value(
            scraped, "gateway_upstream_errors_total", route="/v1/chat/completions", model=FAKE_MODEL,
            reason="interrupted",
        )
        == 1
    )


def test_time_to_first_streamed_byte_is_measured_before_the_stream_ends(metrics, upstream):
    client, exposition = metrics
    gate = threading.Event()
    upstream.behaviour.stream_gate = gate

    with client.stream("POST", "/v1/chat/completions", json=chat_request(stream=True)) as response:
        chunks = response.iter_raw()
        next(chunks)
        during_stream = exposition()
        gate.set()
        b"".join(chunks)

    assert metric_value(during_stream, "gateway_stream_first_byte_seconds_count", route="/v1/chat/completions") == 1
    assert metric_value(during_stream, "gateway_requests_in_flight") == 1  # the open stream, not the scrape


def test_metrics_include_process_metrics(gateway_url):
    assert "process_resident_memory_bytes" in httpx.get(f"{gateway_url}/metrics").text
