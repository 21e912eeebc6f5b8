"""The single-host Docker runtime (`Pulumi.local.yaml`): Compose-style settings land on pulumi-docker's inputs,
names and networks line up, secrets stay secret, and bad values fail by key before anything is created."""

from __future__ import annotations

from typing import Any

import pytest

from components.container_service import go_duration
from components.engines import ENGINES
from harness import (
    FAKE_SECRETS, MOCK_OUTPUTS, ROOT, Evaluation, Resource, Secret, assert_rejected, evaluate, evaluate_failure, unwrap,
)
CONTAINER = "docker:index/container:Container"


@pytest.fixture(scope="module")
def local() -> Evaluation:
    return evaluate("local")


def container(evaluation: Evaluation, name: str) -> Resource:
    return evaluation.one(CONTAINER, name)


def envs(resource: Resource) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in unwrap(resource.inputs["envs"]))


def test_the_local_stack_runs_on_docker_only(local):
    assert not [r for r in local.resources if r.type.startswith(("kubernetes:", "command:"))]
    assert {r.name for r in local.of_type(CONTAINER)} == {"cache-owner", "model-pull", "model-runner", "gateway"}


def test_the_gateway_reaches_the_runner_by_name_on_the_private_network(local):
    network = local.one("docker:index/network:Network").inputs["name"]
    runner, gateway = container(local, "model-runner"), container(local, "gateway")
    assert runner.inputs["networksAdvanced"] == [{"name": network, "aliases": ["model-runner"]}]
    assert gateway.inputs["networksAdvanced"] == [{"name": network, "aliases": ["gateway"]}]
    assert envs(gateway)["GATEWAY_UPSTREAM_BASE_URL"] == "http://model-runner:8080/v1"
    assert "ports" not in runner.inputs or runner.inputs["ports"] == []
    assert gateway.inputs["ports"] == [{"internal": 8080, "external": 8080, "ip": "127.0.0.1", "protocol": "tcp"}]
    assert local.outputs["gatewayUrl"] == "http://127.0.0.1:8080/v1"


def test_the_model_cache_is_a_kept_named_volume_filled_before_the_engine_starts(local):
    volume = local.one("docker:index/volume:Volume")
    # Kept, without `protect` (which makes `pulumi destroy` refuse to run at all).
    assert volume.retain_on_delete and not volume.protect
    cache = {"type": "volume", "source": volume.inputs["name"], "target": "/models"}
    runner, pull, owner = (container(local, name) for name in ("model-runner", "model-pull", "cache-owner"))
    for job in (runner, pull, owner):
        assert cache in job.inputs["mounts"]
    assert pull.inputs["mustRun"] is False and pull.inputs["attach"] is True
    assert {pull.urn, owner.urn} <= set(runner.dependencies)
    # Docker reports capabilities back with the CAP_ prefix: anything else is a replacement on every `up`.
    assert owner.inputs["capabilities"] == {"drops": ["ALL"], "adds": ["CAP_CHOWN"]} and owner.inputs["user"] == "0:0"


def test_pulled_images_run_by_the_digest_that_was_pulled_and_stay_on_the_host(local):
    pulled = {r.name: r.inputs for r in local.of_type("docker:index/remoteImage:RemoteImage")}
    assert pulled["model-runner"] == {"name": ENGINES["llama.cpp"].image, "keepLocally": True}
    image = container(local, "model-runner").inputs["image"]
    assert image.startswith("ghcr.io/ggml-org/llama.cpp@sha256:")


def test_containers_are_hardened(local):
    for resource in local.of_type(CONTAINER):
        assert resource.inputs["privileged"] is False
        assert resource.inputs["readOnly"] is True
        assert resource.inputs["capabilities"]["drops"] == ["ALL"]
        assert resource.inputs["securityOpts"] == ["no-new-privileges:true"]
    assert container(local, "model-runner").inputs["user"] == "10001:10001"


