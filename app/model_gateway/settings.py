"""Gateway configuration, read once at startup from GATEWAY_* environment variables.

Every variable is checked before the server starts, and every problem is reported at once, so a bad
deployment fails with the full list instead of one error per restart.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Mapping, NamedTuple
from urllib.parse import urlsplit

PREFIX = "GATEWAY_"
DEFAULT_PORT = 8080
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Visible ASCII without spaces: what fits in an `Authorization: Bearer` header unchanged.
_TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")
# Commas separate the models a key may use, so a model id has none (nor spaces, which separate a key from them).
_MODEL_ID_PATTERN = re.compile(r"[^\s,]+")

# Variables Kubernetes injects for a Service named "gateway" (service links), which are not settings.
_SERVICE_LINK_PATTERN = re.compile(r"GATEWAY_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_\w+)?)")


KeyScopes = Mapping[str, "frozenset[str] | None"]
"""Each API key -> the models it may use, or None for every model."""

ROUTING_POLICIES = ("random", "connection", "least-loaded", "prefix")
# A DNS name: dot-separated labels of letters, digits and '-', optionally ending in a dot (fully qualified, which
# spares the resolver's search-domain walk).
_HOST_PATTERN = re.compile(r"(?=.{1,254}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                           r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


@dataclass(frozen=True)
class Routing:
    """How a model's requests are spread over its replicas and admitted (GATEWAY_ROUTING)."""

    policy: str = "least-loaded"
    max_in_flight_per_replica: int | None = None
    """Requests a replica takes at once; more wait in the gateway. None: no limit."""
    max_wait_seconds: float = 30.0
    """Longest a request waits for a replica below its limit before 429."""
    hold_seconds: float | None = None
    """Longest a request waits while the model has no ready replica at all before 503; None: max_wait_seconds."""
    replicas_host: str | None = None
    """A DNS name whose addresses are the replicas (a headless Service), on the port and path of the model's URL."""
    replicas: tuple[str, ...] = ()
    """A fixed list of replica base URLs instead."""
    load_factor: float | None = None
    """Prefix affinity's bound: a replica keeps its prefixes while it carries at most this many times the mean load;
    None: the policy's default (1.25)."""


_ROUTING_FIELDS = {
    "policy": "policy",
    "maxInFlightPerReplica": "max_in_flight_per_replica",
    "maxWaitSeconds": "max_wait_seconds",
    "holdSeconds": "hold_seconds",
    "replicasHost": "replicas_host",
    "replicas": "replicas",
    "loadFactor": "load_factor",
}


@dataclass(frozen=True)
class Settings:
    routes: Mapping[str, str] = field(default_factory=dict)
    """Each model id clients may name -> the OpenAI base URL of the engine serving it (version path included, no
    trailing slash), in the order configured: GATEWAY_MODELS, or GATEWAY_MODEL on GATEWAY_UPSTREAM_BASE_URL.
    Empty when GATEWAY_UPSTREAM_BASE_URL alone leaves the choice of model to the model server."""
    pass_through_base_url: str | None = None
    """GATEWAY_UPSTREAM_BASE_URL without GATEWAY_MODEL: the model server every request goes to, whatever model
    it names."""
    api_keys: KeyScopes = field(default_factory=dict, repr=False)
    api_keys_file: str | None = None
    """A file holding the keys instead (a mounted Kubernetes Secret): read again when it changes, so rotated keys
    take effect without a restart, and the keys are in no process environment."""
    upstream_api_key: str | None = field(default=None, repr=False)
    request_timeout_seconds: float = 600.0
    connect_timeout_seconds: float = 5.0
    max_request_bytes: int = 1024 * 1024
    cors_allow_origins: tuple[str, ...] = ()
    log_level: str = "info"
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    """Address to listen on: every interface by default (a container's), 127.0.0.1 behind a local proxy."""
    routing: Mapping[str, Routing] = field(default_factory=dict)
    """Each served model's routing, where GATEWAY_ROUTING sets one (others: Routing())."""
    discovery_interval_seconds: float = 2.0
    """How often replicas are looked up again in DNS."""

    @property
    def served_models(self) -> frozenset[str] | None:
        """The model ids clients may name (and /v1/models lists), or None when the model server chooses."""
        return frozenset(self.routes) if self.routes else None


