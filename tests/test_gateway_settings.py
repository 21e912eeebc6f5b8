"""Promise: the gateway's own stack settings reach it on every runtime (Kubernetes Deployment, Knative, Docker),
and bad values are refused by key before anything is created."""

from __future__ import annotations

import pytest

from harness import Evaluation, assert_rejected, evaluate, unwrap
from stacks.config.base import byte_count
from stacks.config.gateway import GatewayConfig

CONTAINER = "docker:index/container:Container"


def gateway_env(evaluation: Evaluation) -> dict[str, str]:
    """The gateway container's environment, whichever runtime and workload form runs it."""
    containers = [resource for resource in evaluation.of_type(CONTAINER) if resource.name == "gateway"]
    if containers:
        return dict(entry.split("=", 1) for entry in unwrap(containers[0].inputs["envs"]))
    for _, obj in evaluation.kubernetes_objects():
        if obj["metadata"].get("name") == "gateway" and obj["kind"] in ("Deployment", "Service") and "template" in obj["spec"]:
            return {item["name"]: item.get("value") for item in obj["spec"]["template"]["spec"]["containers"][0]["env"]}
    raise AssertionError("no gateway workload")


# dev runs the gateway on Knative, prod as a Deployment, local as a Docker container.
@pytest.mark.parametrize("stack", ["dev", "prod", "local"])
def test_the_request_body_limit_is_a_stack_setting_on_every_runtime(stack):
    assert gateway_env(evaluate(stack, set={"gateway.maxRequestBody": "16Mi"}))["GATEWAY_MAX_REQUEST_BYTES"] == str(
        16 * 1024 * 1024)


def test_the_request_body_limit_is_a_mebibyte_unless_set():
    assert GatewayConfig().max_request_body == "1Mi" and byte_count("1Mi") == 1024 * 1024


@pytest.mark.parametrize("value,text", [
    ("100m", "number of bytes"),
    ("1.5", "whole number of bytes"),
    ("lots", "Kubernetes quantity"),
    ("4Gi", "below resources.limits.memory"),
])
def test_a_request_body_limit_that_is_no_size_or_does_not_fit_is_refused(value, text):
    assert_rejected("prod", {"gateway.maxRequestBody": value}, "gateway.maxRequestBody", text)


def test_the_docker_gateways_env_cannot_override_the_limit():
    assert_rejected("local", {"docker.gateway.env.GATEWAY_MAX_REQUEST_BYTES": "1"},
                    "docker.gateway.env.GATEWAY_MAX_REQUEST_BYTES", "gateway.maxRequestBody")
