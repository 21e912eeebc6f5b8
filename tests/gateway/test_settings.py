"""GATEWAY_* settings: defaults, parsing, and one clear message per invalid variable."""

from __future__ import annotations

import json

import pytest

from model_gateway.settings import (
    Routing,
    Settings,
    SettingsError,
    check_key_scopes,
    load_settings,
    parse_api_keys,
    unrecognized_variables,
)

UPSTREAM = {"GATEWAY_UPSTREAM_BASE_URL": "http://vllm:8000/v1"}
CHAT_ENGINE = "http://model-runner-chat.models.svc.cluster.local/engines/v1"
SMALL_ENGINE = "http://model-runner-small.models.svc.cluster.local/engines/v1"
MODELS = {"GATEWAY_MODELS": json.dumps({"ai/smollm2:360M-Q4_K_M": CHAT_ENGINE, "ai/smollm2:135M-Q4_K_M": SMALL_ENGINE})}
SECRET_KEY = "sk-very-secret-0123"


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
            "GATEWAY_API_KEYS": "key-one,key-two,,",
            "GATEWAY_UPSTREAM_API_KEY": "upstream-key",
            "GATEWAY_REQUEST_TIMEOUT_SECONDS": "90.5",
            "GATEWAY_CONNECT_TIMEOUT_SECONDS": "2",
            "GATEWAY_MAX_REQUEST_BYTES": "2048",
            "GATEWAY_CORS_ALLOW_ORIGINS": "https://chat.example.com, http://localhost:3000",
            "GATEWAY_LOG_LEVEL": "DEBUG",
            "GATEWAY_PORT": "9000",
            "GATEWAY_HOST": "::1",
            "GATEWAY_ROUTING": '{"ai/smollm2": {"policy": "prefix", "maxInFlightPerReplica": 8, "maxWaitSeconds": 2.5, '
                               '"holdSeconds": 600, "replicasHost": "model-runner-replicas.models.svc.cluster.local."}}',
            "GATEWAY_DISCOVERY_INTERVAL_SECONDS": "0.5",
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
        routing={"ai/smollm2": Routing(policy="prefix", max_in_flight_per_replica=8, max_wait_seconds=2.5,
                                       hold_seconds=600, replicas_host="model-runner-replicas.models.svc.cluster.local.")},
        discovery_interval_seconds=0.5,
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


def test_models_map_each_model_to_its_engine_in_the_order_given():
    settings = load_settings({"GATEWAY_MODELS": json.dumps({"small": SMALL_ENGINE + "/", "chat": CHAT_ENGINE})})

    assert settings.routes == {"small": SMALL_ENGINE, "chat": CHAT_ENGINE}
    assert list(settings.routes) == ["small", "chat"]  # the chat page selects the first
    assert settings.served_models == frozenset({"small", "chat"})
    assert settings.pass_through_base_url is None


def test_one_upstream_and_model_is_the_one_model_route_table():
    settings = load_settings({**UPSTREAM, "GATEWAY_MODEL": "ai/smollm2"})

    assert (settings.routes, settings.pass_through_base_url) == ({"ai/smollm2": "http://vllm:8000/v1"}, None)


def test_one_upstream_without_a_model_leaves_the_choice_to_the_model_server():
    settings = load_settings(UPSTREAM)

    assert (settings.routes, settings.pass_through_base_url, settings.served_models) == ({}, "http://vllm:8000/v1", None)


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ('{"chat":', "(it is not JSON)"),
        (f'["{CHAT_ENGINE}"]', "(it is not a JSON object naming at least one model)"),
        ("{}", "(it is not a JSON object naming at least one model)"),
        (json.dumps({"chat": CHAT_ENGINE, "small": "small-engine:8000/v1"}), "(the URL of model 'small' is not"),
        (json.dumps({"chat": CHAT_ENGINE, "small": "http://user:pw@small/v1"}), "(the URL of model 'small' is not"),
        (json.dumps({"chat": 8000}), "(the URL of model 'chat' is not"),
        (json.dumps({"ai/chat model": CHAT_ENGINE}), "(model id 'ai/chat model' is empty or has a space or comma)"),
        (json.dumps({"a,b": CHAT_ENGINE}), "(model id 'a,b' is empty or has a space or comma)"),
        (json.dumps({"": CHAT_ENGINE}), "(model id '' is empty or has a space or comma)"),
        (f'{{"chat": "{CHAT_ENGINE}", "chat": "{SMALL_ENGINE}"}}', "(model 'chat' is listed twice)"),
    ],
)
def test_invalid_models_are_one_line_saying_what_is_wrong(value, detail):
    [problem] = problems_of({"GATEWAY_MODELS": value})

    assert problem.startswith(f"GATEWAY_MODELS={value!r} is invalid: expected a JSON object mapping each model id")
    assert detail in problem


