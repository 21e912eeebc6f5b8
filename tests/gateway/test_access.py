"""Who may call the gateway: API keys on the API, open probes and page, CORS for browsers on other origins."""

from __future__ import annotations

import httpx
import pytest

from gateway_helpers import API_KEY, chat_request


@pytest.mark.parametrize(
    ("authorization", "challenge", "code"),
    [
        (None, 'Bearer realm="model-gateway"', None),
        (f"Basic {API_KEY}", 'Bearer realm="model-gateway"', None),
        ("Bearer", 'Bearer realm="model-gateway"', None),
        ("Bearer wrong-key", 'Bearer realm="model-gateway", error="invalid_token"', "invalid_api_key"),
        (f"Bearer {API_KEY}x", 'Bearer realm="model-gateway", error="invalid_token"', "invalid_api_key"),
    ],
)
def test_requests_without_an_accepted_key_get_401_with_a_bearer_challenge(
    gateway_url, upstream, authorization, challenge, code
):
    headers = {"authorization": authorization} if authorization else {}

    response = httpx.post(f"{gateway_url}/v1/chat/completions", json=chat_request(), headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge
    # OpenAI's type and codes: a missing key has no code, a wrong one invalid_api_key.
    assert (response.json()["error"]["type"], response.json()["error"]["code"]) == ("invalid_request_error", code)
    assert upstream.requests == []


def test_every_configured_key_is_accepted(start_gateway):
    gateway_url = start_gateway(API_KEYS="first-key,second-key")

    statuses = [
        httpx.get(f"{gateway_url}/v1/models", headers={"authorization": f"bearer {key}"}).status_code
        for key in ("first-key", "second-key", "third-key")
    ]

    assert statuses == [200, 200, 401]


def test_without_keys_the_api_is_open(start_gateway):
    gateway_url = start_gateway(API_KEYS=None)

    assert httpx.get(f"{gateway_url}/v1/models").status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/"])
def test_probes_metrics_and_page_need_no_key(gateway_url, path):
    assert httpx.get(f"{gateway_url}{path}").status_code == 200


def test_cors_preflight_from_an_allowed_origin_is_answered_without_a_key(start_gateway):
    gateway_url = start_gateway(CORS_ALLOW_ORIGINS="https://chat.example.com")

    response = httpx.options(
        f"{gateway_url}/v1/chat/completions",
        headers={
            "origin": "https://chat.example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


# What openai-node sends on every call from a browser (and so asks the preflight for), besides the key.
OPENAI_NODE_HEADERS = (
    "authorization, content-type, x-stainless-os, x-stainless-lang, x-stainless-arch, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-package-version, x-stainless-retry-count, x-stainless-timeout"
)


def sdk_preflight(gateway_url: str, origin: str) -> httpx.Response:
    """The preflight a browser sends before the OpenAI SDK's POST, from `origin`."""
    return httpx.options(
        f"{gateway_url}/v1/chat/completions",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": OPENAI_NODE_HEADERS,
        },
    )


def test_cors_preflight_allows_the_headers_the_browser_openai_sdk_sends(start_gateway):
    gateway_url = start_gateway(CORS_ALLOW_ORIGINS="https://chat.example.com")

    response = sdk_preflight(gateway_url, "https://chat.example.com")

    assert response.status_code == 200
    allowed = {name.strip() for name in response.headers["access-control-allow-headers"].lower().split(",")}
    assert {name.strip() for name in OPENAI_NODE_HEADERS.split(",")} <= allowed


def test_cors_preflight_with_the_sdks_headers_from_another_origin_is_refused(start_gateway):
    gateway_url = start_gateway(CORS_ALLOW_ORIGINS="https://chat.example.com")

    response = sdk_preflight(gateway_url, "https://evil.example")

    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_cors_headers_are_on_api_answers_errors_included(start_gateway):
    gateway_url = start_gateway(CORS_ALLOW_ORIGINS="https://chat.example.com")

    rejected = httpx.get(f"{gateway_url}/v1/models", headers={"origin": "https://chat.example.com"})

    assert rejected.status_code == 401
    assert rejected.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert "x-request-id" in rejected.headers["access-control-expose-headers"].lower()


def test_cors_refuses_other_origins(start_gateway):
    gateway_url = start_gateway(CORS_ALLOW_ORIGINS="https://chat.example.com")

    preflight = httpx.options(
        f"{gateway_url}/v1/models",
        headers={"origin": "https://evil.example", "access-control-request-method": "GET"},
    )

    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers


def test_without_cors_origins_no_cors_headers_are_sent(client):
    # The fake model server, like llama.cpp's, adds its own Access-Control-Allow-Origin.
    response = client.post(
        "/v1/chat/completions", json=chat_request(), headers={"origin": "https://chat.example.com"}
    )
    without_origin = client.post("/v1/chat/completions", json=chat_request())

    assert response.status_code == without_origin.status_code == 200
    assert not any(name.startswith("access-control-") for name in response.headers)
    assert not any(name.startswith("access-control-") for name in without_origin.headers)


@pytest.mark.parametrize("stream", [False, True])
def test_with_cors_a_relayed_answer_carries_each_header_once(start_gateway, stream):
    gateway_url = start_gateway(CORS_ALLOW_ORIGINS="https://chat.example.com")

    with httpx.stream(
        "POST",
        f"{gateway_url}/v1/chat/completions",
        json=chat_request(stream=stream),
        headers={"authorization": f"Bearer {API_KEY}", "origin": "https://chat.example.com"},
    ) as response:
        response.read()

    names = [name.lower() for name, _ in response.headers.raw]
    assert response.status_code == 200
    assert sorted(set(names)) == sorted(names), "a header was sent twice"
    assert response.headers["access-control-allow-origin"] == "https://chat.example.com"
    if stream:
        assert response.headers["x-accel-buffering"] == "no"


def test_keys_from_a_mounted_file_are_accepted(start_gateway, tmp_path):
    keys_file = tmp_path / "api-keys"
    keys_file.write_text("file-key-one\nfile-key-two\n")
    gateway_url = start_gateway(API_KEYS=None, API_KEYS_FILE=str(keys_file))

    statuses = [
        httpx.get(f"{gateway_url}/v1/models", headers={"authorization": f"Bearer {key}"}).status_code
        for key in ("file-key-one", "file-key-two", API_KEY)
    ]

    assert statuses == [200, 200, 401]


def test_rotated_keys_take_effect_without_a_restart(tmp_path, monkeypatch):
    """A mounted Secret changes by an atomic swap of the file; the next check reads the new keys."""
    from starlette.requests import Request

    from model_gateway import auth
    from model_gateway.errors import Rejected

    def request(key: str) -> Request:
        return Request({"type": "http", "headers": [(b"authorization", f"Bearer {key}".encode())]})

    def status(keys: auth.ApiKeys, key: str) -> int | frozenset[str] | None:
        """The models `key` may use, or the status of its rejection."""
        try:
            return keys.allowed_models(request(key))
        except Rejected as rejected:
            return rejected.response.status_code

    keys_file = tmp_path / "api-keys"
    keys_file.write_text("old-key")
    monkeypatch.setattr(auth, "KEYS_FILE_CHECK_SECONDS", 0.0)
    keys = auth.ApiKeys({}, str(keys_file), frozenset({"model-a", "model-b"}))
    assert status(keys, "old-key") is None

    rotated = tmp_path / "api-keys.new"
    rotated.write_text("new-key-0123\nscoped-key model-b\n")
    rotated.replace(keys_file)

    assert status(keys, "new-key-0123") is None
    assert status(keys, "scoped-key") == frozenset({"model-b"})
    assert status(keys, "old-key") == 401
    # A file emptied by mistake does not turn authentication off, nor does one limiting a key to a model the
    # gateway does not serve let it in: the keys read before stay.
    for mistake in ("", "new-key-0123\nscoped-key model-c\n"):
        keys_file.write_text(mistake)
        assert status(keys, "new-key-0123") is None
        assert status(keys, "scoped-key") == frozenset({"model-b"})
        assert status(keys, "anything") == 401
