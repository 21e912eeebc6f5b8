"""The single-host Docker runtime (used when `runtime` is `docker`): Compose-style settings per container.

Values are written the way a Compose file writes them (`"127.0.0.1:8080:8080"`, `512m`, `1m30s`,
`on-failure:3`, `/tmp:size=64m,mode=1777`) and parsed here into plain numbers and names, so a typo is a config
error naming its key before anything is created.
"""

import io
import ipaddress
import posixpath
import re
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, NamedTuple, Optional

from dotenv.parser import Binding, parse_stream
from pydantic import BeforeValidator, Field, GetJsonSchemaHandler, WithJsonSchema, model_validator

from components.container_service import UNLIMITED_SWAP, duration_nanoseconds, go_duration
from components.engines import CACHE_MOUNT_PATH

from .base import DockerNetworkName, EnvValue, Problem, Section, join_key, join_keys, matching, no_whitespace
from .credentials import credential_under

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _env_file_bindings(env_file: str) -> Optional[list[Binding]]:
    """The lines of an env file as Compose reads them, None if it cannot be read."""
    try:
        return list(parse_stream(io.StringIO((PROJECT_ROOT / env_file).read_text())))
    except (OSError, UnicodeDecodeError):
        return None


# --- ports: Docker's nat.ParsePortSpec (go-connections), which Compose's short syntax goes through --------------

PROTOCOLS = ("tcp", "udp", "sctp")
_PORT_RANGE = re.compile(r"(?P<start>[0-9]+)(?:-(?P<end>[0-9]+))?")
_PORT_RANGE_HINT = "a port 1-65535 or a range such as 8000-8010"


def port_range(value: Any) -> str:
    """A port or a range (`8080`, `8000-8010`) in its plain form (leading zeros dropped)."""
    match = _PORT_RANGE.fullmatch(str(value)) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    if match is None:
        raise ValueError(f"must be {_PORT_RANGE_HINT}")
    start, end = int(match["start"]), int(match["end"] or match["start"])
    if not 1 <= start <= end <= 65535:
        raise ValueError(f"must be {_PORT_RANGE_HINT} (ports 1-65535, the first not above the last)")
    return str(start) if start == end else f"{start}-{end}"


def port_numbers(text: str) -> range:
    start, _, end = text.partition("-")
    return range(int(start), int(end or start) + 1)


def _host_ip(value: Any) -> Any:
    """An IPv4 or IPv6 address as Go's net.ParseIP reads it (no zone); IPv6 in its short form."""
    if not isinstance(value, str):
        return value
    try:
        if "%" in value:
            raise ValueError(value)
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IPv4 address such as 127.0.0.1 or an IPv6 address such as ::1") from None


def _matching_lengths(target: str, published: Optional[str]) -> None:
    if published is not None and len(port_numbers(published)) != len(port_numbers(target)):
        raise ValueError(
            f"publishes {published} on the host for {target} in the container: a range must map onto a range of the "
            "same length (8000-8010:8000-8010)")


_PORT_SYNTAX = (
    "[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL] such as \"8080\", \"5000:8080\", \"127.0.0.1:5000:8080\", "
    "\"[::1]:5000:8080\", \"127.0.0.1::8080\", \"8000-8010:8000-8010\" or \"53:53/udp\" (protocols tcp, udp, sctp), "
    "or a map with target, published, protocol and hostIp"
)


