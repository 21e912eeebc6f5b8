"""The single-host Docker runtime: the same model runner and gateway as on Kubernetes, as containers on one
private network, with the model cache in a named volume that outlives the stack."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Optional

import pulumi
import pulumi_docker as docker
from dotenv import dotenv_values

from components.container_service import ContainerService, ContainerServiceArgs, MountArgs
from components.engines import CACHE_MOUNT_PATH, HF_TOKEN_ENV, docker_health_test, render_profile
from components.gateway import gateway_route_env
from components.image import Image

from .config import RUNNER, ServedModel, StackConfig
from .config.base import byte_count
from .config.docker import ServiceConfig, bind_source
from .config.secrets import StackSecrets
from .routing import gateway_routing

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GATEWAY = "gateway"
GATEWAY_PORT = 8080
# The same non-root user as on Kubernetes (the gateway image's own user).
RUN_AS = "10001:10001"
# The gateway image's own HEALTHCHECK command (app/Dockerfile), so the configured timing applies to it.
GATEWAY_HEALTH_TEST = ["CMD", "/opt/venv/bin/python", "-m", "model_gateway.healthcheck"]


def deploy_docker(config: StackConfig, secrets: StackSecrets) -> None:
    settings = config.docker
    network = docker.Network("network", name=settings.network, driver="bridge")
    routes: dict[str, str] = {}
    runners: list[pulumi.Resource] = []
    for model in config.served_models:
        runner, url = _serve_model(config, model, secrets, network)
        routes[model.config.model] = url
        runners.append(runner)

    gateway_env = {
        "GATEWAY_PORT": str(GATEWAY_PORT),
        **gateway_route_env(routes),
        "GATEWAY_REQUEST_TIMEOUT_SECONDS": str(config.gateway.request_timeout_seconds),
        "GATEWAY_MAX_REQUEST_BYTES": str(byte_count(config.gateway.max_request_body)),
        # One engine per model here: admission only, no replicas to choose between.
        "GATEWAY_ROUTING": json.dumps(gateway_routing(config), sort_keys=True),
    }
    if config.gateway.cors_allow_origins:
        gateway_env["GATEWAY_CORS_ALLOW_ORIGINS"] = ",".join(config.gateway.cors_allow_origins)
    service_env_is_secret = config.is_secret("docker")
    if config.gateway.image is not None:
        gateway_args = service_args(
            settings.gateway, GATEWAY, settings.network, config.gateway.image, gateway_env, service_env_is_secret)
        gateway_args["pull"] = True
    else:
        image = _build_gateway(config)
        gateway_args = service_args(
            settings.gateway, GATEWAY, settings.network, image.ref, gateway_env, service_env_is_secret)
        # A local build keeps its tag across rebuilds: the context hash makes a rebuild replace the container.
        gateway_args["labels"] = {**gateway_args["labels"], "model-stack.build-context": image.context_hash}
    gateway_args["mounts"] = [*_scratch(settings.gateway, ["/tmp"]), *gateway_args["mounts"]]
    if secrets.gateway_api_keys is not None:
        gateway_args["secret_env"] = {"GATEWAY_API_KEYS": secrets.gateway_api_keys, **gateway_args.get("secret_env", {})}
    health = _healthcheck(settings.gateway, GATEWAY_HEALTH_TEST, "10s")
    if health is not None:
        gateway_args["healthcheck"] = health
    ContainerService(GATEWAY, gateway_args, opts=pulumi.ResourceOptions(depends_on=[network, *runners]))
    url = _gateway_url(settings.gateway)
    if url is not None:
        pulumi.export("gatewayUrl", url)


def _serve_model(
    config: StackConfig, model: ServedModel, secrets: StackSecrets, network: docker.Network
) -> tuple[ContainerService, str]:
    """A model's engine container, with its cache volume and the jobs that prepare it; returns the container and
    the OpenAI base URL the gateway reaches it at."""
    settings = config.docker
    runner_config = model.config
    name = model.workload_name
    # The one-model shorthand's resources keep the names they have always had; each of several models adds its own.
    suffix = name.removeprefix(RUNNER)
    volume_name = f"{settings.cache_volume}{suffix}"
    # Downloaded models are expensive: the volume stays when the stack is destroyed (without blocking the destroy,
    # as `protect` would), and the next `pulumi up` finds the models in it.
    cache = docker.Volume(f"model-cache{suffix}", name=volume_name, opts=pulumi.ResourceOptions(retain_on_delete=True))
    engine = render_profile(
        runner_config.engine,
        runner_config.model,
        image=runner_config.image,
        port=runner_config.port,
        api_base_path=runner_config.api_base_path,
        liveness_path=runner_config.liveness_path,
        ready_path=runner_config.ready_path,
        model_hub=runner_config.model_hub,
    )
    cache_mount: MountArgs = {"type": "volume", "source": volume_name, "target": CACHE_MOUNT_PATH}
    writable = _scratch(settings.runner, list(engine.writable_paths.values()))
    # A section stored encrypted keeps its env secret all the way to the container.
    runner_env_is_secret = config.is_secret(model.top_level_key)
    service_env_is_secret = config.is_secret("docker")
    engine_env = {**engine.env, **({} if runner_env_is_secret else dict(runner_config.env))}
    runner_secret_env: dict[str, pulumi.Input[str]] = dict(runner_config.env) if runner_env_is_secret else {}
    engine_secret_env = {**runner_secret_env, **({HF_TOKEN_ENV: secrets.hf_token} if secrets.hf_token is not None else {})}
    after: list[pulumi.Resource] = [network, cache]

    # Docker has no fsGroup: a fresh named volume belongs to root, so one job hands it to the engine's user,
    # with CHOWN as its only capability.
    owner = ContainerService(
        f"cache-owner{suffix}",
        {
            "image": engine.image, "pull": True, "container_name": model.docker_containers["cache owner"],
            "network": settings.network,
            "entrypoint": ["chown", RUN_AS, CACHE_MOUNT_PATH], "user": "0:0", "mounts": [cache_mount],
            "capabilities_add": ["CHOWN"], "run_to_completion": True,
        },
        opts=pulumi.ResourceOptions(depends_on=after),
    )
    after = [*after, owner]
    if engine.pull.mode == "init":
        pull = ContainerService(
            f"model-pull{suffix}",
            {
                "image": engine.image, "pull": True, "container_name": model.docker_containers["model pull"],
                "network": settings.network,
                "entrypoint": list(engine.pull.command), "user": RUN_AS, "mounts": [cache_mount, *writable],
                "env": {**engine_env, **engine.pull.env}, "secret_env": engine_secret_env, "run_to_completion": True,
            },
            opts=pulumi.ResourceOptions(depends_on=after),
        )
        after = [*after, pull]

    runner_args = service_args(settings.runner, name, settings.network, engine.image, engine_env, service_env_is_secret)
    runner_args["pull"] = True
    runner_args["mounts"] = [cache_mount, *writable, *runner_args["mounts"]]
    runner_args["secret_env"] = {**engine_secret_env, **runner_args.get("secret_env", {})}
    if engine.command and settings.runner.entrypoint is None:
        runner_args["entrypoint"] = list(engine.command)
    if settings.runner.command is None and (engine.args or runner_config.args):
        runner_args["command"] = [*engine.args, *runner_config.args]
    health = _healthcheck(settings.runner, docker_health_test(engine), f"{runner_config.load_budget_seconds}s")
    if health is not None:
        runner_args["healthcheck"] = health
    if runner_config.gpu.count:
        runner_args["gpus"] = config.docker_gpus()[model.key]
    runner = ContainerService(name, runner_args, opts=pulumi.ResourceOptions(depends_on=after))
    if engine.pull.mode == "sidecar":
        ContainerService(
            f"model-pull{suffix}",
            {
                "image": runner_config.pull_sidecar_image or engine.pull.image or engine.image, "pull": True,
                "container_name": model.docker_containers["model pull"], "network": settings.network,
                "entrypoint": list(engine.pull.command),
                "user": RUN_AS, "env": engine_env, "secret_env": runner_secret_env, "mounts": writable,
                # It talks to the engine on 127.0.0.1, as it does inside the Kubernetes pod.
                "share_network_with": name,
            },
            opts=pulumi.ResourceOptions(depends_on=[runner]),
        )
    return runner, f"http://{name}:{engine.port}{engine.api_base_path}"


def _gateway_url(gateway: ServiceConfig) -> Optional[str]:
    """Where this machine reaches the gateway: its published port, on loopback when published on every address."""
    for port in gateway.ports:
        published = {target: host for host, target in port.pairs()}.get(GATEWAY_PORT)
        if published is not None and port.protocol == "tcp":
            address = ip_address(port.host_ip) if port.host_ip else None
            if address is None or address.is_unspecified:
                host = "127.0.0.1"
            else:
                host = f"[{address}]" if address.version == 6 else str(address)
            return f"http://{host}:{published}/v1"
    return None


def service_args(
    service: ServiceConfig, name: str, network: str, image: pulumi.Input[str], base_env: dict[str, str],
    secret_env: bool = False,
) -> ContainerServiceArgs:
    """A container's Compose-style settings. Environment precedence: the service's `env` over its env files
    (later files over earlier ones) over what the stack sets (`base_env`) over the image's own. `secret_env`:
    the service's `env` comes from a section stored encrypted and stays secret."""
    env = dict(base_env)
    for env_file in service.env_files:
        env.update({key: value or "" for key, value in dotenv_values(PROJECT_ROOT / env_file).items()})
    if not secret_env:
        env.update(service.env)
    for volume in service.volumes:
        if volume.selinux:
            pulumi.log.warn(f"{name}: the volume on {volume.target} asks for SELinux relabelling ({volume.selinux}), "
                            "which pulumi-docker's mounts cannot do; on an SELinux host, label its source yourself "
                            "(chcon -Rt container_file_t <path>)")
    args: dict[str, Any] = {
        "image": image,
        "container_name": name,
        "network": network,
        "aliases": [name],
        "env": env,
        "user": service.user or RUN_AS,
        "restart": service.restart,
        "log_driver": service.logging.driver,
        "log_options": dict(service.logging.options),
        "labels": {"com.docker.compose.project": "model-stack", "com.docker.compose.service": name, **service.labels},
        "security_opts": list(service.security_opts),
        # pulumi-docker publishes one port per entry: a range is one entry per port.
        "ports": [
            {"target": target, "protocol": port.protocol,
             **({"published": published} if published else {}),
             **({"host_ip": port.host_ip} if port.host_ip else {})}
            for port in service.ports for published, target in port.pairs()
        ],
        "mounts": [
            *({"type": volume.type, "target": volume.target, "read_only": volume.read_only,
               **({"source": str(bind_source(volume.source)) if volume.type == "bind" else volume.source} if volume.source else {}),
               **({"propagation": volume.propagation} if volume.propagation else {}),
               **({"no_copy": True} if volume.no_copy else {})}
              for volume in service.volumes),
            *({"type": "tmpfs", "target": tmpfs.target,
               **({"tmpfs_size_bytes": tmpfs.size} if tmpfs.size else {}),
               **({"tmpfs_mode": tmpfs.mode} if tmpfs.mode is not None else {})}
              for tmpfs in service.tmpfs),
        ],
    }
    optional = {
        "memory_bytes": service.memory, "memory_swap_bytes": service.memory_swap, "cpus": service.cpus,
        "cpu_shares": service.cpu_shares, "hostname": service.hostname, "entrypoint": service.entrypoint,
        "command": service.command, "working_dir": service.working_dir, "gpus": service.gpus,
    }
    args.update({key: value for key, value in optional.items() if value is not None})
    if secret_env and service.env:
        args["secret_env"] = dict(service.env)
    return args  # type: ignore[return-value]


