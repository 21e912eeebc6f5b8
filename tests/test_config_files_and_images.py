"""Promises: files the config points at are read and checked, with the key named (a malformed one is a config
error, not a traceback); browser origins are origins; registry user names are not empty; build paths exist."""

import pytest

from harness import ROOT, assert_rejected, evaluate

EXISTING = {"cluster.provider": "existing", "cluster.kind": None, "images.registry.server": "registry.example.com"}


def existing(kubeconfig, **more):
    return {**EXISTING, "cluster.existing.kubeconfigPath": str(kubeconfig), **more}


@pytest.mark.parametrize("text,key,message", [
    ("clusters: [unclosed", "cluster.existing.kubeconfigPath", "not YAML"),
    ("- a list\n", "cluster.existing.kubeconfigPath", "not a kubeconfig"),
    ("apiVersion: v1\nkind: Config\ncontexts: [{name: other}]\n", "cluster.existing.context", "it has: other"),
])
def test_a_bad_kubeconfig_file_is_a_config_error(tmp_path, text, key, message):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(text)
    assert_rejected("dev", existing(kubeconfig, **{"cluster.existing.context": "mine"}), key, message,
                    secrets={})


def test_a_missing_kubeconfig_file_is_a_config_error(tmp_path):
    assert_rejected("dev", existing(tmp_path / "absent"), "cluster.existing.kubeconfigPath", "cannot be read", secrets={})


def test_a_kubeconfig_with_the_chosen_context_is_accepted(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncontexts: [{name: mine}]\nclusters: []\nusers: []\n")
    evaluate("dev", set=existing(kubeconfig, **{"cluster.existing.context": "mine"}), secrets={})


def test_a_malformed_env_file_is_a_config_error(tmp_path):
    env_file = tmp_path / "runner.env"
    env_file.write_text("LOG_LEVEL=debug\nthis is not a setting\n")
    assert_rejected("local", {"docker.runner.envFiles": [str(env_file)]}, "docker.runner.envFiles[0]", "line 2")


REFUSED = [
    ({"gateway.corsAllowOrigins": ["https://chat.example.com/"]}, "gateway.corsAllowOrigins[0]", "browser origin"),
    ({"gateway.corsAllowOrigins": ["chat.example.com"]}, "gateway.corsAllowOrigins[0]", "browser origin"),
    ({"gateway.corsAllowOrigins": ["https://chat.example.com/app"]}, "gateway.corsAllowOrigins[0]", "no path"),
    ({"images.registry.server": "ghcr.io/acme", "images.registry.pushUsername": ""}, "images.registry.pushUsername", "not empty"),
    ({"images.gatewayBuild.context": "no-such-dir"}, "images.gatewayBuild.context", "no such directory"),
    ({"images.gatewayBuild.dockerfile": "Dockerfile.missing"}, "images.gatewayBuild.dockerfile", "no such file"),
]


@pytest.mark.parametrize("overrides,key,text", REFUSED, ids=[c[1] + "=" + str(list(c[0].values())[-1]) for c in REFUSED])
def test_bad_origins_usernames_and_build_paths_are_refused(overrides, key, text):
    assert_rejected("dev", overrides, key, text)


@pytest.mark.parametrize("overrides", [
    {"gateway.corsAllowOrigins": ["https://chat.example.com", "http://localhost:3000", "http://[::1]:8080", "*"]},
    {"images.gatewayBuild.context": "app", "images.gatewayBuild.dockerfile": "Dockerfile"},
])
def test_valid_origins_and_build_paths_are_accepted(overrides):
    evaluate("dev", set=overrides)