def _port(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return value
    spec, slash, protocol = value.partition("/")
    parts = spec.split(":")
    host_ip = ":".join(parts[:-2]) if len(parts) > 2 else ""
    published = parts[-2] if len(parts) > 1 else ""
    try:
        if slash and protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is none of {', '.join(PROTOCOLS)}")
        parsed: dict[str, Any] = {"target": _part("container port", port_range, parts[-1]), "protocol": protocol or "tcp"}
        if published:
            parsed["published"] = _part("host port", port_range, published)
        if host_ip:
            if ":" in host_ip and not (host_ip.startswith("[") and host_ip.endswith("]")):
                raise ValueError("an IPv6 host address goes in brackets ([::1]:8080:80)")
            parsed["hostIp"] = _part("host address", _host_ip, host_ip.removeprefix("[").removesuffix("]"))
        _matching_lengths(parsed["target"], parsed.get("published"))
    except ValueError as error:
        raise ValueError(f"{error}; a port mapping is {_PORT_SYNTAX}") from None
    return parsed


def _part(name: str, parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except ValueError as error:
        raise ValueError(f"{name} {text!r} {error}") from None


class HostBinding(NamedTuple):
    """One host address, port and protocol a published port takes; None as the address is every address."""

    address: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]
    port: int
    protocol: str

    def overlaps(self, other: "HostBinding") -> bool:
        every = (None, ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"))
        return (self.port, self.protocol) == (other.port, other.protocol) and (
            self.address == other.address or self.address in every or other.address in every)

    def __str__(self) -> str:
        address = self.address or "0.0.0.0"
        host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
        return f"{host}:{self.port}/{self.protocol}"


# --- mounts: Compose's ParseVolume (compose-go format/volume.go) with Docker's mode rules (moby volume/mounts) ----

# Mode options by kind; Docker takes at most one of each kind.
MOUNT_MODES = {
    "access": ("ro", "rw"),
    "SELinux label": ("z", "Z"),
    "bind propagation": ("private", "rprivate", "shared", "rshared", "slave", "rslave"),
    "copy": ("nocopy",),
    "consistency": ("consistent", "cached", "delegated"),
}
_MODE_KIND = {mode: kind for kind, modes in MOUNT_MODES.items() for mode in modes}
_VOLUME_SYNTAX = "SOURCE:TARGET[:MODE,...] or TARGET, or a map with type, source, target and readOnly"
# Docker's rule for volume (and network) names: at least two characters.
_DOCKER_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]+"


def _volume(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    if "" in parts:
        raise ValueError(f"has an empty part between colons; a volume is {_VOLUME_SYNTAX}")
    if len(parts) > 3:
        raise ValueError(f"has too many colons; a volume is {_VOLUME_SYNTAX}")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}
    source, target = parts[0], parts[1]
    parsed: dict[str, Any] = {"type": "bind" if source.startswith(("/", ".", "~")) else "volume", "source": source,
                              "target": target}
    options = parts[2].split(",") if len(parts) == 3 else []
    unknown = [option for option in options if option not in _MODE_KIND]
    if unknown:
        raise ValueError(f"has the unknown mode {unknown[0]!r}; modes are {', '.join(_MODE_KIND)}, "
                         "comma-separated, at most one of each kind")
    for kind in MOUNT_MODES:
        given = [option for option in options if _MODE_KIND[option] == kind]
        if len(given) > 1:
            raise ValueError(f"sets the {kind} mode twice ({','.join(given)}); at most one of {'/'.join(MOUNT_MODES[kind])}")
    for option in options:
        kind = _MODE_KIND[option]
        if kind == "access":
            parsed["readOnly"] = option == "ro"
        elif kind == "SELinux label":
            parsed["selinux"] = option
        elif kind == "bind propagation":
            parsed["propagation"] = option
        elif kind == "copy":
            parsed["noCopy"] = True
    return parsed


def _container_path(value: Any) -> Any:
    return posixpath.normpath(value) if isinstance(value, str) and value.startswith("/") else value


ContainerPath = Annotated[
    str, matching(r"/[^:]*", "an absolute path inside the container"), BeforeValidator(_container_path)]


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


# --- sizes, durations, restart policies, health checks -----------------------------------------------------------

# docker/go-units RAMInBytes, which Compose reads memory sizes with: binary units, optional `i` and `b`.
_BYTES = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?) ?(?P<unit>[kmgtp]?)i?b?", re.IGNORECASE)
_UNIT_BYTES = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_BYTES_HINT = "a size such as 512m, 2g, 1.5GiB or 1073741824 (units k, m, g, t, p; optional i and b)"
# Docker's smallest memory limit (daemon linuxMinMemory).
MIN_MEMORY_BYTES = 6 * 2**20


