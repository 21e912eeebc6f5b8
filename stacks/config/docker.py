"""The single-host Docker runtime (used when `runtime` is `docker`): Compose-style settings per container.

Values are written the way a Compose file writes them (`"127.0.0.1:8080:8080"`, `512m`, `1m30s`,
`on-failure:3`, `/tmp:size=64m,mode=1777`) and parsed here into plain numbers and names, so a typo is a config
error naming its key before anything is created.
"""

import io
import re
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional, Union

from dotenv.parser import Binding, parse_stream
from pydantic import BeforeValidator, Field, GetJsonSchemaHandler, WithJsonSchema

from .base import EnvValue, Problem, Section, join_key, matching
from .credentials import credential_under

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# --- Compose value grammars ------------------------------------------------------------------------------------

_PORT = re.compile(
    r"(?:(?:(?P<hostIp>\d{1,3}(?:\.\d{1,3}){3}):)?(?P<published>\d{1,5}):)?(?P<target>\d{1,5})(?:/(?P<protocol>tcp|udp))?"
)
_BYTES = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[bkmg]?)b?", re.IGNORECASE)
_UNIT_BYTES = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
_DURATION = re.compile(r"(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m(?!s))?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?")
_RESTART = re.compile(r"(?P<policy>no|always|unless-stopped|on-failure)(?::(?P<retries>\d+))?")


def _env_file_bindings(env_file: str) -> Optional[list[Binding]]:
    """The lines of an env file as Compose reads them, None if it cannot be read."""
    try:
        return list(parse_stream(io.StringIO((PROJECT_ROOT / env_file).read_text())))
    except (OSError, UnicodeDecodeError):
        return None


def _port(value: Any) -> Any:
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return value
    match = _PORT.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            "must be a port mapping like \"8080\", \"5000:8080\", \"127.0.0.1:5000:8080\" or \"5000:8080/udp\" "
            "([host-ip:][published:]target[/tcp|udp]), or a map with target, published, protocol and hostIp"
        )
    return {key: value for key, value in match.groupdict().items() if value is not None}


def byte_size(value: Any) -> int:
    """Compose byte sizes (`512m`, `2g`, `1.5gb`, `1048576`) as bytes."""
    match = _BYTES.fullmatch(str(value).strip())
    if match is None:
        raise ValueError("must be a size like 512m, 2g or 1073741824 (units b, k, m, g; optional trailing b)")
    return int(float(match["number"]) * _UNIT_BYTES[match["unit"].lower()])


def _duration(value: Any) -> str:
    text = str(value).strip()
    match = _DURATION.fullmatch(text)
    if not text or match is None or not any(match.groupdict().values()):
        raise ValueError("must be a duration like 30s, 1m30s, 500ms or 1h")
    parts = {unit: int(amount or 0) for unit, amount in match.groupdict().items()}
    milliseconds = ((parts["h"] * 60 + parts["m"]) * 60 + parts["s"]) * 1000 + parts["ms"]
    return f"{milliseconds}ms" if milliseconds % 1000 else f"{milliseconds // 1000}s"


def _restart(value: Any) -> Any:
    if not isinstance(value, str) or _RESTART.fullmatch(value) is None:
        raise ValueError("must be no, always, unless-stopped, on-failure or on-failure:<max retries>")
    return value


def _volume(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}
    if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ValueError("must be SOURCE:TARGET[:ro|rw] or TARGET, or a map with type, source, target and readOnly")
    source, target = parts[0], parts[1]
    kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    return {"type": kind, "source": source, "target": target, "readOnly": len(parts) == 3 and parts[2] == "ro"}


def _tmpfs(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    target, _, options = value.partition(":")
    parsed: dict[str, Any] = {"target": target}
    for option in filter(None, options.split(",")):
        key, _, setting = option.partition("=")
        if key not in ("size", "mode") or not setting:
            raise ValueError("must be PATH[:size=<size>,mode=<octal>] such as /tmp:size=64m,mode=1777")
        parsed[key] = setting
    return parsed


def _octal(value: Any) -> int:
    if isinstance(value, int):
        return value
    if not re.fullmatch(r"[0-7]{3,4}", str(value)):
        raise ValueError("must be an octal file mode such as 1777 or 0755")
    return int(str(value), 8)


# Editors see what users write (Compose syntax), not the numbers it is parsed into.
Duration = Annotated[str, BeforeValidator(_duration), WithJsonSchema({"type": "string", "pattern": r"^(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$"})]
ByteSize = Annotated[
    int, BeforeValidator(byte_size),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^\d+(\.\d+)?\s*[bBkKmMgG]?[bB]?$"}]}),
]


class _ShortOrLong:
    """JSON Schema of a setting written either as a Compose short string or as its long form."""

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"anyOf": [{"type": ["string", "integer"]}, handler(schema)]}


