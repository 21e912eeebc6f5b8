"""One long-running container (or a one-shot job) on a Docker host, set up the way a Compose service would be."""

import re
from fractions import Fraction
from typing import NotRequired, Optional, TypedDict

import pulumi
import pulumi_docker as docker

from .options import child_options


class PortArgs(TypedDict):
    target: int
    """Port inside the container."""

    published: NotRequired[int]
    """Port on the host; absent lets Docker pick one."""

    protocol: NotRequired[str]
    """`tcp` (default), `udp` or `sctp`."""

    host_ip: NotRequired[str]
    """Host address to publish on; absent publishes on every interface."""


class MountArgs(TypedDict):
    type: str
    """`bind`, `volume` or `tmpfs`."""

    target: str
    """Path inside the container."""

    source: NotRequired[str]
    """Host path (bind) or volume name (volume)."""

    read_only: NotRequired[bool]
    """Mount read-only."""

    tmpfs_size_bytes: NotRequired[int]
    """tmpfs size limit."""

    tmpfs_mode: NotRequired[int]
    """tmpfs file mode."""

    propagation: NotRequired[str]
    """Bind propagation (`rprivate`, `shared`, `rslave`, ...)."""

    no_copy: NotRequired[bool]
    """A named volume is not filled with what the image has at the target."""


class HealthcheckArgs(TypedDict):
    test: list[str]
    """`["CMD", ...]` or `["CMD-SHELL", "..."]`."""

    interval: str
    """Time between checks (`30s`)."""

    timeout: str
    """Time one check may take."""

    retries: int
    """Failures in a row before unhealthy."""

    start_period: str
    """Grace period after start."""


class ContainerServiceArgs(TypedDict):
    image: pulumi.Input[str]
    """Image to run."""

    container_name: str
    """Container name (also its name on the network)."""

    network: pulumi.Input[str]
    """Network to join."""

    pull: NotRequired[bool]
    """Pull `image` from its registry and run exactly the pulled digest (absent: the image is local)."""

    aliases: NotRequired[list[str]]
    """Extra names on the network."""

    ports: NotRequired[list[PortArgs]]
    """Published ports."""

    mounts: NotRequired[list[MountArgs]]
    """Bind mounts, named volumes and tmpfs."""

    env: NotRequired[dict[str, str]]
    """Environment (plain)."""

    secret_env: NotRequired[dict[str, pulumi.Input[str]]]
    """Environment from Pulumi secrets; the container's whole environment is then stored as a secret."""

    memory_bytes: NotRequired[int]
    """Memory limit."""

    memory_swap_bytes: NotRequired[int]
    """Memory plus swap limit; -1 lets the container swap without limit."""

    cpus: NotRequired[float]
    """CPU limit in cores."""

    cpu_shares: NotRequired[int]
    """Relative CPU weight."""

    restart: NotRequired[str]
    """`no`, `always`, `unless-stopped` or `on-failure[:N]`."""

    healthcheck: NotRequired[HealthcheckArgs]
    """Health check; absent keeps the image's."""

    log_driver: NotRequired[str]
    """Log driver."""

    log_options: NotRequired[dict[str, str]]
    """Log driver options."""

    labels: NotRequired[dict[str, str]]
    """Labels."""

    hostname: NotRequired[str]
    """Hostname inside the container."""

    entrypoint: NotRequired[list[str]]
    """Entrypoint, replacing the image's."""

    command: NotRequired[list[str]]
    """Command (arguments to the entrypoint), replacing the image's."""

    working_dir: NotRequired[str]
    """Working directory."""

    user: NotRequired[str]
    """`uid[:gid]` to run as."""

    read_only_root: NotRequired[bool]
    """Read-only root filesystem (writable paths come from mounts)."""

    capabilities_add: NotRequired[list[str]]
    """Capabilities added back after all are dropped."""

    security_opts: NotRequired[list[str]]
    """Security options (`no-new-privileges:true`)."""

    gpus: NotRequired[str]
    """GPUs to expose (`all`)."""

    share_network_with: NotRequired[str]
    """Join this container's network namespace instead (`network_mode: container:<name>`): 127.0.0.1 is
    shared, as between containers of one Kubernetes pod."""

    run_to_completion: NotRequired[bool]
    """A one-shot job: `pulumi up` waits for it to exit, and it is not restarted."""