def byte_size(value: Any) -> int:
    """Compose byte sizes (`512m`, `2g`, `1.5GiB`, `1048576`) as bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _BYTES.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"must be {_BYTES_HINT}")
    return int(float(match["number"]) * _UNIT_BYTES[match["unit"].lower()])


def _swap_size(value: Any) -> int:
    return UNLIMITED_SWAP if value in (UNLIMITED_SWAP, str(UNLIMITED_SWAP)) else byte_size(value)


# Docker refuses health-check durations between 0 and this (daemon: "cannot be less than 1ms").
_MIN_HEALTH_DURATION_NS = 10**6


def _duration(value: Any) -> str:
    try:
        nanoseconds = duration_nanoseconds(value) if isinstance(value, str) else None
    except ValueError:
        nanoseconds = None
    if nanoseconds is None:
        raise ValueError("must be a duration in Go's grammar, such as 30s, 1m30s, 1.5s, 500ms or 1h (units h, m, s, "
                         "ms, us, ns)")
    if nanoseconds != 0 and nanoseconds < _MIN_HEALTH_DURATION_NS:
        raise ValueError("must be 0 or at least 1ms (Docker's smallest health-check duration)")
    return go_duration(value)


_RESTART = re.compile(r"no|always|unless-stopped|on-failure(?::[0-9]+)?")


def _restart(value: Any) -> Any:
    if not isinstance(value, str) or _RESTART.fullmatch(value) is None:
        raise ValueError("must be no, always, unless-stopped, on-failure or on-failure:<max retries> (a count of "
                         "retries only goes with on-failure)")
    return value


_HEALTH_TEST_FORMS = ('a shell command string, or a list: ["CMD", <program>, <args>...], ["CMD-SHELL", <command>] '
                      'or ["NONE"] (disables the image\'s check)')


def _health_test(value: Any) -> Any:
    """A Compose health-check test as the list Docker takes (a string is CMD-SHELL)."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"must not be empty; it is {_HEALTH_TEST_FORMS}")
        return ["CMD-SHELL", value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return value
    arguments = {"CMD": "at least one more item (the program)", "CMD-SHELL": "exactly one more item (the command)",
                 "NONE": "no more items"}
    first = value[0] if value else None
    if first not in arguments:
        raise ValueError(f"must start with CMD, CMD-SHELL or NONE; it is {_HEALTH_TEST_FORMS}")
    more = len(value) - 1
    if (first == "CMD" and more < 1) or (first == "CMD-SHELL" and more != 1) or (first == "NONE" and more):
        raise ValueError(f"{first} takes {arguments[first]}; the test is {_HEALTH_TEST_FORMS}")
    return value


def _schema_pattern(pattern: str) -> str:
    """A Python pattern as a JSON Schema (ECMA-262) one: no `P` in named groups."""
    return f"^(?:{re.sub(r'[?]P<[a-z_]+>', '', pattern)})$"


# Editors see what users write (Compose syntax), not the numbers it is parsed into.
Duration = Annotated[str, BeforeValidator(_duration), WithJsonSchema(
    {"type": "string", "pattern": r"^[-+]?(?:0|(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+)$"})]
_BYTES_PATTERN = r"[0-9]+(?:\.[0-9]+)? ?[kKmMgGtTpP]?[iI]?[bB]?"
ByteSize = Annotated[int, BeforeValidator(byte_size), WithJsonSchema(
    {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": f"^{_BYTES_PATTERN}$"}]})]
SwapSize = Annotated[int, BeforeValidator(_swap_size), WithJsonSchema({"anyOf": [
    {"type": "integer", "minimum": UNLIMITED_SWAP}, {"type": "string", "pattern": f"^(?:{UNLIMITED_SWAP}|{_BYTES_PATTERN})$"}]})]
PortRange = Annotated[str, BeforeValidator(port_range), WithJsonSchema(
    {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string", "pattern": r"^[0-9]+(-[0-9]+)?$"}]})]


class _ShortOrLong:
    """JSON Schema of a setting written either as a Compose short string (matching `pattern`) or as its long form."""

    def __init__(self, pattern: str, integer: bool = False):
        self.short: dict[str, Any] = {"type": "string", "pattern": pattern}
        self.integer = integer

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"anyOf": [self.short, *([{"type": "integer", "minimum": 1, "maximum": 65535}] if self.integer else []),
                          handler(schema)]}


class PortMapping(Section):
    target: PortRange
    """Port inside the container, or a range (`8000-8010`)."""

    published: Optional[PortRange] = None
    """Port or range on the host (as long as `target`'s); unset lets Docker pick one."""

    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    """Transport protocol."""

    host_ip: Optional[Annotated[str, BeforeValidator(_host_ip)]] = None
    """Host address to publish on (IPv4 or IPv6); unset publishes on every interface."""

    @model_validator(mode="after")
    def _ranges_match(self) -> "PortMapping":
        _matching_lengths(self.target, self.published)
        return self

    def pairs(self) -> list[tuple[Optional[int], int]]:
        """(host port or None, container port) of every port the mapping publishes."""
        targets = port_numbers(self.target)
        if self.published is None:
            return [(None, target) for target in targets]
        return list(zip(port_numbers(self.published), targets))

    def host_bindings(self) -> list[HostBinding]:
        address = ipaddress.ip_address(self.host_ip) if self.host_ip else None
        return [HostBinding(address, published, self.protocol) for published, _ in self.pairs() if published]


class VolumeMount(Section):
    type: Literal["bind", "volume"] = "volume"
    """`bind` mounts a host path (it must exist; relative to the project); `volume` a named Docker volume
    (created and kept by Docker)."""

    source: Optional[str] = None
    """Host path (bind) or volume name; unset for an anonymous volume."""

    target: ContainerPath
    """Path inside the container."""

    read_only: bool = False
    """Mount read-only (`ro`)."""

    propagation: Optional[Literal["private", "rprivate", "shared", "rshared", "slave", "rslave"]] = None
    """Bind propagation (binds only)."""

    no_copy: bool = False
    """Do not fill a new named volume with what the image has at the target (`nocopy`; volumes only). Needs Docker
    26 (API 1.45) or later: the docker provider sends volume options to no older daemon and fails instead."""

    selinux: Optional[Literal["z", "Z"]] = None
    """SELinux relabelling as Compose writes it (`z` shared, `Z` private). pulumi-docker's mounts cannot
    relabel, so the stack warns and mounts without it: on an SELinux host, label the source yourself."""

    def check(self, path: str) -> Iterator[Problem]:
        if self.type == "bind":
            if self.source is None:
                yield Problem(path, "a bind mount needs a source (a host path)")
            elif not bind_source(self.source).exists():
                yield Problem(path, "bind source does not exist on this machine (relative paths start at the project)",
                              self.source)
            if self.no_copy:
                yield Problem(path, "nocopy applies to named volumes, not bind mounts", self.source)
        else:
            if self.propagation is not None:
                yield Problem(path, f"bind propagation ({self.propagation}) applies to bind mounts, not named volumes",
                              self.source)
            if self.source is not None and re.fullmatch(_DOCKER_NAME, self.source) is None:
                yield Problem(path, "must name a Docker volume (at least two letters, digits, '_', '.' or '-', starting "
                                    "with a letter or digit) or a host path starting with /, ./ or ~", self.source)


def bind_source(source: str) -> Path:
    """A bind mount's host path: `~` expanded, relative to the project."""
    return (PROJECT_ROOT / Path(source).expanduser()).resolve()


class TmpfsMount(Section):
    target: ContainerPath
    """Path inside the container."""

    size: Optional[ByteSize] = None
    """Size limit (`64m`); unset: half the host's memory, Docker's default."""

    mode: Optional[Annotated[int, BeforeValidator(_octal), WithJsonSchema({"anyOf": [{"type": "string", "pattern": "^[0-7]{3,4}$"}, {"type": "integer"}]})]] = None
    """File mode in octal (`1777`)."""


class HealthcheckConfig(Section):
    test: Optional[Annotated[list[str], BeforeValidator(_health_test), WithJsonSchema({"anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string"}, "minItems": 1,
         "prefixItems": [{"enum": ["CMD", "CMD-SHELL", "NONE"]}]},
    ]})]] = None
    """A shell command string (run as `CMD-SHELL`), `["CMD", "curl", "-f", "http://localhost/"]`,
    `["CMD-SHELL", "..."]`, or `["NONE"]` to run no check; unset uses the engine's model-ready check (or the
    gateway's /ready)."""

    interval: Duration = "30s"
    """Time between checks (Go durations: `30s`, `1m30.5s`)."""

    timeout: Duration = "10s"
    """Time one check may take."""

    retries: Annotated[int, Field(ge=1, le=100)] = 3
    """Failures in a row before the container counts as unhealthy."""

    start_period: Duration = "0s"
    """Grace period after start during which failures do not count (set it to the model-load time)."""


class LoggingConfig(Section):
    driver: Annotated[str, no_whitespace("a Docker log driver such as json-file or local")] = "json-file"
    """Docker log driver."""

    options: dict[str, str] = {"max-size": "10m", "max-file": "3"}
    """Driver options; the default rotates json-file logs so a chatty engine cannot fill the disk."""


_PORT_PATTERN = (r"^(?:(?:(?:\[[0-9A-Fa-f:.]+\]|[0-9.]+):)?(?:[0-9]+(?:-[0-9]+)?)?:)?[0-9]+(?:-[0-9]+)?"
                 r"(?:/(?:tcp|udp|sctp))?$")
_VOLUME_PATTERN = rf"^[^:]+(?::[^:]+(?::(?:{'|'.join(_MODE_KIND)})(?:,(?:{'|'.join(_MODE_KIND)}))*)?)?$"
# pulumi-docker's `gpus` takes Docker's `--gpus` in these two forms only.
Gpus = Annotated[str, matching(r"all|device=[A-Za-z0-9-]+(?:,[A-Za-z0-9-]+)*",
                               "all, or device=<id>[,<id>...] such as device=0,1 (what pulumi-docker passes to Docker)")]


class ServiceConfig(Section):
    ports: list[Annotated[PortMapping, BeforeValidator(_port), _ShortOrLong(_PORT_PATTERN, integer=True)]] = []
    """Published ports, short (`"127.0.0.1:8080:8080"`, `"[::1]:8080:8080"`, `"8000-8010:8000-8010"`,
    `"53:53/udp"`) or long form."""

    volumes: list[Annotated[VolumeMount, BeforeValidator(_volume), _ShortOrLong(_VOLUME_PATTERN)]] = []
    """Extra mounts, short (`./models:/models:ro`, `data:/data`, `/srv:/srv:ro,rslave`) or long form."""

    tmpfs: list[Annotated[TmpfsMount, BeforeValidator(_tmpfs), _ShortOrLong(r"^/[^:]*(?::.*)?$")]] = []
    """tmpfs mounts (`/tmp:size=64m,mode=1777`)."""

    env: dict[Annotated[str, matching(r"[^=\s]+", "a variable name (no '=' or spaces)")], EnvValue] = {}
    """Environment; wins over env files, which win over the image's defaults. Numbers and booleans are written
    as Compose writes them (`8`, `true`)."""

    env_files: list[str] = []
    """Env files (KEY=VALUE lines, relative to the project), later files winning over earlier ones."""

    memory: Optional[ByteSize] = None
    """Memory limit (`4g`; at least 6m, Docker's minimum)."""

    memory_swap: Optional[SwapSize] = None
    """Memory plus swap (at least `memory`; equal to it disables swap, -1 allows unlimited swap)."""

    cpus: Optional[Annotated[float, Field(gt=0, le=512)]] = None
    """CPU limit in cores (`2.5`)."""

    cpu_shares: Optional[Annotated[int, Field(ge=2, le=262144)]] = None
    """Relative CPU weight under contention (1024 is Docker's default)."""

    restart: Annotated[
        str, BeforeValidator(_restart), WithJsonSchema({"type": "string", "pattern": _schema_pattern(_RESTART.pattern)}),
    ] = "unless-stopped"
    """Restart policy: `no`, `always`, `unless-stopped` or `on-failure[:max retries]`."""

    healthcheck: HealthcheckConfig = HealthcheckConfig()
    """Health check."""

    logging: LoggingConfig = LoggingConfig()
    """Log driver and options."""

    labels: dict[str, str] = {}
    """Container labels."""

    hostname: Optional[Annotated[str, Field(max_length=253), matching(
        r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
        "a host name (RFC 1123: dot-separated labels of letters, digits and '-')")]] = None
    """Hostname inside the container."""

    command: Optional[list[str]] = None
    """Command (arguments to the entrypoint), replacing the engine's."""

    entrypoint: Optional[list[str]] = None
    """Entrypoint, replacing the image's."""

    working_dir: Optional[ContainerPath] = None
    """Working directory."""

    user: Optional[Annotated[str, matching(r"[^\s:]+(?::[^\s:]+)?", "a user as Docker takes it: user[:group], by "
                                                                 "name or number, no spaces")]] = None
    """User (`uid[:gid]`) to run as; unset runs as the stack's non-root user."""

    security_opts: list[str] = ["no-new-privileges:true"]
    """Security options; the default forbids privilege escalation."""

    gpus: Optional[Gpus] = None
    """GPUs to expose (`all`, or `device=0,1`); needs the NVIDIA container toolkit. For the runner: unset, a model
    with gpu.count gets every GPU, and several such models get distinct devices instead, gpu.count each in config
    order (the first `device=0`, the next `device=1`, ...), since engines sharing a GPU each size their memory for
    all of it; set, only one model may use GPUs."""

    def env_file_variables(self) -> Iterator[tuple[int, str, Optional[str]]]:
        """(index of the file, name, value) of every variable the readable env files set."""
        for index, env_file in enumerate(self.env_files):
            for binding in _env_file_bindings(env_file) or ():
                if binding.key is not None:
                    yield index, binding.key, binding.value

    def checks(self, path: str) -> list[Iterator[Problem]]:
        return [self._env_file_problems(path), self._memory_problems(path), self._mount_problems(path)]

    def _env_file_problems(self, path: str) -> Iterator[Problem]:
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

    def _memory_problems(self, path: str) -> Iterator[Problem]:
        if self.memory and self.memory < MIN_MEMORY_BYTES:
            yield Problem(join_key(path, "memory"), f"must be at least 6m ({MIN_MEMORY_BYTES} bytes), Docker's smallest "
                          "memory limit", self.memory)
        if self.memory_swap is not None and self.memory_swap > 0:
            if not self.memory:
                yield Problem(join_key(path, "memorySwap"), "needs memory set: Docker limits swap only together with "
                              "memory (-1 allows unlimited swap)", self.memory_swap)
            elif self.memory_swap < self.memory:
                yield Problem(join_key(path, "memorySwap"), f"must be at least memory ({self.memory} bytes; it is memory "
                              "plus swap), or -1 for unlimited swap", self.memory_swap)

    def _mount_problems(self, path: str) -> Iterator[Problem]:
        first: dict[str, str] = {}
        for key, target in self.mount_targets(path):
            if target in first:
                yield Problem(key, f"mounts over {target}, which {first[target]} mounts already (Docker refuses a "
                                   "duplicate mount point)", target)
            first.setdefault(target, key)

    def mount_targets(self, path: str) -> list[tuple[str, str]]:
        """(key, container path) of every mount the service configures."""
        return [*((join_key(join_key(path, "volumes"), index), volume.target) for index, volume in enumerate(self.volumes)),
                *((join_key(join_key(path, "tmpfs"), index), tmpfs.target) for index, tmpfs in enumerate(self.tmpfs))]


def gateway_wired_env(model_keys: list[str]) -> dict[str, str]:
    """What the stack sets in the gateway container to wire it to the models' runners (`model_keys`: their config
    sections), and the setting that changes each."""
    def settings(*names: str) -> str:
        return " or ".join(join_key(key, name) for key in model_keys for name in names)

    return {
        "GATEWAY_PORT": "docker.gateway.ports (the container port is fixed; publish another host port)",
        "GATEWAY_UPSTREAM_BASE_URL": settings("port", "apiBasePath"),
        "GATEWAY_MODEL": settings("model"),
        "GATEWAY_MODELS": settings("model", "port", "apiBasePath"),
        "GATEWAY_REQUEST_TIMEOUT_SECONDS": "gateway.requestTimeoutSeconds",
        "GATEWAY_CORS_ALLOW_ORIGINS": "gateway.corsAllowOrigins",
        "GATEWAY_MAX_REQUEST_BYTES": "gateway.maxRequestBody",
        "GATEWAY_ROUTING": settings("routing", "model", "loadBudgetSeconds"),
    }


class DockerConfig(Section):
    """The single-host Docker runtime (used when `runtime` is `docker`)."""

    network: DockerNetworkName = "model-stack"
    """Private network of the stack; the gateway reaches the model runner by name on it."""

    cache_volume: Annotated[str, matching(_DOCKER_NAME, "a Docker volume name (at least two letters, digits, '_', '.' or '-')")] = "model-stack-models"
    """Named volume holding the model cache (with several `models`, one per model: `<cacheVolume>-<name>`); kept
    when the stack is destroyed, so models are never lost."""

    runner: ServiceConfig = ServiceConfig()
    """The model runner container (no published ports by default: only the gateway reaches it)."""

    gateway: ServiceConfig = ServiceConfig(ports=["127.0.0.1:8080:8080"])
    """The gateway container, published on this machine only by default."""

    def checks(self, path: str) -> list[Iterator[Problem]]:
        return [self._cache_mount_problems(path), self._host_port_problems(path), self._gateway_gpu_problems(path)]

    def _cache_mount_problems(self, path: str) -> Iterator[Problem]:
        for key, target in self.runner.mount_targets(join_key(path, "runner")):
            if target == CACHE_MOUNT_PATH:
                yield Problem(key, f"mounts over {CACHE_MOUNT_PATH}, where the stack mounts the model cache volume "
                                   "(docker.cacheVolume); mount somewhere else", target)

    def _host_port_problems(self, path: str) -> Iterator[Problem]:
        taken: list[tuple[str, HostBinding]] = []
        for service in ("runner", "gateway"):
            for index, port in enumerate(getattr(self, service).ports):
                key = join_key(join_keys(path, f"{service}.ports"), index)
                bindings = port.host_bindings()
                clash = next(((earlier, mine, theirs) for earlier, theirs in taken for mine in bindings
                              if mine.overlaps(theirs)), None)
                if clash is not None:
                    earlier, mine, theirs = clash
                    yield Problem(key, f"publishes {mine} on the host, which {earlier} publishes already ({theirs}; "
                                       "an address of 0.0.0.0, :: or none takes the port on every address)")
                taken.extend((key, binding) for binding in bindings)

    def _gateway_gpu_problems(self, path: str) -> Iterator[Problem]:
        if self.gateway.gpus is not None:
            yield Problem(join_keys(path, "gateway.gpus"), "the gateway uses no GPU (set docker.runner.gpus instead)",
                          self.gateway.gpus)

    def wiring_problems(self, path: str, models_wired_env: dict[str, dict[str, str]]) -> Iterator[Problem]:
        """Settings of `runner`, which every model's runner container shares, that only one container can have,
        and env or env files that would override what the stack sets to wire the containers together.
        `models_wired_env`: each model's config key -> the engine env the stack sets and the setting for each."""
        if len(models_wired_env) > 1:
            for index, port in enumerate(self.runner.ports):
                if port.host_bindings():
                    yield Problem(join_key(join_keys(path, "runner.ports"), index),
                                  f"would publish the same host port for each of the {len(models_wired_env)} models' "
                                  "runner containers, and only one can have it (only the gateway needs publishing)",
                                  ", ".join(map(str, port.host_bindings())))
        runner_wired_env = {name: setting for wired in models_wired_env.values() for name, setting in wired.items()}
        for service, wired in (("runner", runner_wired_env), ("gateway", gateway_wired_env(list(models_wired_env)))):
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
