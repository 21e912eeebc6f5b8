"""GATEWAY_* settings: defaults, parsing, and one clear message per invalid variable."""

from __future__ import annotations

import pytest

from model_gateway.settings import Settings, SettingsError, load_settings, unrecognized_variables

UPSTREAM = {"GATEWAY_UPSTREAM_BASE_URL": "http://vllm:8000/v1"}


def problems_of(environ: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ)
    return raised.value.problems


def test_defaults_apply_when_only_the_upstream_is_set():
    assert load_settings(UPSTREAM) == Settings(
        routes={},
        pass_through_base_url="http://vllm:8000/v1",
        api_keys={},
        upstream_api_key=None,
        request_timeout_seconds=600.0,
        connect_timeout_seconds=5.0,
        max_request_bytes=1048576,
        cors_allow_origins=(),
        log_level="info",
        port=8080,
        host="0.0.0.0",
    )


def test_every_variable_is_read():
    settings = load_settings(
        {
            "GATEWAY_UPSTREAM_BASE_URL": "http://model-runner.models.svc.cluster.local/engines/v1/",
            "GATEWAY_MODEL": " ai/smollm2 ",
            "GATEWAY_API_KEYS": "key-one, key-two,,",
            "GATEWAY_UPSTREAM_API_KEY": "upstream-key",
            "GATEWAY_REQUEST_TIMEOUT_SECONDS": "90.5",
            "GATEWAY_CONNECT_TIMEOUT_SECONDS": "2",
            "GATEWAY_MAX_REQUEST_BYTES": "2048",
            "GATEWAY_CORS_ALLOW_ORIGINS": "https://chat.example.com, http://localhost:3000",
            "GATEWAY_LOG_LEVEL": "DEBUG",
            "GATEWAY_PORT": "9000",
            "GATEWAY_HOST": "::1",
        }
    )

    assert settings == Settings(
        routes={"ai/smollm2": "http://model-runner.models.svc.cluster.local/engines/v1"},
        api_keys={"key-one": None, "key-two": None},
        upstream_api_key="upstream-key",
        request_timeout_seconds=90.5,
        connect_timeout_seconds=2.0,
        max_request_bytes=2048,
        cors_allow_origins=("https://chat.example.com", "http://localhost:3000"),
        log_level="debug",
        port=9000,
        host="::1",
    )


def test_empty_values_count_as_unset():
    assert load_settings({**UPSTREAM, "GATEWAY_PORT": "", "GATEWAY_API_KEYS": " "}) == load_settings(UPSTREAM)


def test_missing_upstream_is_reported_with_what_it_expects():
    assert problems_of({}) == [
        "GATEWAY_UPSTREAM_BASE_URL is required (or GATEWAY_MODELS, for an engine per model): expected an http(s) URL with the API version path and no "
        "credentials, query or fragment, e.g. http://vllm:8000/v1 or "
        "http://model-runner.models.svc.cluster.local/engines/v1"
    ]


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("GATEWAY_UPSTREAM_BASE_URL", "vllm:8000/v1", "an http(s) URL"),
        ("GATEWAY_UPSTREAM_BASE_URL", "http://user:secret@vllm/v1", "no credentials"),
        ("GATEWAY_UPSTREAM_BASE_URL", "http://vllm:99999/v1", "an http(s) URL"),
        ("GATEWAY_UPSTREAM_BASE_URL", "http://vllm/v1?x=1", "no credentials, query or fragment"),
        ("GATEWAY_REQUEST_TIMEOUT_SECONDS", "0", "a number of seconds > 0"),
        ("GATEWAY_REQUEST_TIMEOUT_SECONDS", "inf", "a number of seconds > 0"),
        ("GATEWAY_CONNECT_TIMEOUT_SECONDS", "soon", "a number of seconds > 0"),
        ("GATEWAY_MAX_REQUEST_BYTES", "1MiB", "a whole number of bytes > 0"),
        ("GATEWAY_MAX_REQUEST_BYTES", "-5", "a whole number of bytes > 0"),
        ("GATEWAY_CORS_ALLOW_ORIGINS", "https://chat.example.com/", "no path"),
        ("GATEWAY_CORS_ALLOW_ORIGINS", "chat.example.com", "no path"),
        ("GATEWAY_LOG_LEVEL", "verbose", "one of debug, info, warning, error, critical"),
        ("GATEWAY_PORT", "0", "a port number from 1 to 65535"),
        ("GATEWAY_PORT", "http", "a port number from 1 to 65535"),
        ("GATEWAY_HOST", "localhost", "an IP address to listen on"),
        ("GATEWAY_HOST", "256.0.0.1", "an IP address to listen on"),
    ],
)
def test_invalid_value_names_the_variable_the_value_and_what_is_allowed(name, value, allowed):
    [problem] = problems_of({**UPSTREAM, name: value})

    assert problem.startswith(f"{name}={value!r} is invalid: expected ")
    assert allowed in problem