_SHORT_OR_LONG = _ShortOrLong()
ContainerPath = Annotated[str, matching(r"/[^:]*", "an absolute path inside the container")]


class PortMapping(Section):
    target: Annotated[int, Field(ge=1, le=65535)]
    """Port inside the container."""

    published: Optional[Annotated[int, Field(ge=1, le=65535)]] = None
    """Port on the host; unset lets Docker pick one."""

    protocol: Literal["tcp", "udp"] = "tcp"
    """Transport protocol."""

    host_ip: Optional[Annotated[str, matching(r"\d{1,3}(\.\d{1,3}){3}", "an IPv4 address such as 127.0.0.1")]] = None
    """Host address to publish on; unset publishes on every interface."""


class VolumeMount(Section):
    type: Literal["bind", "volume"] = "volume"
    """`bind` mounts a host path; `volume` a named Docker volume (created and kept by the stack)."""

    source: Optional[str] = None
    """Host path (bind) or volume name; unset for an anonymous volume."""

    target: ContainerPath
    """Path inside the container."""

    read_only: bool = False
    """Mount read-only."""


class TmpfsMount(Section):
    target: ContainerPath
    """Path inside the container."""

    size: Optional[ByteSize] = None
    """Size limit (`64m`); unset: half the host's memory, Docker's default."""

    mode: Optional[Annotated[int, BeforeValidator(_octal), WithJsonSchema({"anyOf": [{"type": "string", "pattern": "^[0-7]{3,4}$"}, {"type": "integer"}]})]] = None
    """File mode in octal (`1777`)."""


class HealthcheckConfig(Section):
    test: Optional[Union[list[str], str]] = None
    """`["CMD", "curl", "-f", "http://localhost/"]`, `["CMD-SHELL", "..."]` or a shell string; unset uses the
    engine's model-ready check (or the gateway's /ready)."""

    interval: Duration = "30s"
    """Time between checks."""

    timeout: Duration = "10s"
    """Time one check may take."""

    retries: Annotated[int, Field(ge=1, le=100)] = 3
    """Failures in a row before the container counts as unhealthy."""

    start_period: Duration = "0s"
    """Grace period after start during which failures do not count (set it to the model-load time)."""


class LoggingConfig(Section):
    driver: str = "json-file"
    """Docker log driver."""

    options: dict[str, str] = {"max-size": "10m", "max-file": "3"}
    """Driver options; the default rotates json-file logs so a chatty engine cannot fill the disk."""


