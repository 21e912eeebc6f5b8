"""`pulumi preview` with the real engine, the real kubernetes provider and the policy pack, of prod's composition on
an existing cluster (the control plane stands in for it; EKS itself needs AWS and stays under the mocks).

The pack runs as the engine runs any analyzer plugin given as an executable: the directory form
(`--policy-pack policy`) asks the Python language host to start it, and that host is not buildable here."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest
from pulumi import automation as auto

from harness import ROOT, stack_config

PRIVATE_REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
DIGEST = "@sha256:" + "2" * 64


@pytest.fixture(scope="session")
def policy_pack(tmp_path_factory) -> Path:
    launcher = tmp_path_factory.mktemp("policy") / "model-stack-policy"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "policy" / "__main__.py"}" "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return launcher


def prod_on_existing_cluster(kubeconfig: Path, chat_image: str) -> dict:
    """prod's own settings on the existing-cluster provider, with the images already in the private registry."""
    config = {key: value for key, value in stack_config("prod").items() if key != "images"}
    config["cluster"] = {"provider": "existing", "kubernetesVersion": "1.32",
                         "existing": {"kubeconfigPath": str(kubeconfig)}}
    # A namespace of its own: the lifecycle test leaves its retained model cache in `models`, on purpose.
    config["namespace"] = "prod-models"
    images = {"chat": chat_image, "embed": f"{PRIVATE_REGISTRY}/mirror/ghcr.io/ggml-org/llama.cpp:server-b9935{DIGEST}"}
    config["models"] = {name: {**model, "image": images[name], "cache": {**model["cache"], "storageClass": "standard"}}
                        for name, model in config["models"].items()}
    config["gateway"] = {**config["gateway"], "image": f"{PRIVATE_REGISTRY}/model-stack/model-gateway:0.1.0{DIGEST}"}
    return config


def set_secrets(stack: auto.Stack) -> None:
    stack.set_config("model-stack:hfToken", auto.ConfigValue("hf_engine_lane", secret=True))
    stack.set_config("model-stack:gatewayApiKeys", auto.ConfigValue("engine-lane-key", secret=True))


def test_prod_previews_with_its_mandatory_policies(control_plane, engine_stack, policy_pack):
    stack = engine_stack("prod-existing", prod_on_existing_cluster(
        control_plane.kubeconfig, f"{PRIVATE_REGISTRY}/mirror/vllm/vllm-openai:v0.11.0{DIGEST}"))
    set_secrets(stack)
    preview = stack.preview(policy_packs=[str(policy_pack)],
                            policy_pack_configs=[str(ROOT / "policy" / "config" / "prod.json")])
    assert preview.change_summary.get("create", 0) > 10, preview.change_summary


def test_a_mandatory_policy_stops_the_preview(control_plane, engine_stack, policy_pack):
    # Valid config (pinned by digest), but from a registry prod's policy does not allow.
    stack = engine_stack("prod-upstream", prod_on_existing_cluster(
        control_plane.kubeconfig, f"docker.io/vllm/vllm-openai:v0.11.0{DIGEST}"))
    set_secrets(stack)
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.preview(policy_packs=[str(policy_pack)],
                      policy_pack_configs=[str(ROOT / "policy" / "config" / "prod.json")])
    assert "allowed-image-registries" in str(failure.value) and "docker.io/vllm/vllm-openai" in str(failure.value)