class SettingsError(Exception):
    """Raised with one human-readable line per invalid or missing variable."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class InvalidValue(ValueError):
    """A ValueError whose message says what is wrong in words fit for the operator: it never quotes a key."""


class _Variable(NamedTuple):
    name: str
    attribute: str
    """The Settings attribute it sets."""
    parse: Callable[[str], object]
    allowed: str
    """What the variable accepts, phrased to follow 'expected'."""
    secret: bool = False


def _upstream_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError
    if parts.username or parts.password:
        # Credentials in the URL would end up in logs and error messages.
        raise ValueError
    # Reading .port validates it (ValueError when it is out of range or not a number); 0 cannot be connected to.
    if parts.port == 0:
        raise ValueError
    return value.rstrip("/")


def _model_id(value: str) -> str:
    if not _MODEL_ID_PATTERN.fullmatch(value):
        raise ValueError
    return value


def _model_routes(value: str) -> dict[str, str]:
    expected = "a JSON object naming at least one model"
    document = _json_object(value, expected, "model ")
    if not document:
        raise InvalidValue(f"it is not {expected}")
    routes = {}
    for model, url in document.items():
        if not _MODEL_ID_PATTERN.fullmatch(model):
            raise InvalidValue(f"model id {model!r} is empty or has a space or comma")
        try:
            routes[model] = _upstream_url(url if isinstance(url, str) else "")
        except ValueError:
            raise InvalidValue(f"the URL of model {model!r} is not {_UPSTREAM_URL_RULE}") from None
    return routes


class _RepeatedName(ValueError):
    def __init__(self, name: str) -> None:
        self.name = name


def _pairs_once_each(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object's members, refusing a repeated name, which json.loads would resolve by keeping the last."""
    document: dict[str, object] = {}
    for name, value in pairs:
        if name in document:
            raise _RepeatedName(name)
        document[name] = value
    return document


def _json_object(value: str, expected: str = "a JSON object", member: str = "") -> dict[str, object]:
    """`value` as a JSON object, each of whose names (`member`: what one names, for the message) appears once."""
    try:
        document = json.loads(value, object_pairs_hook=_pairs_once_each)
    except _RepeatedName as repeated:
        raise InvalidValue(f"{member}{repeated.name!r} is listed twice") from None
    except ValueError:
        raise InvalidValue("it is not JSON") from None
    if not isinstance(document, dict):
        raise InvalidValue(f"it is not {expected}")
    return document


def _routing(value: str) -> dict[str, Routing]:
    document = _json_object(value)
    return {model: _model_routing(model, entry) for model, entry in document.items()}


def _model_routing(model: str, entry: object) -> Routing:
    if not isinstance(entry, dict):
        raise InvalidValue(f"the routing of model {model!r} is not a JSON object")
    unknown = sorted(set(entry) - set(_ROUTING_FIELDS))
    if unknown:
        raise InvalidValue(f"model {model!r} has unknown field {unknown[0]!r} (known: {', '.join(_ROUTING_FIELDS)})")
    values = {_ROUTING_FIELDS[name]: value for name, value in entry.items()}

    def problem(name: str, allowed: str) -> InvalidValue:
        return InvalidValue(f"{name} of model {model!r} is {entry[name]!r}: expected {allowed}")

    policy = values.get("policy", Routing.policy)
    if policy not in ROUTING_POLICIES:
        raise problem("policy", "one of " + ", ".join(ROUTING_POLICIES))
    limit = values.get("max_in_flight_per_replica")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise problem("maxInFlightPerReplica", "a whole number >= 1")
    for name in ("maxWaitSeconds", "holdSeconds"):
        seconds = entry.get(name)
        if seconds is not None and (type(seconds) not in (int, float) or not math.isfinite(seconds) or seconds < 0):
            raise problem(name, "a number of seconds >= 0")
    load_factor = entry.get("loadFactor")
    if load_factor is not None:
        if type(load_factor) not in (int, float) or not math.isfinite(load_factor) or load_factor < 1:
            raise problem("loadFactor", "a number >= 1")
        if policy != "prefix":
            raise InvalidValue(f"loadFactor of model {model!r} is {load_factor!r}, but it applies to policy prefix "
                               f"only and the policy is {policy}")
    host = values.get("replicas_host")
    if host is not None and not (isinstance(host, str) and _HOST_PATTERN.fullmatch(host)):
        raise problem("replicasHost", "a DNS name")
    replicas = values.get("replicas")
    if replicas is not None:
        try:
            if not isinstance(replicas, list) or not replicas:
                raise ValueError
            values["replicas"] = tuple(_upstream_url(url if isinstance(url, str) else "") for url in replicas)
        except ValueError:
            raise problem("replicas", f"a non-empty list of base URLs, each {_UPSTREAM_URL_RULE}") from None
        if host is not None:
            raise InvalidValue(f"model {model!r} has both replicasHost and replicas: set one of them")
    return Routing(**values)


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError
    return seconds