class ContainerService(pulumi.ComponentResource):
    """A hardened container: every capability dropped, never privileged, on the stack's network."""

    container_name: pulumi.Output[str]
    """Name of the container."""

    def __init__(self, name: str, args: ContainerServiceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:ContainerService", name, None, opts)
        child = child_options(self, opts)
        image = args["image"]
        if args.get("pull"):
            pulled = docker.RemoteImage(name, name=image, keep_locally=True, opts=child)
            image = pulled.repo_digest
        policy, _, retries = args.get("restart", "unless-stopped").partition(":")
        one_shot = args.get("run_to_completion", False)
        env = [f"{key}={value}" for key, value in sorted(args.get("env", {}).items())]
        secret_env = args.get("secret_env", {})
        envs: pulumi.Input[list[str]] = env
        if secret_env:
            envs = pulumi.Output.secret(
                pulumi.Output.all(*(pulumi.Output.concat(key, "=", value) for key, value in sorted(secret_env.items())))
                .apply(lambda entries: [*env, *entries])
            )
        healthcheck = args.get("healthcheck")
        container = docker.Container(
            name,
            name=args["container_name"],
            image=image,
            hostname=args.get("hostname"),
            entrypoints=args.get("entrypoint"),
            command=args.get("command"),
            working_dir=args.get("working_dir"),
            user=args.get("user"),
            envs=envs,
            ports=[
                docker.ContainerPortArgs(
                    internal=port["target"], external=port.get("published"), protocol=port.get("protocol", "tcp"),
                    ip=port.get("host_ip"),
                )
                for port in args.get("ports", [])
            ],
            mounts=[_mount(mount) for mount in args.get("mounts", [])],
            memory=_megabytes(args.get("memory_bytes")),
            memory_swap=_megabytes(args.get("memory_swap_bytes")),
            cpus=str(args["cpus"]) if "cpus" in args else None,
            cpu_shares=args.get("cpu_shares"),
            restart="no" if one_shot else policy,
            max_retry_count=int(retries) if retries else None,
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=healthcheck["test"], interval=go_duration(healthcheck["interval"]),
                timeout=go_duration(healthcheck["timeout"]), retries=healthcheck["retries"],
                start_period=go_duration(healthcheck["start_period"]),
            ) if healthcheck else None,
            log_driver=args.get("log_driver"),
            log_opts=args.get("log_options"),
            labels=[docker.ContainerLabelArgs(label=key, value=value) for key, value in sorted(args.get("labels", {}).items())],
            network_mode=f"container:{args['share_network_with']}" if "share_network_with" in args else None,
            networks_advanced=None if "share_network_with" in args else [
                docker.ContainerNetworksAdvancedArgs(name=args["network"], aliases=args.get("aliases", []))
            ],
            read_only=args.get("read_only_root", True),
            privileged=False,
            # Docker reports added capabilities back with their CAP_ prefix: the same form here means no diff.
            capabilities=docker.ContainerCapabilitiesArgs(
                drops=["ALL"],
                adds=[name if name.startswith("CAP_") else f"CAP_{name}" for name in args.get("capabilities_add", [])]
                or None,
            ),
            security_opts=args.get("security_opts", ["no-new-privileges:true"]),
            gpus=args.get("gpus"),
            # A job runs once per `pulumi up` that changes it; `attach` waits for it to exit and `logs` keeps
            # what it printed (the provider records the exit code but does not check it: see below).
            must_run=not one_shot,
            attach=one_shot or None,
            logs=one_shot or None,
            wait=False if one_shot else None,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                additional_secret_outputs=["envs"] if secret_env else None,
                # Docker cannot change a container's health check; the provider would record an update and leave
                # the running container with the old one (the engine lane shows it), so a new check replaces it,
                # the old container first: its name is the new one's too.
                replace_on_changes=["healthcheck"],
                delete_before_replace=True,
            )),
        )
        if one_shot:
            pulumi.Output.all(container.exit_code, container.container_logs, container.urn).apply(
                lambda result: _check_job(args["container_name"], *result))
        self.container_name = container.name
        self.register_outputs({"container_name": self.container_name})