@pytest.mark.parametrize("other", ["GATEWAY_UPSTREAM_BASE_URL", "GATEWAY_MODEL"])
def test_models_exclude_the_single_upstream_settings(other):
    assert problems_of({**MODELS, other: "http://vllm:8000/v1"}) == [
        f"GATEWAY_MODELS and {other} are both set: GATEWAY_MODELS names every model and its engine"
    ]


def test_a_model_id_has_no_spaces_or_commas():
    [problem] = problems_of({**UPSTREAM, "GATEWAY_MODEL": "model-a,model-b"})

    assert problem == "GATEWAY_MODEL='model-a,model-b' is invalid: expected a model id without spaces or commas"


def test_keys_are_comma_separated_or_one_per_line_and_may_be_limited_to_models():
    text = "key-one,key-two\n\n  key-three  \nchat-key chat,small\nsmall-key\tsmall\n"

    assert parse_api_keys(text) == {
        "key-one": None,
        "key-two": None,
        "key-three": None,
        "chat-key": frozenset({"chat", "small"}),
        "small-key": frozenset({"small"}),
    }


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        (f"key-one\n{SECRET_KEY} chat small", "line 2 has 3 fields"),
        (f"{SECRET_KEY} chat, small", "line 1 has 3 fields"),
        (f"key-one,{SECRET_KEY} chat", "line 1: the key before the space has a comma"),
        # With a space after the comma, keys would read as a key limited to a model: refused, not guessed.
        (f"key-one, {SECRET_KEY}", "line 1: the key before the space has a comma"),
        (f"{SECRET_KEY} ,", "line 1: a key limited to models names at least one"),
        (f"{SECRET_KEY}\u00e9", "line 1: a key has a character other than visible ASCII"),
        (f"{SECRET_KEY} chat\n{SECRET_KEY} small", "line 2: a key listed before is listed again with other models"),
        (f"{SECRET_KEY}\n{SECRET_KEY} small", "line 2: a key listed before is listed again with other models"),
        (",\n\n", "it holds no key"),
    ],
)
def test_invalid_keys_are_explained_without_key_material(text, detail):
    with pytest.raises(ValueError) as raised:
        parse_api_keys(text)

    assert str(raised.value).startswith(detail)
    assert "very-secret" not in str(raised.value)


def test_a_key_listed_twice_alike_is_one_key():
    assert parse_api_keys(f"{SECRET_KEY}\n{SECRET_KEY},other") == {SECRET_KEY: None, "other": None}


def test_a_key_may_only_be_limited_to_served_models():
    keys = parse_api_keys(f"open-key\n{SECRET_KEY} chat,vision")

    check_key_scopes(keys, ["chat", "vision"])
    with pytest.raises(ValueError) as unserved:
        check_key_scopes(keys, ["chat"])
    with pytest.raises(ValueError) as unnamed:
        check_key_scopes(keys, None)

    assert str(unserved.value) == "a key is limited to model 'vision', which the gateway does not serve ('chat')"
    assert "needs GATEWAY_MODEL or GATEWAY_MODELS" in str(unnamed.value)
    check_key_scopes(parse_api_keys("open-key"), None)  # unlimited keys need no list of models


@pytest.mark.parametrize("source", ["GATEWAY_API_KEYS", "GATEWAY_API_KEYS_FILE"])
def test_a_key_limited_to_a_model_the_gateway_does_not_serve_stops_the_start(source, tmp_path):
    keys = f"open-key\n{SECRET_KEY} ai/smollm2:360M-Q4_K_M,ai/llama3.2"
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(keys)

    [problem] = problems_of({**MODELS, source: str(keys_file) if source.endswith("FILE") else keys})

    assert problem.startswith(f"{source}: a key is limited to model 'ai/llama3.2', which the gateway does not serve")
    assert "very-secret" not in problem


def test_a_key_limited_to_models_needs_the_served_models_named():
    [problem] = problems_of({**UPSTREAM, "GATEWAY_API_KEYS": f"{SECRET_KEY} ai/smollm2"})

    assert problem.startswith("GATEWAY_API_KEYS: a key is limited to models, which needs GATEWAY_MODEL")


