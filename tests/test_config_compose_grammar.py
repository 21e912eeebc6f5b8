"""Promise: the Docker runtime's settings follow Compose's grammar (Docker's port, mount-mode, restart, health-check,
size and Go duration parsing): what Compose would refuse is a config error naming its key, before anything is
created, and every valid form, unusual ones included, is accepted and reaches pulumi-docker."""

from typing import Any

import pytest

from harness import ROOT, assert_rejected, evaluate, evaluate_failure, unwrap

CONTAINER = "docker:index/container:Container"
# The gateway publishes 127.0.0.1:8080 by default; port cases move it out of the way.
NO_GATEWAY_PORTS = {"docker.gateway.ports": []}

REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"docker.runner.ports": ["8080/http"]}, "docker.runner.ports[0]", "protocol 'http' is none of tcp, udp, sctp"),
    ({"docker.runner.ports": ["256.0.0.1:8080:80"]}, "docker.runner.ports[0]", "host address '256.0.0.1'"),
    ({"docker.runner.ports": ["::1:8080:80"]}, "docker.runner.ports[0]", "IPv6 host address goes in brackets"),
    ({"docker.runner.ports": ["[fe80::1%eth0]:8080:80"]}, "docker.runner.ports[0]", "IPv6 address"),
    ({"docker.runner.ports": ["[::g]:8080:80"]}, "docker.runner.ports[0]", "host address '::g'"),
    ({"docker.runner.ports": ["8000-8010:8000-8005"]}, "docker.runner.ports[0]", "same length"),
    ({"docker.runner.ports": ["8010-8000:80"]}, "docker.runner.ports[0]", "the first not above the last"),
    ({"docker.runner.ports": ["0:80"]}, "docker.runner.ports[0]", "host port '0'"),
    ({"docker.runner.ports": [{"target": "80-81", "published": 8080}]}, "docker.runner.ports[0]", "same length"),
    ({"docker.runner.ports": [{"target": 80, "hostIp": "localhost"}]}, "docker.runner.ports[0].hostIp", "IPv4 address"),
    ({"docker.runner.ports": ["127.0.0.1:8080:8080"]}, "docker.gateway.ports[0]",
     "which docker.runner.ports[0] publishes already"),
    ({"docker.runner.ports": ["8080:9000"]}, "docker.gateway.ports[0]", "publishes 127.0.0.1:8080/tcp"),
    ({"docker.runner.ports": ["[::]:8080:9000"]}, "docker.gateway.ports[0]", "[::]:8080/tcp"),
    ({"docker.runner.ports": ["8075-8085:9075-9085"]}, "docker.gateway.ports[0]", "127.0.0.1:8080/tcp"),
    ({**NO_GATEWAY_PORTS, "docker.runner.ports": ["9000:80", "0.0.0.0:9000:81"]}, "docker.runner.ports[1]",
     "docker.runner.ports[0]"),
    ({"docker.runner.volumes": ["data:/data:ro,rw"]}, "docker.runner.volumes[0]", "access mode twice (ro,rw)"),
    ({"docker.runner.volumes": ["data:/data:ro,ro"]}, "docker.runner.volumes[0]", "access mode twice"),
    ({"docker.runner.volumes": ["./app:/app:z,Z"]}, "docker.runner.volumes[0]", "SELinux label mode twice"),
    ({"docker.runner.volumes": ["./app:/app:shared,rslave"]}, "docker.runner.volumes[0]", "bind propagation mode twice"),
    ({"docker.runner.volumes": ["./app:/app:ro,"]}, "docker.runner.volumes[0]", "unknown mode ''"),
    ({"docker.runner.volumes": ["./app:/app:readonly"]}, "docker.runner.volumes[0]", "unknown mode 'readonly'"),
    ({"docker.runner.volumes": ["./app::/app"]}, "docker.runner.volumes[0]", "empty part between colons"),
    ({"docker.runner.volumes": ["data:/data:rshared"]}, "docker.runner.volumes[0]", "applies to bind mounts"),
    ({"docker.runner.volumes": ["./app:/app:nocopy"]}, "docker.runner.volumes[0]", "nocopy applies to named volumes"),
    ({"docker.runner.volumes": ["./no-such-dir:/data"]}, "docker.runner.volumes[0]", "does not exist on this machine"),
    ({"docker.runner.volumes": [{"type": "bind", "source": "/no/such/path", "target": "/data"}]},
     "docker.runner.volumes[0]", "does not exist"),
    ({"docker.runner.volumes": ["d:/data"]}, "docker.runner.volumes[0]", "must name a Docker volume"),
    ({"docker.runner.volumes": ["data:relative"]}, "docker.runner.volumes[0]", "absolute path"),
    ({"docker.runner.volumes": ["scratch"]}, "docker.runner.volumes[0]", "absolute path"),
    ({"docker.runner.volumes": ["more-models:/models"]}, "docker.runner.volumes[0]", "model cache volume"),
    ({"docker.runner.tmpfs": ["/models/"]}, "docker.runner.tmpfs[0]", "model cache volume"),
    ({"docker.runner.volumes": ["data:/data"], "docker.runner.tmpfs": ["/data"]}, "docker.runner.tmpfs[0]",
     "which docker.runner.volumes[0] mounts already"),
    ({"docker.runner.restart": "always:3"}, "docker.runner.restart", "only goes with on-failure"),
    ({"docker.runner.restart": "on-failure:-1"}, "docker.runner.restart", "on-failure:<max retries>"),
    ({"docker.runner.restart": "on-failure:"}, "docker.runner.restart", "on-failure:<max retries>"),
    ({"docker.runner.healthcheck.test": ["CMD"]}, "docker.runner.healthcheck.test", "CMD takes at least one more item"),
    ({"docker.runner.healthcheck.test": ["CMD-SHELL", "a", "b"]}, "docker.runner.healthcheck.test",
     "CMD-SHELL takes exactly one more item"),
    ({"docker.runner.healthcheck.test": ["NONE", "x"]}, "docker.runner.healthcheck.test", "NONE takes no more items"),
    ({"docker.runner.healthcheck.test": ["curl", "-f", "x"]}, "docker.runner.healthcheck.test", "must start with CMD"),
    ({"docker.runner.healthcheck.test": []}, "docker.runner.healthcheck.test", "must start with CMD"),
    ({"docker.runner.healthcheck.test": " "}, "docker.runner.healthcheck.test", "must not be empty"),
    ({"docker.runner.healthcheck.interval": "1.5"}, "docker.runner.healthcheck.interval", "Go's grammar"),
    ({"docker.runner.healthcheck.interval": "1m30"}, "docker.runner.healthcheck.interval", "Go's grammar"),
    ({"docker.runner.healthcheck.interval": "-5s"}, "docker.runner.healthcheck.interval", "at least 1ms"),
    ({"docker.runner.healthcheck.timeout": "500us"}, "docker.runner.healthcheck.timeout", "at least 1ms"),
    ({"docker.runner.memory": "4m"}, "docker.runner.memory", "at least 6m"),
    ({"docker.runner.memory": "2  g"}, "docker.runner.memory", "a size such as 512m"),
    ({"docker.runner.memory": "2x"}, "docker.runner.memory", "a size such as 512m"),
    ({"docker.runner.memory": -5}, "docker.runner.memory", "a size such as 512m"),
    ({"docker.runner.memorySwap": -2}, "docker.runner.memorySwap", "a size such as 512m"),
    ({"docker.runner.memory": None, "docker.runner.memorySwap": "1g"}, "docker.runner.memorySwap", "needs memory set"),
    ({"docker.runner.memory": "2g", "docker.runner.memorySwap": "1g"}, "docker.runner.memorySwap", "or -1"),
    ({"docker.runner.gpus": "2"}, "docker.runner.gpus", "device=<id>"),
    ({"docker.gateway.gpus": "all"}, "docker.gateway.gpus", "the gateway uses no GPU"),
    ({"docker.cacheVolume": "m"}, "docker.cacheVolume", "at least two"),
]