@pytest.mark.parametrize("name", ["GATEWAY_API_KEYS", "GATEWAY_UPSTREAM_API_KEY"])
def test_invalid_secret_is_reported_without_its_value(name):
    [problem] = problems_of({**UPSTREAM, name: "has a space"})

    assert problem.startswith(f"{name}=(value hidden) is invalid: expected ")
    assert "has a space" not in problem


def test_a_keys_file_must_hold_keys_and_excludes_inline_keys(tmp_path):
    empty, spaced, good = tmp_path / "empty", tmp_path / "spaced", tmp_path / "good"
    empty.write_text("\n")
    spaced.write_text("has a space\n")
    good.write_text("key-one\nkey-two\n")
    for path in (tmp_path / "missing", empty, spaced):
        [problem] = problems_of({**UPSTREAM, "GATEWAY_API_KEYS_FILE": str(path)})
        assert problem.startswith("GATEWAY_API_KEYS_FILE=") and "readable file" in problem
    assert problems_of({**UPSTREAM, "GATEWAY_API_KEYS_FILE": str(good), "GATEWAY_API_KEYS": "inline"}) == [
        "GATEWAY_API_KEYS and GATEWAY_API_KEYS_FILE are both set: set one of them"]


def test_every_invalid_variable_is_reported_at_once():
    problems = problems_of({"GATEWAY_PORT": "x", "GATEWAY_LOG_LEVEL": "x", "GATEWAY_MAX_REQUEST_BYTES": "x"})

    assert [problem.split(" ")[0].split("=")[0] for problem in problems] == [
        "GATEWAY_UPSTREAM_BASE_URL",
        "GATEWAY_MAX_REQUEST_BYTES",
        "GATEWAY_LOG_LEVEL",
        "GATEWAY_PORT",
    ]


def test_kubernetes_service_link_in_port_gets_a_hint():
    [problem] = problems_of({**UPSTREAM, "GATEWAY_PORT": "tcp://10.96.0.12:80"})

    assert "Kubernetes service link" in problem and "enableServiceLinks: false" in problem


def test_secrets_stay_out_of_the_settings_repr():
    settings = load_settings({**UPSTREAM, "GATEWAY_API_KEYS": "client-secret", "GATEWAY_UPSTREAM_API_KEY": "up-secret"})

    assert "client-secret" not in repr(settings) and "up-secret" not in repr(settings)


def test_unknown_gateway_variables_are_found_but_service_links_are_not():
    environ = {
        **UPSTREAM,
        "GATEWAY_API_KEY": "typo for GATEWAY_API_KEYS",
        "GATEWAY_SERVICE_HOST": "10.96.0.12",
        "GATEWAY_SERVICE_PORT_HTTP": "80",
        "GATEWAY_PORT_80_TCP_ADDR": "10.96.0.12",
        "OTHER_VARIABLE": "1",
    }

    assert unrecognized_variables(environ) == ["GATEWAY_API_KEY"]