def test_compose_settings_land_on_the_container(local):
    runner, gateway = container(local, "model-runner"), container(local, "gateway")
    assert (runner.inputs["memory"], runner.inputs["memorySwap"], runner.inputs["cpus"]) == (2048, 2048, "2.0")
    assert (runner.inputs["restart"], runner.inputs["logDriver"]) == ("unless-stopped", "json-file")
    assert runner.inputs["logOpts"] == {"max-size": "10m", "max-file": "3"}
    assert runner.inputs["healthcheck"]["tests"] == [
        "CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"
    ]
    # The model-load budget, in the form Docker reports it back (Go's Duration.String), so `up` shows no diff.
    assert runner.inputs["healthcheck"]["startPeriod"] == "2m0s"
    assert gateway.inputs["healthcheck"] == {
        "tests": ["CMD", "/opt/venv/bin/python", "-m", "model_gateway.healthcheck"],
        "interval": "15s", "timeout": "5s", "retries": 3, "startPeriod": "10s",
    }
    assert {"target": "/tmp", "type": "tmpfs", "tmpfsOptions": {"sizeBytes": 64 * 2**20, "mode": 0o1777}} in gateway.inputs["mounts"]
    assert [m["target"] for m in gateway.inputs["mounts"]].count("/tmp") == 1


EVERYTHING = {
    "docker.runner.ports": ["127.0.0.1:12434:8080", "9090/udp", {"target": 9100, "published": 19100, "hostIp": "127.0.0.1"}],
    "docker.runner.volumes": ["./app:/srv/app:ro", "scratch:/scratch"],
    "docker.runner.tmpfs": ["/run:size=16m"],
    "docker.runner.env": {"LLAMA_ARG_THREADS": "4"},
    "docker.runner.memory": "1.5g",
    "docker.runner.memorySwap": "3g",
    "docker.runner.cpuShares": 512,
    "docker.runner.restart": "on-failure:5",
    "docker.runner.healthcheck": {"test": "curl -f http://127.0.0.1:8080/health", "interval": "1m30s", "timeout": "500ms"},
    "docker.runner.logging": {"driver": "local", "options": {"max-size": "20m"}},
    "docker.runner.labels": {"team": "ml"},
    "docker.runner.hostname": "engine",
    "docker.runner.entrypoint": ["/app/llama-server"],
    "docker.runner.command": ["--help"],
    "docker.runner.workingDir": "/app",
    "docker.runner.user": "2000:2000",
    "docker.runner.gpus": "all",
    "runner.image": "ghcr.io/ggml-org/llama.cpp:server-cuda",  # a GPU build: the CPU one cannot use one
}


def test_every_compose_option_maps_onto_pulumi_docker():
    runner = container(evaluate("local", set=EVERYTHING), "model-runner")
    inputs = runner.inputs
    assert inputs["ports"] == [
        {"internal": 8080, "external": 12434, "ip": "127.0.0.1", "protocol": "tcp"},
        {"internal": 9090, "protocol": "udp"},
        {"internal": 9100, "external": 19100, "ip": "127.0.0.1", "protocol": "tcp"},
    ]
    assert {"type": "bind", "source": str(ROOT / "app"), "target": "/srv/app", "readOnly": True} in inputs["mounts"]
    assert {"type": "volume", "source": "scratch", "target": "/scratch", "readOnly": False} in inputs["mounts"]
    assert {"type": "tmpfs", "target": "/run", "tmpfsOptions": {"sizeBytes": 16 * 2**20}} in inputs["mounts"]
    assert envs(runner)["LLAMA_ARG_THREADS"] == "4"
    assert (inputs["memory"], inputs["memorySwap"], inputs["cpuShares"]) == (1536, 3072, 512)
    assert (inputs["restart"], inputs["maxRetryCount"]) == ("on-failure", 5)
    assert inputs["healthcheck"]["tests"] == ["CMD-SHELL", "curl -f http://127.0.0.1:8080/health"]
    assert (inputs["healthcheck"]["interval"], inputs["healthcheck"]["timeout"]) == ("1m30s", "500ms")
    assert (inputs["logDriver"], inputs["logOpts"]) == ("local", {"max-size": "20m"})
    assert {"label": "team", "value": "ml"} in inputs["labels"]
    assert (inputs["hostname"], inputs["entrypoints"], inputs["command"]) == ("engine", ["/app/llama-server"], ["--help"])
    assert (inputs["workingDir"], inputs["user"], inputs["gpus"]) == ("/app", "2000:2000", "all")