@pytest.mark.parametrize("overrides,key,text", REFUSED, ids=[f"{c[1]}={list(c[0].values())[-1]}"[:70] for c in REFUSED])
def test_what_compose_refuses_is_a_config_error(overrides, key, text):
    assert_rejected("local", overrides, key, text)


GPU_BUILD = {"runner.image": "ghcr.io/ggml-org/llama.cpp:server-cuda"}

ACCEPTED: list[dict[str, Any]] = [
    {"docker.runner.ports": [8081, "9090/udp", "9091/sctp", "127.0.0.1::9092", ":9093", "[::1]:9094:9094",
                             "[::ffff:127.0.0.1]:9095:9095", "9100-9102:9100-9102/udp", "09096:9096"]},
    {"docker.runner.ports": [{"target": "9100-9101", "published": "19100-19101", "protocol": "sctp", "hostIp": "::1"}]},
    # The same port on other addresses or another protocol is no clash.
    {"docker.runner.ports": ["127.0.0.2:8080:8080", "[::1]:8080:8080", "8080:8080/udp"]},
    {"docker.runner.volumes": ["data:/data:ro,z,nocopy", "./app:/srv:rw,Z,rslave,cached", "/tmp:/host-tmp:shared",
                               "~:/home-dir:ro", "/anonymous"]},
    {"docker.runner.volumes": [{"type": "bind", "source": "app", "target": "/srv", "propagation": "rprivate"}]},
    {"docker.runner.volumes": ["cache:/models/extra"]},
    {"docker.runner.restart": "no"}, {"docker.runner.restart": "always"}, {"docker.runner.restart": "on-failure"},
    {"docker.runner.restart": "on-failure:0"},
    {"docker.runner.healthcheck.test": ["NONE"]},
    {"docker.runner.healthcheck.test": ["CMD", "true"]},
    {"docker.runner.healthcheck.test": ["CMD-SHELL", "curl -f http://127.0.0.1:8080/health || exit 1"]},
    {"docker.runner.healthcheck": {"interval": "1m30.5s", "timeout": ".5s", "startPeriod": "0"}},
    {"docker.runner.healthcheck": {"interval": "1h0.5m", "timeout": "1500μs", "startPeriod": "+2m"}},
    {"docker.runner.memory": "6m", "docker.runner.memorySwap": -1},
    {"docker.runner.memory": "1.5GiB", "docker.runner.memorySwap": "-1"},
    {"docker.runner.memory": "2 g", "docker.runner.memorySwap": "4 GiB"},
    {"docker.runner.memory": "512 MB", "docker.runner.memorySwap": "1t"},
    {"docker.runner.memory": 1073741824, "docker.runner.memorySwap": "1gib"},
    {"docker.runner.env": {"THREADS": 8, "RATIO": 0.5, "VERBOSE": True, "QUIET": False}},
    {**GPU_BUILD, "docker.runner.gpus": "device=0,1"},
    {**GPU_BUILD, "docker.runner.gpus": "device=GPU-3a23c669-1f69-c64e-cf85-44e9b07e7a2a"},
]