def _scratch(service: ServiceConfig, paths: list[str]) -> list[MountArgs]:
    """tmpfs mounts for the paths a read-only container must write to, unless the service mounts them itself."""
    taken = {mount.target for mount in [*service.volumes, *service.tmpfs]}
    return [{"type": "tmpfs", "target": path} for path in paths if path not in taken]


def _healthcheck(service: ServiceConfig, default_test: Optional[list[str]], start_period: str) -> Optional[dict[str, Any]]:
    check = service.healthcheck
    test = check.test if check.test is not None else default_test
    if test is None:
        return None
    return {
        "test": list(test),
        "interval": check.interval,
        "timeout": check.timeout,
        "retries": check.retries,
        "start_period": check.start_period if check.start_period != "0s" else start_period,
    }


def _build_gateway(config: StackConfig) -> Image:
    build = config.images.gateway_build
    context = PROJECT_ROOT / build.context
    build_args = dict(build.build_args)
    if build.base_image is not None:
        build_args["BASE_IMAGE"] = build.base_image
    return Image(
        "gateway",
        {
            "repository": f"model-stack/{build.repository}",
            "tag": build.tag,
            "context": str(context),
            **({"dockerfile": str(context / build.dockerfile)} if build.dockerfile else {}),
            "target": build.target,
            "build_args": build_args,
            "labels": dict(build.labels),
            "pull": build.pull,
            "push": False,
        },
    )