def test_env_files_sit_between_the_stack_defaults_and_explicit_values(tmp_path):
    first, second = tmp_path / "first.env", tmp_path / "second.env"
    first.write_text("LOG_LEVEL=info\nMODEL=from-file\nONLY_FIRST=1\n")
    second.write_text("LOG_LEVEL=warning\n")
    runner = container(
        evaluate("local", set={"docker.runner.envFiles": [str(first), str(second)], "docker.runner.env": {"LOG_LEVEL": "debug"}}),
        "model-runner",
    )
    env = envs(runner)
    assert (env["LOG_LEVEL"], env["MODEL"], env["ONLY_FIRST"]) == ("debug", "from-file", "1")


def test_secrets_reach_containers_only_as_secrets(local):
    gateway, runner = container(local, "gateway"), container(local, "model-runner")
    assert isinstance(gateway.inputs["envs"], Secret) and isinstance(runner.inputs["envs"], Secret)
    assert envs(gateway)["GATEWAY_API_KEYS"] == FAKE_SECRETS["gatewayApiKeys"]
    assert envs(runner)["HF_TOKEN"] == FAKE_SECRETS["hfToken"]
    assert "envs" in gateway.additional_secret_outputs


def test_the_docker_model_runner_pulls_from_a_sidecar_sharing_the_engines_network():
    evaluation = evaluate("local", set={"runner.engine": "docker-model-runner", "runner.model": "ai/smollm2:360M-Q4_K_M"})
    pull = container(evaluation, "model-pull")
    assert pull.inputs["networkMode"] == "container:model-runner" and "networksAdvanced" not in pull.inputs
    assert pull.inputs["mustRun"] is True


BAD_DOCKER_CONFIG: list[tuple[dict[str, Any], str, str]] = [
    ({"docker.gateway.ports": ["8080:80:90"]}, "docker.gateway.ports[0]", "[HOST_IP:][HOST_PORT:]CONTAINER_PORT"),
    ({"docker.gateway.ports": ["70000"]}, "docker.gateway.ports[0]", "65535"),
    ({"docker.runner.memory": "2 gigs"}, "docker.runner.memory", "512m, 2g"),
    ({"docker.runner.memory": "2g", "docker.runner.memorySwap": "1g"}, "docker.runner.memorySwap", "at least memory"),
    ({"docker.runner.restart": "sometimes"}, "docker.runner.restart", "unless-stopped"),
    ({"docker.runner.healthcheck": {"interval": "30 seconds"}}, "docker.runner.healthcheck.interval", "1m30s"),
    ({"docker.runner.tmpfs": ["/tmp:size=64m,uid=0"]}, "docker.runner.tmpfs[0]", "size=<size>,mode=<octal>"),
    ({"docker.runner.volumes": ["a:b:c:d"]}, "docker.runner.volumes[0]", "SOURCE:TARGET"),
    ({"docker.runner.envFiles": ["missing.env"]}, "docker.runner.envFiles[0]", "no such file"),
]


@pytest.mark.parametrize("overrides,key,text", BAD_DOCKER_CONFIG, ids=[case[1] for case in BAD_DOCKER_CONFIG])
def test_bad_docker_config_is_rejected_by_key_before_anything_exists(overrides, key, text):
    assert_rejected("local", overrides, key, text)


@pytest.mark.parametrize("text,docker_form", [
    ("120s", "2m0s"), ("90s", "1m30s"), ("1h", "1h0m0s"), ("1.5s", "1.5s"), ("500ms", "500ms"), ("0s", "0s"),
    ("61.5s", "1m1.5s"), ("1500us", "1.5ms"), ("2h3m4s", "2h3m4s"), ("0", "0s"), ("1500μs", "1.5ms"), ("+1m", "1m0s"),
    ("1m30.5s", "1m30.5s"), (".5h", "30m0s"), ("1.s", "1s"),
])
def test_durations_are_emitted_as_docker_reports_them_back(text, docker_form):
    assert go_duration(text) == docker_form


def test_a_failed_one_shot_job_fails_the_update_with_its_output(monkeypatch):
    def failing_jobs(args):
        failed = args.inputs.get("attach") is True
        return {"exitCode": 1 if failed else 0, "containerLogs": "chown: /models: Operation not permitted\n" * failed}

    monkeypatch.setitem(MOCK_OUTPUTS, CONTAINER, failing_jobs)
    error, _ = evaluate_failure("local")
    assert "exited with 1" in str(error) and "chown: /models: Operation not permitted" in str(error)
    assert "pulumi up --replace" in str(error)