@pytest.mark.parametrize("overrides", ACCEPTED, ids=[f"{next(iter(c))}={list(c.values())[-1]}"[:70] for c in ACCEPTED])
def test_what_compose_accepts_is_accepted(overrides):
    evaluate("local", set=overrides)


def runner_inputs(overrides: dict[str, Any]) -> dict[str, Any]:
    return evaluate("local", set=overrides).one(CONTAINER, "model-runner").inputs


def test_port_ranges_ipv6_and_sctp_are_published_port_by_port():
    inputs = runner_inputs({"docker.runner.ports": ["[::1]:9100-9101:8100-8101/sctp", "127.0.0.1::9000", "9200-9201"]})
    assert inputs["ports"] == [
        {"internal": 8100, "external": 9100, "ip": "::1", "protocol": "sctp"},
        {"internal": 8101, "external": 9101, "ip": "::1", "protocol": "sctp"},
        {"internal": 9000, "ip": "127.0.0.1", "protocol": "tcp"},
        {"internal": 9200, "protocol": "tcp"},
        {"internal": 9201, "protocol": "tcp"},
    ]


def test_the_gateway_url_names_an_ipv6_address_in_brackets():
    evaluation = evaluate("local", set={"docker.gateway.ports": ["[::1]:18080:8080"]})
    assert evaluation.outputs["gatewayUrl"] == "http://[::1]:18080/v1"