class ServiceConfig(Section):
    ports: list[Annotated[PortMapping, BeforeValidator(_port), _SHORT_OR_LONG]] = []
    """Published ports, short (`"127.0.0.1:8080:8080"`) or long form."""

    volumes: list[Annotated[VolumeMount, BeforeValidator(_volume), _SHORT_OR_LONG]] = []
    """Extra mounts, short (`./models:/models:ro`, `data:/data`) or long form."""

    tmpfs: list[Annotated[TmpfsMount, BeforeValidator(_tmpfs), _SHORT_OR_LONG]] = []
    """tmpfs mounts (`/tmp:size=64m,mode=1777`)."""

    env: dict[Annotated[str, matching(r"[^=\s]+", "a variable name (no '=' or spaces)")], EnvValue] = {}
    """Environment; wins over env files, which win over the image's defaults. Numbers and booleans are written
    as Compose writes them (`8`, `true`)."""

    env_files: list[str] = []
    """Env files (KEY=VALUE lines, relative to the project), later files winning over earlier ones."""

    memory: Optional[ByteSize] = None
    """Memory limit (`4g`)."""

    memory_swap: Optional[ByteSize] = None
    """Memory plus swap (`4g` equal to `memory` disables swap)."""

    cpus: Optional[Annotated[float, Field(gt=0, le=512)]] = None
    """CPU limit in cores (`2.5`)."""

    cpu_shares: Optional[Annotated[int, Field(ge=2, le=262144)]] = None
    """Relative CPU weight under contention (1024 is Docker's default)."""

    restart: Annotated[
        str, BeforeValidator(_restart),
        WithJsonSchema({"type": "string", "pattern": "^(no|always|unless-stopped|on-failure(:[0-9]+)?)$"}),
    ] = "unless-stopped"
    """Restart policy: `no`, `always`, `unless-stopped` or `on-failure[:max retries]`."""

    healthcheck: HealthcheckConfig = HealthcheckConfig()
    """Health check."""

    logging: LoggingConfig = LoggingConfig()
    """Log driver and options."""

    labels: dict[str, str] = {}
    """Container labels."""

    hostname: Optional[str] = None
    """Hostname inside the container."""

    command: Optional[list[str]] = None
    """Command (arguments to the entrypoint), replacing the engine's."""

    entrypoint: Optional[list[str]] = None
    """Entrypoint, replacing the image's."""

    working_dir: Optional[ContainerPath] = None
    """Working directory."""

    user: Optional[str] = None
    """User (`uid[:gid]`) to run as; unset runs as the stack's non-root user."""

    security_opts: list[str] = ["no-new-privileges:true"]
    """Security options; the default forbids privilege escalation."""

    gpus: Optional[str] = None
    """GPUs to expose (`all`, or `"device=0,1"`); needs the NVIDIA container toolkit."""

    def env_file_variables(self) -> Iterator[tuple[int, str, Optional[str]]]:
        """(index of the file, name, value) of every variable the readable env files set."""
        for index, env_file in enumerate(self.env_files):
            for binding in _env_file_bindings(env_file) or ():
                if binding.key is not None:
                    yield index, binding.key, binding.value

    def check(self, path: str) -> Iterator[Problem]:
        for index, env_file in enumerate(self.env_files):
            key = join_key(join_key(path, "envFiles"), index)
            bindings = _env_file_bindings(env_file)
            if bindings is None:
                yield Problem(key, "no such file, or not readable as text (paths are relative to the project)", env_file)
                continue
            for binding in bindings:
                if binding.error:
                    yield Problem(key, f"line {binding.original.line} is not KEY=VALUE (a Compose env file line)",
                                  binding.original.string.strip())
        for index, name, value in self.env_file_variables():
            if (found := credential_under(name, value)) is not None:
                yield Problem(
                    join_key(join_key(path, "envFiles"), index),
                    f"sets {name} to {found}, in a plain-text file: set it with "
                    f"`pulumi config set --secret --path {join_key(join_key(path, 'env'), name)} <value>` instead",
                )
        if self.memory_swap is not None and (self.memory is None or self.memory_swap < self.memory):
            yield Problem(join_key(path, "memorySwap"), "must be at least memory (it is memory plus swap)", self.memory_swap)


# What the stack sets in the gateway container to wire it to the runner, and the setting that changes each.
GATEWAY_WIRED_ENV = {
    "GATEWAY_PORT": "docker.gateway.ports (the container port is fixed; publish another host port)",
    "GATEWAY_UPSTREAM_BASE_URL": "runner.port or runner.apiBasePath",
    "GATEWAY_MODEL": "runner.model",
    "GATEWAY_REQUEST_TIMEOUT_SECONDS": "gateway.requestTimeoutSeconds",
    "GATEWAY_CORS_ALLOW_ORIGINS": "gateway.corsAllowOrigins",
}


class DockerConfig(Section):
    """The single-host Docker runtime (used when `runtime` is `docker`)."""

    network: Annotated[str, matching(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", "a Docker network name")] = "model-stack"
    """Private network of the stack; the gateway reaches the model runner by name on it."""

    cache_volume: Annotated[str, matching(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", "a Docker volume name")] = "model-stack-models"
    """Named volume holding the model cache; kept when the stack is destroyed, so models are never lost."""

    runner: ServiceConfig = ServiceConfig()
    """The model runner container (no published ports by default: only the gateway reaches it)."""

    gateway: ServiceConfig = ServiceConfig(ports=["127.0.0.1:8080:8080"])
    """The gateway container, published on this machine only by default."""

    def env_wiring_problems(self, path: str, runner_wired_env: dict[str, str]) -> Iterator[Problem]:
        """Env or env files that would override what the stack sets to wire the containers together."""
        for service, wired in (("runner", runner_wired_env), ("gateway", GATEWAY_WIRED_ENV)):
            settings: ServiceConfig = getattr(self, service)
            service_path = join_key(path, service)
            for name in settings.env.keys() & wired.keys():
                yield Problem(join_key(join_key(service_path, "env"), name),
                              f"is set by the stack to wire the containers together; set {wired[name]} instead",
                              settings.env[name])
            for index, name, _ in settings.env_file_variables():
                if name in wired:
                    yield Problem(join_key(join_key(service_path, "envFiles"), index),
                                  f"sets {name}, which the stack sets to wire the containers together; "
                                  f"set {wired[name]} instead", settings.env_files[index])
