"""Gateway configuration, read once at startup from GATEWAY_* environment variables.

Every variable is checked before the server starts, and every problem is reported at once, so a bad
deployment fails with the full list instead of one error per restart.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NamedTuple
from urllib.parse import urlsplit

PREFIX = "GATEWAY_"
DEFAULT_PORT = 8080
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Visible ASCII without spaces: what fits in an `Authorization: Bearer` header unchanged.
_TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")

# Variables Kubernetes injects for a Service named "gateway" (service links), which are not settings.
_SERVICE_LINK_PATTERN = re.compile(r"GATEWAY_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_\w+)?)")


@dataclass(frozen=True)
class Settings:
    upstream_base_url: str
    """OpenAI base URL of the model server, version path included and no trailing slash."""
    model: str | None = None
    api_keys: tuple[str, ...] = field(default=(), repr=False)
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

    @property
    def served_models(self) -> frozenset[str] | None:
        """The model ids clients may name (and /v1/models lists), or None when GATEWAY_MODEL is unset, which
        leaves the choice of model to the model server."""
        return None if self.model is None else frozenset({self.model})


class SettingsError(Exception):
    """Raised with one human-readable line per invalid or missing variable."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


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


def _token_list(value: str) -> tuple[str, ...]:
    return tuple(_token(item) for item in _split_list(value))


def read_api_keys_file(path: str) -> tuple[str, ...]:
    """The keys in a keys file: comma- or newline-separated; raises ValueError when unreadable, empty or invalid."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError from error
    keys = _token_list(text.replace("\n", ","))
    if not keys:
        raise ValueError
    return keys


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


_REQUIRED = "GATEWAY_UPSTREAM_BASE_URL"
_VARIABLES = (
    _Variable(
        _REQUIRED,
        "upstream_base_url",
        _upstream_url,
        "an http(s) URL with the API version path and no credentials, query or fragment, "
        "e.g. http://vllm:8000/v1 or http://model-runner.models.svc.cluster.local/engines/v1",
    ),
    _Variable("GATEWAY_MODEL", "model", str, "a model id"),
    _Variable(
        "GATEWAY_API_KEYS",
        "api_keys",
        _token_list,
        "comma-separated keys of visible ASCII characters without spaces",
        secret=True,
    ),
    _Variable(
        "GATEWAY_API_KEYS_FILE",
        "api_keys_file",
        _api_keys_file,
        "the path of a readable file holding comma- or newline-separated keys (at least one)",
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
            if variable.name == _REQUIRED:
                problems.append(f"{variable.name} is required: expected {variable.allowed}")
            continue
        try:
            values[variable.attribute] = variable.parse(raw)
        except ValueError:
            problems.append(_invalid_value_message(variable, raw))
    if "api_keys" in values and "api_keys_file" in values:
        problems.append("GATEWAY_API_KEYS and GATEWAY_API_KEYS_FILE are both set: set one of them")
    if problems:
        raise SettingsError(problems)
    return Settings(**values)


def unrecognized_variables(environ: Mapping[str, str]) -> list[str]:
    """GATEWAY_* names the gateway does not read: usually a typo that silently leaves a default in force."""
    return sorted(
        name
        for name in environ
        if name.startswith(PREFIX) and name not in KNOWN_VARIABLES and not _SERVICE_LINK_PATTERN.fullmatch(name)
    )


def _invalid_value_message(variable: _Variable, raw: str) -> str:
    given = "(value hidden)" if variable.secret else repr(raw)
    message = f"{variable.name}={given} is invalid: expected {variable.allowed}"
    if variable.name == "GATEWAY_PORT" and raw.startswith("tcp://"):
        message += (
            " (this looks like a Kubernetes service link for a Service named 'gateway': set GATEWAY_PORT "
            "explicitly or enableServiceLinks: false on the pod)"
        )
    return message