def test_mount_modes_reach_the_mounts():
    mounts = runner_inputs({"docker.runner.volumes": ["./app:/srv:ro,rslave", "data:/data:nocopy"]})["mounts"]
    assert {"type": "bind", "source": str(ROOT / "app"), "target": "/srv", "readOnly": True,
            "bindOptions": {"propagation": "rslave"}} in mounts
    assert {"type": "volume", "source": "data", "target": "/data", "readOnly": False,
            "volumeOptions": {"noCopy": True}} in mounts


def test_selinux_relabelling_is_accepted_with_a_warning_that_it_is_not_applied():
    evaluation = evaluate("local", set={"docker.runner.volumes": ["./app:/srv:Z"]})
    assert any("SELinux relabelling (Z)" in warning for warning in evaluation.warnings)


def test_health_checks_and_durations_reach_docker_in_its_own_forms():
    health = runner_inputs({"docker.runner.healthcheck": {
        "test": "curl -f localhost", "interval": "1m30.5s", "timeout": "1500μs", "startPeriod": "0"}})["healthcheck"]
    assert health["tests"] == ["CMD-SHELL", "curl -f localhost"]
    assert (health["interval"], health["timeout"]) == ("1m30.5s", "1.5ms")
    assert runner_inputs({"docker.runner.healthcheck.test": ["NONE"]})["healthcheck"]["tests"] == ["NONE"]


def test_unlimited_swap_and_binary_sizes_reach_docker():
    inputs = runner_inputs({"docker.runner.memory": "1.5GiB", "docker.runner.memorySwap": -1})
    assert (inputs["memory"], inputs["memorySwap"]) == (1536, -1)


def test_numbers_and_booleans_as_env_values_reach_the_container_as_text():
    envs = unwrap(runner_inputs({"docker.runner.env": {"THREADS": 8, "RATIO": 0.5, "VERBOSE": True}})["envs"])
    assert {"THREADS=8", "RATIO=0.5", "VERBOSE=true"} <= set(envs)


def test_every_problem_of_the_docker_section_is_reported_at_once():
    error, evaluation = evaluate_failure("local", set={
        "docker.runner.ports": ["8080:8080"],
        "docker.runner.volumes": ["./missing:/data", "more:/models", "x:/x"],
        "docker.runner.tmpfs": ["/data"],
        "docker.runner.restart": "always:2",
        "docker.runner.healthcheck": {"test": ["CMD"], "interval": "2"},
        "docker.runner.memory": "5m",
        "docker.runner.memorySwap": "1m",
        "docker.runner.gpus": "some",
        "docker.gateway.gpus": "all",
    })
    assert sorted(problem.key for problem in error.problems) == sorted([
        "docker.gateway.ports[0]",
        "docker.runner.volumes[0]", "docker.runner.volumes[1]", "docker.runner.volumes[2]", "docker.runner.tmpfs[0]",
        "docker.runner.restart", "docker.runner.healthcheck.test", "docker.runner.healthcheck.interval",
        "docker.runner.memory", "docker.runner.memorySwap", "docker.runner.gpus", "docker.gateway.gpus",
    ])
    assert evaluation.resources == []
