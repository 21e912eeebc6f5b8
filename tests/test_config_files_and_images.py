"""Promises: files the config points at are read and checked, with the key named (a malformed one is a config
error, not a traceback); browser origins are origins; registry user names are not empty; build paths exist."""

import pytest

from harness import ROOT, assert_rejected, evaluate, evaluate_failure
from schemas import KNATIVE_MANIFESTS

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
    env_file = tmp_path / "models.chat.env"
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


# --- Knative's release manifests and the registry CA ----------------------------------------------------------

RELEASE_FILES = ("serving-crds.yaml", "serving-core.yaml", "kourier.yaml")


def release_copy(directory, **replaced):
    """The pinned release's manifests in `directory`, with some files' text replaced (None: left out)."""
    for file in RELEASE_FILES:
        text = replaced.get(file.replace("-", "_").removesuffix(".yaml"), (KNATIVE_MANIFESTS / file).read_text())
        if text is not None:
            (directory / file).write_text(text)
    return directory


@pytest.mark.parametrize("replaced,text", [
    ({"kourier": "kind: Service\nmetadata: {name: [unclosed\n"}, "kourier.yaml is not YAML at line 3"),
    ({"serving_core": "- just\n- a list\n"}, "serving-core.yaml document 1 is not a Kubernetes object"),
    ({"serving_crds": "apiVersion: v1\nkind: Namespace\n---\nplain text\n"}, "serving-crds.yaml document 2 is not"),
    ({"serving_crds": "# nothing\n"}, "serving-crds.yaml holds no Kubernetes objects"),
    ({"kourier": None}, "kourier.yaml cannot be read"),
], ids=["yaml", "not-objects", "second-document", "empty", "missing"])
def test_a_broken_release_manifest_is_a_config_error_naming_the_file(tmp_path, replaced, text):
    assert_rejected("dev", {"knative.manifestsDir": str(release_copy(tmp_path, **replaced))}, "knative.manifestsDir", text)


def test_a_manifests_dir_that_is_no_directory_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("")
    assert_rejected("dev", {"knative.manifestsDir": str(tmp_path / "file")}, "knative.manifestsDir", "is not a directory")


def test_release_manifests_that_cannot_be_downloaded_name_each_file_and_the_setting_that_avoids_downloads(monkeypatch):
    import urllib.error

    from components import knative_serving

    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(knative_serving.urllib.request, "urlopen", offline)
    knative_serving._load.cache_clear()  # a release an earlier call downloaded would be served from the cache
    with pytest.raises(knative_serving.ManifestError) as raised:
        knative_serving.load_manifests("1.15.2", "1.15.1")
    *failures, hint = raised.value.reasons
    assert [failure.split(" ", 1)[0] for failure in failures] == ["serving-crds.yaml", "serving-core.yaml", "kourier.yaml"]
    assert all("cannot be downloaded from https://github.com/" in failure for failure in failures), failures
    assert str(raised.value).count("knative.manifestsDir") == 1 and "knative.manifestsDir" in hint


def test_every_broken_release_file_is_reported_with_the_other_problems(tmp_path):
    directory = release_copy(tmp_path, kourier="a: [", serving_core="- 1\n", serving_crds=None)
    error, evaluation = evaluate_failure("dev", set={"knative.manifestsDir": str(directory), "namespace": "Models"})
    assert sorted(str(problem).partition(".yaml")[0] for problem in error.problems) == sorted([
        "knative.manifestsDir: kourier", "knative.manifestsDir: serving-core", "knative.manifestsDir: serving-crds",
        str(next(p for p in error.problems if p.key == "namespace")).partition(".yaml")[0],
    ])
    assert evaluation.resources == []


CERTIFICATE = (ROOT / "tests" / "fixtures" / "registry-ca.pem").read_text()
BODY = CERTIFICATE.splitlines()[1]


@pytest.mark.parametrize("bundle,text", [
    ("not a certificate", "holds no -----BEGIN CERTIFICATE-----"),
    (CERTIFICATE.replace(BODY, BODY[:-1] + "!"), "holds no -----BEGIN CERTIFICATE-----"),
    (CERTIFICATE.replace(BODY, BODY[1:]), "certificate 1 is not base64 of a DER certificate"),
    (CERTIFICATE + "issued by our CA\n", "besides certificate blocks"),
    (CERTIFICATE + CERTIFICATE.replace(BODY, "QUJD" * 16), "certificate 2 is not base64 of a DER certificate"),
], ids=["text", "bad-character", "bad-base64", "text-outside", "second-bad"])
def test_a_registry_ca_bundle_must_be_pem_certificates(bundle, text):
    assert_rejected("dev", {"knative.registryCaBundle": bundle}, "knative.registryCaBundle", text)


def test_a_bundle_of_several_certificates_is_accepted():
    evaluate("dev", set={"knative.registryCaBundle": CERTIFICATE + "\n" + CERTIFICATE})


# --- the kubeconfig secret --------------------------------------------------------------------------------------

FROM_SECRET = {**EXISTING, "cluster.existing.context": "mine"}


@pytest.mark.parametrize("kubeconfig,key,text", [
    ("clusters: [unclosed\nusers: []\n", "kubeconfig", "is not YAML (line 2"),
    ("kind: Secret\n", "kubeconfig", "is not a kubeconfig"),
    ("apiVersion: v1\nkind: Config\ncontexts: [{name: other}]\n", "cluster.existing.context",
     "is not a context of the kubeconfig secret (it has: other)"),
], ids=["yaml", "not-a-kubeconfig", "context"])
def test_a_bad_kubeconfig_secret_is_a_config_error_that_never_shows_it(kubeconfig, key, text):
    error, evaluation = evaluate_failure("dev", set=FROM_SECRET, secrets={"kubeconfig": kubeconfig + "token: s3cr3t\n"})
    assert [str(problem) for problem in error.problems if problem.key == key and text in str(problem)]
    assert len(error.problems) == 1 and "s3cr3t" not in str(error)
    assert evaluation.resources == []


def test_a_kubeconfig_secret_with_the_chosen_context_is_accepted():
    evaluate("dev", set=FROM_SECRET,
             secrets={"kubeconfig": "apiVersion: v1\nkind: Config\ncontexts: [{name: mine}]\nclusters: []\nusers: []\n"})
