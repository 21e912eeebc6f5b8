"""A gateway serving several models, each on its own engine (GATEWAY_MODELS): routing by the requested model,
the model list, keys limited to models, /ready per model, and metrics labelled by model."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from fake_upstream import FAKE_MODEL, SECOND_MODEL
from gateway_helpers import API_KEY, CLIENT_TIMEOUT_SECONDS, chat_request, metric_value
from loopback import free_port

SCOPED_KEY = "scoped-key-0123456789"
"""A key limited to SECOND_MODEL."""
MESSAGES = [{"role": "user", "content": "one two three"}]


@pytest.fixture
def start_two_model_gateway(start_gateway, upstream, second_upstream):
    """Starts a gateway serving FAKE_MODEL on `upstream` and SECOND_MODEL on `second_upstream` (or on the base
    URLs given), to API_KEY and to SCOPED_KEY for SECOND_MODEL only; returns its base URL."""

    def start(first_url: str = upstream.base_url, second_url: str = second_upstream.base_url, **variables) -> str:
        return start_gateway(
            UPSTREAM_BASE_URL=None,
            MODEL=None,
            MODELS=json.dumps({FAKE_MODEL: first_url, SECOND_MODEL: second_url}),
            API_KEYS=f"{API_KEY}\n{SCOPED_KEY} {SECOND_MODEL}",
            **variables,
        )

    return start


@pytest.fixture
def gateway_url(start_two_model_gateway) -> str:
    return start_two_model_gateway()


def openai_client(gateway_url: str, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS)


def post(gateway_url: str, path: str, body: dict, key: str = API_KEY) -> httpx.Response:
    return httpx.post(
        f"{gateway_url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=CLIENT_TIMEOUT_SECONDS
    )


def relayed_paths(upstream) -> list[str]:
    return [request.path for request in upstream.requests if request.path != "/v1/models"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", chat_request()), ("/v1/completions", {"model": FAKE_MODEL, "prompt": "say it"})],
    ids=["chat", "completion"],
)
def test_each_request_goes_to_the_engine_of_its_model(gateway_url, upstream, second_upstream, path, body, stream):
    first = post(gateway_url, path, body | {"stream": stream})
    second = post(gateway_url, path, body | {"model": SECOND_MODEL, "stream": stream})

    assert first.status_code == second.status_code == 200
    # Each fake engine answers with the model it serves, whatever the request named.
    assert f'"model": "{FAKE_MODEL}"' in first.text and f'"model": "{SECOND_MODEL}"' in second.text
    assert relayed_paths(upstream) == relayed_paths(second_upstream) == [path]  # both engines' base URLs end in /v1
    assert json.loads(second_upstream.requests[-1].body)["model"] == SECOND_MODEL


def test_the_openai_client_lists_and_uses_both_models(gateway_url, upstream, second_upstream):
    client = openai_client(gateway_url)

    listed = [model.id for model in client.models.list()]
    answers = {model: client.chat.completions.create(model=model, messages=MESSAGES) for model in listed}
    streams = {model: list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True))
               for model in listed}

    assert listed == sorted([FAKE_MODEL, SECOND_MODEL])
    assert {model: answer.model for model, answer in answers.items()} == {FAKE_MODEL: FAKE_MODEL,
                                                                           SECOND_MODEL: SECOND_MODEL}
    assert {model: {chunk.model for chunk in chunks} for model, chunks in streams.items()} == {
        FAKE_MODEL: {FAKE_MODEL}, SECOND_MODEL: {SECOND_MODEL}}
    assert "".join(chunk.choices[0].delta.content for chunk in streams[SECOND_MODEL]) == "Echo: one two three"
    assert len(relayed_paths(upstream)) == len(relayed_paths(second_upstream)) == 2


def test_embeddings_go_to_the_engine_of_their_model(gateway_url, upstream, second_upstream):
    embedding = openai_client(gateway_url).embeddings.create(model=SECOND_MODEL, input=["one two", "three"])

    assert embedding.model == SECOND_MODEL
    assert [item.embedding[0] for item in embedding.data] == [7.0, 5.0]
    assert embedding.usage.prompt_tokens == 3
    assert relayed_paths(second_upstream) == ["/v1/embeddings"] and relayed_paths(upstream) == []


def test_the_model_list_is_the_gateways_own(gateway_url, upstream, second_upstream):
    response = httpx.get(f"{gateway_url}/v1/models", headers={"authorization": f"Bearer {API_KEY}"})

    assert [(entry["id"], entry["object"], entry["owned_by"]) for entry in response.json()["data"]] == [
        (model, "model", "model-gateway") for model in sorted([FAKE_MODEL, SECOND_MODEL])
    ]
    assert upstream.requests == second_upstream.requests == []  # listing woke no engine


def test_a_model_no_engine_serves_is_not_found(gateway_url, upstream, second_upstream):
    with pytest.raises(openai.NotFoundError) as raised:
        openai_client(gateway_url).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert (raised.value.code, raised.value.param) == ("model_not_found", "model")
    assert upstream.requests == second_upstream.requests == []


def test_a_key_limited_to_a_model_cannot_tell_the_others_from_unserved_ones(gateway_url, upstream, second_upstream):
    client = openai_client(gateway_url, api_key=SCOPED_KEY)

    with pytest.raises(openai.NotFoundError) as served_elsewhere:
        client.chat.completions.create(model=FAKE_MODEL, messages=MESSAGES)
    with pytest.raises(openai.NotFoundError) as unserved:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    answers = [raised.value.response for raised in (served_elsewhere, unserved)]
    assert [answer.status_code for answer in answers] == [404, 404]
    # The same body but for the name the client sent itself.
    assert answers[0].json() == json.loads(answers[1].text.replace("gpt-4o", FAKE_MODEL))
    assert (served_elsewhere.value.code, served_elsewhere.value.param) == ("model_not_found", "model")
    assert SCOPED_KEY not in served_elsewhere.value.message
    assert upstream.requests == []
    assert client.chat.completions.create(model=SECOND_MODEL, messages=MESSAGES).model == SECOND_MODEL
    assert [model.id for model in client.models.list()] == [SECOND_MODEL]


def test_the_chat_page_selects_the_first_model_configured(start_two_model_gateway):
    page = httpx.get(f"{start_two_model_gateway()}/")

    assert f'<meta name="gateway-model" content="{FAKE_MODEL}">' in page.text


def test_one_engine_down_leaves_the_other_model_serving(start_two_model_gateway, upstream):
    gateway_url = start_two_model_gateway(second_url=f"http://127.0.0.1:{free_port()}/v1")

    down = post(gateway_url, "/v1/chat/completions", chat_request(model=SECOND_MODEL))
    up = post(gateway_url, "/v1/chat/completions", chat_request())

    assert (down.status_code, down.json()["error"]["type"]) == (502, "upstream_unavailable")
    assert up.status_code == 200


def test_ready_while_one_model_can_answer_names_the_one_that_cannot(start_two_model_gateway):
    gateway_url = start_two_model_gateway(second_url=f"http://127.0.0.1:{free_port()}/v1")

    response = httpx.get(f"{gateway_url}/ready")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "models": {
            FAKE_MODEL: {"ready": True},
            SECOND_MODEL: {"ready": False, "reason": "cannot connect to the model server"},
        },
    }


def test_not_ready_when_no_model_can_answer(gateway_url, upstream, second_upstream):
    upstream.behaviour.failure_status = 500
    second_upstream.behaviour.models = ("another-model",)

    response = httpx.get(f"{gateway_url}/ready")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "reason": "none of the served models can answer",
        "models": {
            FAKE_MODEL: {"ready": False, "reason": "model server answered /models with HTTP 500"},
            SECOND_MODEL: {"ready": False, "reason": f"model {SECOND_MODEL!r} is not listed by the model server"},
        },
    }


def test_ready_checks_the_engines_at_once(gateway_url, upstream, second_upstream):
    delay = 2.0
    upstream.behaviour.response_delay_seconds = second_upstream.behaviour.response_delay_seconds = delay

    started = time.monotonic()
    response = httpx.get(f"{gateway_url}/ready", timeout=CLIENT_TIMEOUT_SECONDS)

    assert response.status_code == 200
    # One after the other takes at least twice the delay; the slack is for a busy machine.
    assert time.monotonic() - started < 1.75 * delay, "the engines were checked one after the other"


def test_model_readiness_is_a_gauge_updated_by_each_check(gateway_url, upstream):
    scrapes = []
    for failure_status in (None, 500):
        upstream.behaviour.failure_status = failure_status
        httpx.get(f"{gateway_url}/ready")
        scrapes.append(httpx.get(f"{gateway_url}/metrics").text)

    assert [metric_value(scraped, "gateway_model_ready", model=FAKE_MODEL) for scraped in scrapes] == [1, 0]
    assert [metric_value(scraped, "gateway_model_ready", model=SECOND_MODEL) for scraped in scrapes] == [1, 1]


def test_requests_and_upstream_errors_are_counted_by_served_model(gateway_url, second_upstream):
    second_upstream.behaviour.failure_status = 500
    for model, key in [(FAKE_MODEL, API_KEY), (FAKE_MODEL, API_KEY), (SECOND_MODEL, API_KEY),
                       (FAKE_MODEL, SCOPED_KEY), ("client-chosen-name", API_KEY)]:
        post(gateway_url, "/v1/chat/completions", chat_request(model=model), key=key)

    scraped = httpx.get(f"{gateway_url}/metrics").text
    assert metric_value(scraped, "gateway_model_requests_total", model=FAKE_MODEL, status="200") == 2
    assert metric_value(scraped, "gateway_model_requests_total", model=FAKE_MODEL, status="404") == 1
    assert metric_value(scraped, "gateway_model_requests_total", model=SECOND_MODEL, status="502") == 1
    # An unknown model is answered 404 before any model label is given: clients cannot mint label values.
    assert "client-chosen-name" not in scraped
    route = "/v1/chat/completions"
    assert metric_value(
        scraped, "gateway_upstream_errors_total", route=route, model=SECOND_MODEL, reason="server_error") == 1
    assert metric_value(
        scraped, "gateway_upstream_errors_total", route=route, model=FAKE_MODEL, reason="server_error") == 0