def test_invalid_keys_are_reported_with_the_line_but_not_the_keys(tmp_path):
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"open-key\n{SECRET_KEY} chat small\n")

    [inline] = problems_of({**MODELS, "GATEWAY_API_KEYS": f"open-key\n{SECRET_KEY} chat small"})
    [from_file] = problems_of({**MODELS, "GATEWAY_API_KEYS_FILE": str(keys_file)})

    assert inline.startswith("GATEWAY_API_KEYS=(value hidden) is invalid: expected lines of comma-separated keys")
    assert inline.endswith("(line 2 has 3 fields: expected comma-separated keys, or one key and the comma-separated "
                           "models it may use)")
    assert from_file.startswith(f"GATEWAY_API_KEYS_FILE={str(keys_file)!r} is invalid: expected the path of a")
    assert "(line 2 has 3 fields" in from_file
    assert "very-secret" not in inline + from_file


def test_routing_may_list_fixed_replicas_and_leaves_other_models_to_the_defaults():
    settings = load_settings({**MODELS, "GATEWAY_ROUTING": json.dumps(
        {"ai/smollm2:135M-Q4_K_M": {"replicas": ["http://10.0.0.1:8080/v1/", "http://10.0.0.2:8080/v1"]}})})

    assert settings.routing == {"ai/smollm2:135M-Q4_K_M": Routing(
        replicas=("http://10.0.0.1:8080/v1", "http://10.0.0.2:8080/v1"))}
    assert Routing().policy == "least-loaded" and Routing().max_in_flight_per_replica is None


@pytest.mark.parametrize("routing,detail", [
    ("[]", "not a JSON object"),
    ('{"ai/smollm2:135M-Q4_K_M": {"policy": "round-robin"}}', "policy of model 'ai/smollm2:135M-Q4_K_M' is "
                                                              "'round-robin': expected one of random, connection"),
    ('{"ai/smollm2:135M-Q4_K_M": {"maxInFlightPerReplica": 0}}', "maxInFlightPerReplica"),
    ('{"ai/smollm2:135M-Q4_K_M": {"maxInFlightPerReplica": 2.5}}', "a whole number >= 1"),
    ('{"ai/smollm2:135M-Q4_K_M": {"maxWaitSeconds": -1}}', "maxWaitSeconds"),
    ('{"ai/smollm2:135M-Q4_K_M": {"holdSeconds": "long"}}', "holdSeconds"),
    ('{"ai/smollm2:135M-Q4_K_M": {"replicasHost": "http://pods"}}', "a DNS name"),
    ('{"ai/smollm2:135M-Q4_K_M": {"replicas": []}}', "a non-empty list of base URLs"),
    ('{"ai/smollm2:135M-Q4_K_M": {"replicas": ["http://a/v1"], "replicasHost": "pods"}}', "set one of them"),
    ('{"ai/smollm2:135M-Q4_K_M": {"maxInflight": 2}}', "unknown field 'maxInflight'"),
    ('{"ai/smollm2:135M-Q4_K_M": {"policy": "prefix", "loadFactor": 0.9}}', "loadFactor of model "
                                                                           "'ai/smollm2:135M-Q4_K_M' is 0.9: expected "
                                                                           "a number >= 1"),
    ('{"ai/smollm2:135M-Q4_K_M": {"policy": "prefix", "loadFactor": "1.5"}}', "a number >= 1"),
    ('{"ai/smollm2:135M-Q4_K_M": {"policy": "prefix", "loadFactor": true}}', "a number >= 1"),
    ('{"ai/smollm2:135M-Q4_K_M": {"loadFactor": 2}}', "is 2, but it applies to policy prefix only and the policy is "
                                                      "least-loaded"),
])
def test_invalid_routing_is_one_line_saying_what_is_wrong(routing, detail):
    [problem] = problems_of({**MODELS, "GATEWAY_ROUTING": routing})

    assert problem.startswith("GATEWAY_ROUTING=") and detail in problem


def test_routing_may_only_name_served_models():
    assert problems_of({**MODELS, "GATEWAY_ROUTING": '{"gpt-4o": {}}'}) == [
        "GATEWAY_ROUTING names model 'gpt-4o', which the gateway does not serve (it serves "
        "'ai/smollm2:360M-Q4_K_M', 'ai/smollm2:135M-Q4_K_M')"]