JOB_LOG_LINES = 20


def _check_job(container_name: str, exit_code: Optional[int], logs: Optional[str], urn: str) -> None:
    """Fails the update when a one-shot job failed, with what it printed last: a failed chown or download would
    otherwise leave the update green and the services after it failing."""
    if not exit_code:
        return
    tail = "\n".join((logs or "").rstrip().splitlines()[-JOB_LOG_LINES:])
    raise pulumi.RunError(
        f"the one-shot container {container_name} exited with {exit_code}; its last output:\n{tail}\n"
        f"Fix the cause, then run it again: pulumi up --replace '{urn}'"
    )


_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
# Go spells a microsecond with the micro sign (U+00B5) or the Greek mu (U+03BC).
_NANOSECONDS = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "µs": 10**3, "μs": 10**3, "ns": 1}
_MAX_GO_DURATION = 2**63 - 1


def duration_nanoseconds(text: str) -> int:
    """Nanoseconds of a duration in Go's `time.ParseDuration` grammar, which Compose uses: an optional sign, then
    decimal numbers each with a unit (`1m30.5s`, `.5h`, `-1.5s`), or a bare `0`."""
    sign, body = (text[0], text[1:]) if text[:1] in ("-", "+") else ("", text)
    if body == "0":
        return 0
    parts = _GO_DURATION_PART.findall(body)
    if not parts or "".join(number + unit for number, unit in parts) != body:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 1m30s, 1.5s or 500ms)")
    total = round(sum(Fraction(number) * _NANOSECONDS[unit] for number, unit in parts))
    if total > _MAX_GO_DURATION:
        raise ValueError(f"not a duration: {text!r} is longer than Go's limit of about 292 years")
    return -total if sign == "-" else total


def go_duration(text: str) -> str:
    """A Compose duration (`1m30s`, `1.5s`, `500ms`; see `duration_nanoseconds`) in the form Go's
    `Duration.String()` prints it (`90s` -> `1m30s`, `120s` -> `2m0s`): Docker reports health-check durations back
    in that form, so anything else shows as a change on every `pulumi up`."""
    total = duration_nanoseconds(text)
    sign, total = ("-" if total < 0 else ""), abs(total)
    if total == 0:
        return "0s"
    if total < 10**9:
        unit = "ms" if total >= 10**6 else "µs" if total >= 10**3 else "ns"
        return sign + _decimal(total, _NANOSECONDS[unit]) + unit
    hours, rest = divmod(total, _NANOSECONDS["h"])
    minutes, rest = divmod(rest, _NANOSECONDS["m"])
    return sign + (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + _decimal(rest, 10**9) + "s"


def _decimal(nanoseconds: int, unit: int) -> str:
    whole, fraction = divmod(nanoseconds, unit)
    return f"{whole}.{fraction:0{len(str(unit)) - 1}d}".rstrip("0").rstrip(".") if fraction else str(whole)


UNLIMITED_SWAP = -1


def _megabytes(size: Optional[int]) -> Optional[int]:
    """pulumi-docker takes memory in MB; a limit is never rounded down below what was asked (-1, unlimited swap,
    stays as it is)."""
    return None if size is None else size if size == UNLIMITED_SWAP else -(-size // 2**20)


def _mount(mount: MountArgs) -> docker.ContainerMountArgs:
    tmpfs = None
    if "tmpfs_size_bytes" in mount or "tmpfs_mode" in mount:
        tmpfs = docker.ContainerMountTmpfsOptionsArgs(size_bytes=mount.get("tmpfs_size_bytes"), mode=mount.get("tmpfs_mode"))
    return docker.ContainerMountArgs(
        type=mount["type"], target=mount["target"], source=mount.get("source"), read_only=mount.get("read_only"),
        tmpfs_options=tmpfs,
        bind_options=docker.ContainerMountBindOptionsArgs(propagation=mount["propagation"]) if "propagation" in mount else None,
        volume_options=docker.ContainerMountVolumeOptionsArgs(no_copy=True) if mount.get("no_copy") else None,
    )
