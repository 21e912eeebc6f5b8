"""The `docker` resource plugin on the real engine: the project's ContainerService, a network and a volume created on
the real Docker engine, read back with `docker inspect`, previewed again without changes, and destroyed.

The plugin is not pulumi-docker's own build (the Go module proxy does not serve it) but the upstream Terraform
provider bridged by .ci/docker-provider (see BRIDGED_PROVIDERS in .ci/toolchain.py for what differs). Needs what
.ci/docker-setup provides (Docker engine and base image).
"""

from __future__ import annotations

import json
import socket
import uuid

import pulumi
import pulumi_docker as docker
import pytest
from pulumi import automation as auto

from components.container_service import ContainerService
from docker_engine import BASE_IMAGE, docker as docker_cli, require_docker_setup

pytestmark = pytest.mark.docker


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_container_service_lifecycle_on_the_real_provider(engine_stack):
    require_docker_setup()
    suffix = uuid.uuid4().hex[:8]
    port = free_port()

    def program() -> None:
        network = docker.Network("network", name=f"engine-net-{suffix}", driver="bridge")
        volume = docker.Volume("cache", name=f"engine-cache-{suffix}")
        service = ContainerService("sleeper", {
            "image": BASE_IMAGE,
            "container_name": f"engine-sleeper-{suffix}",
            "network": network.name,
            "aliases": ["sleeper"],
            "entrypoint": ["sleep"],
            "command": ["600"],
            "user": "65534:65534",
            "env": {"A": "1", "B": "two"},
            "ports": [{"target": 8080, "published": port, "host_ip": "127.0.0.1"}],
            "mounts": [
                {"type": "volume", "target": "/cache", "source": f"engine-cache-{suffix}"},
                {"type": "tmpfs", "target": "/tmp", "tmpfs_size_bytes": 2**20, "tmpfs_mode": 0o1777},
            ],
            "memory_bytes": 256 * 2**20,
            "memory_swap_bytes": 512 * 2**20,
            "healthcheck": {"test": ["CMD", "true"], "interval": "5s", "timeout": "2s", "retries": 3,
                            "start_period": "1s"},
            "capabilities_add": ["NET_BIND_SERVICE"],
            "log_driver": "json-file",
            "log_options": {"max-size": "1m"},
            "labels": {"model-stack.test": suffix},
        }, opts=pulumi.ResourceOptions(depends_on=[volume]))
        pulumi.export("container", service.container_name)

    stack = engine_stack(f"docker-{suffix}", {}, program=program)
    try:
        up = stack.up()
        assert up.summary.resource_changes.get("create") == 5, up.summary.resource_changes
        inspected = json.loads(docker_cli("inspect", up.outputs["container"].value).stdout)[0]
        config, host = inspected["Config"], inspected["HostConfig"]
        assert inspected["State"]["Running"]
        assert config["Entrypoint"] == ["sleep"] and config["Cmd"] == ["600"]
        assert config["User"] == "65534:65534"
        assert {"A=1", "B=two"} <= set(config["Env"])
        assert config["Labels"]["model-stack.test"] == suffix
        assert config["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 5 * 10**9, "Timeout": 2 * 10**9,
                                         "StartPeriod": 10**9, "Retries": 3}
        assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["CAP_NET_BIND_SERVICE"]
        assert host["SecurityOpt"] == ["no-new-privileges:true"] and not host["Privileged"]
        assert host["ReadonlyRootfs"]
        assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
        assert host["Memory"] == 256 * 2**20 and host["MemorySwap"] == 512 * 2**20
        assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
        assert host["RestartPolicy"]["Name"] == "unless-stopped"
        mounts = {mount["Target"]: mount for mount in host["Mounts"]}
        assert mounts["/cache"]["Type"] == "volume" and mounts["/cache"]["Source"] == f"engine-cache-{suffix}"
        assert mounts["/tmp"]["TmpfsOptions"] == {"SizeBytes": 2**20, "Mode": 0o1777}
        networks = inspected["NetworkSettings"]["Networks"]
        assert list(networks) == [f"engine-net-{suffix}"] and "sleeper" in networks[f"engine-net-{suffix}"]["Aliases"]

        # What Docker reports back is what the program asked for: nothing to change on the next `pulumi up`.
        preview = stack.preview()
        assert set(preview.change_summary) == {"same"}, preview.change_summary
    finally:
        destroyed = stack.destroy()
        stack.workspace.remove_stack(stack.name)
    assert destroyed.summary.resource_changes.get("delete") == 5
    assert docker_cli("inspect", f"engine-sleeper-{suffix}", check=False).returncode != 0
    assert docker_cli("network", "inspect", f"engine-net-{suffix}", check=False).returncode != 0
    # The stack retains nothing: the volume goes with it.
    assert docker_cli("volume", "inspect", f"engine-cache-{suffix}", check=False).returncode != 0


def test_a_failed_one_shot_job_fails_the_update_with_its_output(engine_stack):
    """`run_to_completion`: the provider attaches, waits for the exit and keeps the logs, and the component fails the
    update with the exit code and the last lines the job printed."""
    require_docker_setup()
    suffix = uuid.uuid4().hex[:8]

    def program() -> None:
        ContainerService("job", {
            "image": BASE_IMAGE, "container_name": f"engine-job-{suffix}", "network": "none",
            "entrypoint": ["sh", "-c"], "command": ["echo preparing; echo chown failed >&2; exit 3"],
            "run_to_completion": True,
        })

    stack = engine_stack(f"job-{suffix}", {}, program=program)
    try:
        with pytest.raises(auto.CommandError) as failure:
            stack.up()
        assert f"the one-shot container engine-job-{suffix} exited with 3" in str(failure.value)
        assert "chown failed" in str(failure.value)
    finally:
        stack.destroy()
        stack.workspace.remove_stack(stack.name)
    assert docker_cli("inspect", f"engine-job-{suffix}", check=False).returncode != 0