def _positive_integer(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError
    return number


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError
    return port


def _token(value: str) -> str:
    if not _TOKEN_PATTERN.fullmatch(value):
        raise ValueError
    return value


def parse_api_keys(text: str) -> dict[str, frozenset[str] | None]:
    """The API keys in `text` (GATEWAY_API_KEYS, or a keys file), each with the models it may use (None: all).

    Each line holds either comma-separated keys (no spaces), which may use every model, or one key, whitespace,
    and the comma-separated models (no spaces) that key may use; blank lines are ignored, keys are visible ASCII.
    Whitespace only ever separates a key from its models, so a line cannot be read two ways: "k1, k2" is an
    error, not k1 limited to a model named k2. Raises ValueError (an InvalidValue, whose message never quotes a
    key) for any other line, a key listed twice with different models, or no key at all."""
    keys: dict[str, frozenset[str] | None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise InvalidValue(
                f"line {number} has {len(fields)} fields: expected comma-separated keys, or one key and the "
                "comma-separated models it may use"
            )
        scope = frozenset(_split_list(fields[1])) if len(fields) == 2 else None
        if scope is not None and "," in fields[0]:
            raise InvalidValue(
                f"line {number}: the key before the space has a comma: expected comma-separated keys without "
                "spaces, or one key and the comma-separated models it may use"
            )
        if scope == frozenset():
            raise InvalidValue(f"line {number}: a key limited to models names at least one")
        for key in _split_list(fields[0]):
            if not _TOKEN_PATTERN.fullmatch(key):
                raise InvalidValue(f"line {number}: a key has a character other than visible ASCII")
            if keys.setdefault(key, scope) != scope:
                raise InvalidValue(f"line {number}: a key listed before is listed again with other models")
    if not keys:
        raise InvalidValue("it holds no key")
    return keys


def check_key_scopes(keys: KeyScopes, served_models: Collection[str] | None) -> None:
    """Raises InvalidValue, naming the model but not the key, when a key is limited to a model outside
    `served_models`, or to any models when `served_models` is None (the model server chooses the model)."""
    scoped_models = set().union(*(scope for scope in keys.values() if scope is not None))
    if scoped_models and served_models is None:
        raise InvalidValue("a key is limited to models, which needs GATEWAY_MODEL or GATEWAY_MODELS to serve them")
    unserved = sorted(scoped_models.difference(served_models or ()))
    if unserved:
        served = ", ".join(repr(model) for model in sorted(served_models))
        raise InvalidValue(f"a key is limited to model {unserved[0]!r}, which the gateway does not serve ({served})")


def read_api_keys_file(path: str) -> dict[str, frozenset[str] | None]:
    """The keys in a keys file (see parse_api_keys); raises InvalidValue when unreadable, empty or invalid."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidValue(f"cannot read it: {error}") from None
    return parse_api_keys(text)


def _api_keys_file(value: str) -> str:
    read_api_keys_file(value)
    return value


def _origin(value: str) -> str:
    if value == "*":
        return value
    parts = urlsplit(value)
    # Browsers send Origin as scheme://host[:port]; anything more would never match.
    if parts.scheme not in ("http", "https") or not parts.hostname or value != f"{parts.scheme}://{parts.netloc}":
        raise ValueError
    return value


def _origin_list(value: str) -> tuple[str, ...]:
    return tuple(_origin(item) for item in _split_list(value))


def _listen_address(value: str) -> str:
    return str(ipaddress.ip_address(value))


def _log_level(value: str) -> str:
    level = value.lower()
    if level not in LOG_LEVELS:
        raise ValueError
    return level


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


_UPSTREAM = "GATEWAY_UPSTREAM_BASE_URL"
_MODEL = "GATEWAY_MODEL"
_MODELS = "GATEWAY_MODELS"
_UPSTREAM_URL_RULE = "an http(s) URL with the API version path and no credentials, query or fragment"
_UPSTREAM_URL_ALLOWED = (
    f"{_UPSTREAM_URL_RULE}, e.g. http://vllm:8000/v1 or http://model-runner.models.svc.cluster.local/engines/v1"
)
_KEYS_ALLOWED = (
    "lines of comma-separated keys (visible ASCII without spaces), or of a key, a space and the comma-separated "
    "models it may use"
)
_VARIABLES = (
    _Variable(_UPSTREAM, "upstream_base_url", _upstream_url, _UPSTREAM_URL_ALLOWED),
    _Variable(_MODEL, "model", _model_id, "a model id without spaces or commas"),
    _Variable(
        _MODELS,
        "models",
        _model_routes,
        "a JSON object mapping each model id (no spaces or commas) to the OpenAI base URL of the engine serving "
        'it, e.g. {"ai/smollm2:360M-Q4_K_M": "http://model-runner-chat.models.svc.cluster.local/engines/v1"}',
    ),
    _Variable("GATEWAY_API_KEYS", "api_keys", parse_api_keys, _KEYS_ALLOWED, secret=True),
    _Variable(
        "GATEWAY_API_KEYS_FILE",
        "api_keys_file",
        _api_keys_file,
        f"the path of a readable file holding {_KEYS_ALLOWED} (at least one key)",
    ),
    _Variable(
        "GATEWAY_UPSTREAM_API_KEY",
        "upstream_api_key",
        _token,
        "one key of visible ASCII characters without spaces",
        secret=True,
    ),
    _Variable(
        "GATEWAY_REQUEST_TIMEOUT_SECONDS", "request_timeout_seconds", _positive_seconds, "a number of seconds > 0"
    ),
    _Variable(
        "GATEWAY_CONNECT_TIMEOUT_SECONDS", "connect_timeout_seconds", _positive_seconds, "a number of seconds > 0"
    ),
    _Variable("GATEWAY_MAX_REQUEST_BYTES", "max_request_bytes", _positive_integer, "a whole number of bytes > 0"),
    _Variable(
        "GATEWAY_CORS_ALLOW_ORIGINS",
        "cors_allow_origins",
        _origin_list,
        "comma-separated origins like https://chat.example.com or http://localhost:3000 (no path), or *",
    ),
    _Variable(
        "GATEWAY_ROUTING",
        "routing",
        _routing,
        "a JSON object mapping served model ids to their routing, each an object with any of policy ("
        + ", ".join(ROUTING_POLICIES) + "), loadFactor (prefix: >= 1), maxInFlightPerReplica, maxWaitSeconds, "
        "holdSeconds, and replicasHost (a "
        'DNS name) or replicas (base URLs), e.g. {"chat": {"policy": "prefix", "maxInFlightPerReplica": 8, '
        '"replicasHost": "model-runner-chat-replicas.models.svc.cluster.local."}}',
    ),
    _Variable(
        "GATEWAY_DISCOVERY_INTERVAL_SECONDS", "discovery_interval_seconds", _positive_seconds, "a number of seconds > 0"
    ),
    _Variable("GATEWAY_LOG_LEVEL", "log_level", _log_level, "one of " + ", ".join(LOG_LEVELS)),
    _Variable("GATEWAY_PORT", "port", _port, "a port number from 1 to 65535"),
    _Variable("GATEWAY_HOST", "host", _listen_address, "an IP address to listen on, such as 0.0.0.0 or 127.0.0.1"),
)
KNOWN_VARIABLES = frozenset(variable.name for variable in _VARIABLES)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Settings from `environ`; an empty value counts as unset. Raises SettingsError listing every problem."""
    values: dict[str, object] = {}
    problems: list[str] = []
    for variable in _VARIABLES:
        raw = environ.get(variable.name, "").strip()
        if not raw:
            if variable.name == _UPSTREAM and not environ.get(_MODELS, "").strip():
                problems.append(
                    f"{_UPSTREAM} is required (or {_MODELS}, for an engine per model): expected {variable.allowed}"
                )
            continue
        try:
            values[variable.attribute] = variable.parse(raw)
        except ValueError as error:
            problems.append(_invalid_value_message(variable, raw, error))
    for exclusive in (_UPSTREAM, _MODEL):
        if environ.get(exclusive, "").strip() and environ.get(_MODELS, "").strip():
            problems.append(f"{_MODELS} and {exclusive} are both set: {_MODELS} names every model and its engine")
    if "api_keys" in values and "api_keys_file" in values:
        problems.append("GATEWAY_API_KEYS and GATEWAY_API_KEYS_FILE are both set: set one of them")
    if problems:
        raise SettingsError(problems)
    settings = Settings(**_with_route_table(values))
    problems = [problem for problem in (_key_scope_problem(settings), _routing_problem(settings)) if problem]
    if problems:
        raise SettingsError(problems)
    return settings


def _routing_problem(settings: Settings) -> str | None:
    """Why GATEWAY_ROUTING does not fit the served models, or None."""
    unserved = sorted(set(settings.routing) - set(settings.routes))
    if unserved:
        served = ", ".join(repr(model) for model in settings.routes) or "none: GATEWAY_UPSTREAM_BASE_URL alone"
        return f"GATEWAY_ROUTING names model {unserved[0]!r}, which the gateway does not serve (it serves {served})"
    return None


def _with_route_table(values: dict[str, object]) -> dict[str, object]:
    """`values` with the upstream variables replaced by the one route table they describe (or the pass-through
    base URL when they name no model)."""
    values = dict(values)
    upstream_base_url = values.pop("upstream_base_url", None)
    model = values.pop("model", None)
    if "models" in values:
        values["routes"] = values.pop("models")
    elif model is not None:
        values["routes"] = {model: upstream_base_url}
    else:
        values["pass_through_base_url"] = upstream_base_url
    return values


def _key_scope_problem(settings: Settings) -> str | None:
    """Why a key's models do not fit the served models, or None."""
    keys_file = settings.api_keys_file
    try:
        check_key_scopes(read_api_keys_file(keys_file) if keys_file else settings.api_keys, settings.served_models)
    except InvalidValue as error:
        return f"{'GATEWAY_API_KEYS_FILE' if keys_file else 'GATEWAY_API_KEYS'}: {error}"
    return None


def unrecognized_variables(environ: Mapping[str, str]) -> list[str]:
    """GATEWAY_* names the gateway does not read: usually a typo that silently leaves a default in force."""
    return sorted(
        name
        for name in environ
        if name.startswith(PREFIX) and name not in KNOWN_VARIABLES and not _SERVICE_LINK_PATTERN.fullmatch(name)
    )


def _invalid_value_message(variable: _Variable, raw: str, error: ValueError) -> str:
    given = "(value hidden)" if variable.secret else repr(raw)
    message = f"{variable.name}={given} is invalid: expected {variable.allowed}"
    if isinstance(error, InvalidValue):
        message += f" ({error})"
    if variable.name == "GATEWAY_PORT" and raw.startswith("tcp://"):
        message += (
            " (this looks like a Kubernetes service link for a Service named 'gateway': set GATEWAY_PORT "
            "explicitly or enableServiceLinks: false on the pod)"
        )
    return message
