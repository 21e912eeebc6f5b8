"""Signatures of the images the stack pushes, and admission of only signed images into the model namespace."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from components.image_attestation import PROVENANCE_SCRIPT, SBOM_SCRIPT
from components.image_signature import SIGN_SCRIPT, cosign_environment
from components.signed_images_policy import (
    CHART_REPOSITORY, CHART_VERSION, CONTROLLER_VERSION, NAMESPACE_LABEL, POLICY_NAME, WEBHOOK_IMAGE,
)
from harness import (
    FAKE_SECRETS, ROOT, Evaluation, Secret, assert_rejected, evaluate, evaluate_failure, stack_config,
)
from schemas import policy_controller_crd_schemas, validation_errors

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
SIGNING_SECRETS = {
    **FAKE_SECRETS,
    "cosignPrivateKey": "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nfake\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
    "cosignPassword": "cosign-password-0000",
}
SIGNING = {"images.signing.enabled": True}
KEYLESS = {**SIGNING, "images.signing.keyless": True}


def public_key_pem() -> str:
    """A fresh P-256 public key in the PEM form `cosign generate-key-pair` writes to cosign.pub."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def signatures(evaluation: Evaluation) -> dict[str, dict]:
    """The inputs of every cosign command, by resource name."""
    return {
        command.name: command.inputs
        for command in evaluation.of_type("command:local:Command")
        if "cosign sign" in command.inputs["create"]
    }


# --- signing ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_nothing_is_signed_unless_signing_is_enabled(stack):
    assert signatures(evaluate(stack)) == {}


def test_the_gateway_build_is_signed_by_digest_with_the_key_in_the_environment_only():
    evaluation = evaluate("dev", set=SIGNING, secrets=SIGNING_SECRETS)
    [(name, inputs)] = signatures(evaluation).items()
    assert name == "gateway-signature"
    environment = inputs["environment"]
    gateway_ref = environment["IMAGE"]
    assert gateway_ref.startswith("localhost:5001/model-gateway:dev@sha256:")
    assert environment["COSIGN_PRIVATE_KEY"] == Secret(SIGNING_SECRETS["cosignPrivateKey"])
    assert environment["COSIGN_PASSWORD"] == Secret(SIGNING_SECRETS["cosignPassword"])
    assert environment["TLOG_UPLOAD"] == "false"
    assert "env://COSIGN_PRIVATE_KEY" in inputs["create"] and '"$IMAGE"' in inputs["create"]
    assert SIGNING_SECRETS["cosignPrivateKey"] not in inputs["create"]
    # Signed again exactly when the digest (or the key) changes; a fresh registry token changes nothing.
    assert inputs["triggers"] == [gateway_ref, Secret(SIGNING_SECRETS["cosignPrivateKey"])]
    assert evaluation.one("command:local:Command", name).ignore_changes == ["environment"]


def test_workloads_wait_for_the_signature():
    evaluation = evaluate("dev", set=SIGNING, secrets=SIGNING_SECRETS)
    # Waiting on a component is waiting on its resources: the cosign command.
    signing = evaluation.one("command:local:Command", "gateway-signature")
    assert signing.urn in evaluation.one("model-stack:index:Gateway").dependencies


def test_every_mirrored_copy_is_signed_with_the_push_login():
    evaluation = evaluate("prod", set={**SIGNING, "images.signing.tlogUpload": True}, secrets=SIGNING_SECRETS)
    signed = {inputs["environment"]["IMAGE"]: inputs["environment"] for inputs in signatures(evaluation).values()}
    mirrors = [mirror.plain()["tag"] for mirror in evaluation.of_type("docker-build:index:Index")]
    assert mirrors, "prod mirrors its upstream images"
    runner_digest = stack_config("prod")["models"]["chat"]["image"].partition("@")[2]
    assert f"{ECR}/mirror/vllm/vllm-openai:v0.11.0@{runner_digest}" in signed
    assert len(signed) == len(mirrors) + 1  # every copy, and the gateway build
    for environment in signed.values():
        assert environment["TLOG_UPLOAD"] == "true"
        assert environment["REGISTRY_ADDRESS"] == ECR
        assert isinstance(environment["REGISTRY_PASSWORD"], Secret)


# --- attestations ----------------------------------------------------------------------------------------------

def attestations(evaluation: Evaluation) -> dict[str, dict]:
    """The inputs of every `cosign attest` command, by resource name."""
    return {
        command.name: command.inputs
        for command in evaluation.of_type("command:local:Command")
        if "cosign attest" in command.inputs["create"]
    }


def committed_source(*paths: str) -> list[dict]:
    """The project's git commit as the provenance names it: only while `paths` have no uncommitted changes."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    if git("status", "--porcelain", "--", *paths):
        return []
    return [{"name": "model-stack", "digest": {"gitCommit": git("rev-parse", "HEAD")}}]


def test_the_gateway_build_gets_an_sbom_and_a_provenance_after_its_signature_by_digest():
    evaluation = evaluate("dev", set=SIGNING, secrets=SIGNING_SECRETS)
    attested = attestations(evaluation)
    assert set(attested) == {"gateway-attestation-sbom", "gateway-attestation-provenance"}
    signed = signatures(evaluation)["gateway-signature"]
    for inputs in attested.values():
        environment = inputs["environment"]
        # The same digest-pinned reference the signature covers, the same key, only in the environment.
        assert environment["IMAGE"] == signed["environment"]["IMAGE"]
        assert environment["IMAGE"].startswith("localhost:5001/model-gateway:dev@sha256:")
        assert environment["COSIGN_PRIVATE_KEY"] == Secret(SIGNING_SECRETS["cosignPrivateKey"])
        assert environment["COSIGN_PASSWORD"] == Secret(SIGNING_SECRETS["cosignPassword"])
        assert environment["TLOG_UPLOAD"] == "false"
        assert "cosign attest ${COSIGN_PRIVATE_KEY:+--key env://COSIGN_PRIVATE_KEY}" in inputs["create"]
        assert '"$IMAGE"' in inputs["create"]
        assert SIGNING_SECRETS["cosignPrivateKey"] not in inputs["create"]
        assert inputs["triggers"] == signed["triggers"]
    assert "--type spdxjson" in attested["gateway-attestation-sbom"]["create"]
    assert 'syft scan "registry:$IMAGE"' in attested["gateway-attestation-sbom"]["create"]
    assert "--type slsaprovenance1" in attested["gateway-attestation-provenance"]["create"]

    sbom = evaluation.one("command:local:Command", "gateway-attestation-sbom")
    provenance = evaluation.one("command:local:Command", "gateway-attestation-provenance")
    signature = evaluation.one("command:local:Command", "gateway-signature")
    assert signature.urn in sbom.dependencies
    # cosign rewrites the image's one attestation manifest: the second waits for the first.
    assert sbom.urn in provenance.dependencies
    assert sbom.ignore_changes == provenance.ignore_changes == ["environment"]
    # Workloads wait for the signature, not for attestations nothing at admission reads.
    gateway = evaluation.one("model-stack:index:Gateway")
    assert signature.urn in gateway.dependencies and provenance.urn not in gateway.dependencies


def test_the_provenance_names_the_build_parameters_and_the_source():
    evaluation = evaluate("prod", set={
        **SIGNING, "images.gatewayBuild.target": "dev", "images.gatewayBuild.buildArgs": {"PIP_INDEX": "mirror"},
    }, secrets=SIGNING_SECRETS)
    predicate = json.loads(attestations(evaluation)["gateway-attestation-provenance"]["environment"]["PREDICATE"])
    base_image = stack_config("prod")["images"]["gatewayBuild"]["baseImage"]
    assert predicate == {
        "buildDefinition": {
            "buildType": "urn:model-stack:gateway-build:v1",
            "externalParameters": {
                "context": "app",
                "dockerfile": "app/Dockerfile",
                "target": "dev",
                "buildArgs": {"PIP_INDEX": "mirror", "BASE_IMAGE": base_image},
                "platforms": ["linux/amd64"],
            },
            "resolvedDependencies": [
                *committed_source("app", "app/Dockerfile"),
                {"name": base_image, "digest": {"sha256": base_image.partition("@sha256:")[2]}},
            ],
        },
        "runDetails": {"builder": {
            "id": "urn:model-stack:pulumi-up",
            "version": {"pulumi": metadata.version("pulumi"), "pulumi-docker-build": metadata.version("pulumi-docker-build")},
        }},
    }
    assert not any(secret in json.dumps(predicate) for secret in SIGNING_SECRETS.values())


def test_mirrored_copies_get_an_sbom_but_no_provenance():
    evaluation = evaluate("prod", set=SIGNING, secrets=SIGNING_SECRETS)
    attested = attestations(evaluation)
    mirrored = {inputs["environment"]["IMAGE"] for name, inputs in attested.items() if name.startswith("mirror-")}
    signed = {inputs["environment"]["IMAGE"] for name, inputs in signatures(evaluation).items() if name.startswith("mirror-")}
    assert mirrored == signed and mirrored
    assert {name.rpartition("-")[2] for name in attested if name.startswith("mirror-")} == {"sbom"}
    for name, inputs in attested.items():
        if name.startswith("mirror-"):
            assert inputs["environment"]["REGISTRY_ADDRESS"] == ECR
            assert isinstance(inputs["environment"]["REGISTRY_PASSWORD"], Secret)
            assert "PREDICATE" not in inputs["environment"]


@pytest.mark.parametrize("off,left", [
    ({"images.signing.attestations.sbom": False, "images.signing.attestations.provenance": False}, set()),
    ({"images.signing.attestations.sbom": False}, {"gateway-attestation-provenance"}),
    ({"images.signing.attestations.provenance": False}, {"gateway-attestation-sbom"}),
])
def test_attestations_turned_off_are_not_made(off, left):
    evaluation = evaluate("dev", set={**SIGNING, **off}, secrets=SIGNING_SECRETS)
    assert set(attestations(evaluation)) == left
    assert set(signatures(evaluation)) == {"gateway-signature"}
    if not left:
        assert evaluation.of_type("model-stack:index:ImageAttestation") == []


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_nothing_is_attested_unless_signing_is_enabled(stack):
    assert attestations(evaluate(stack)) == {}


@pytest.mark.parametrize("kind", ["sbom", "provenance"])
def test_an_attestation_asked_for_without_signing_is_refused(kind):
    assert_rejected("dev", {f"images.signing.attestations.{kind}": True},
                    f"images.signing.attestations.{kind}", "needs images.signing.enabled: true")


@pytest.mark.parametrize("overrides", [
    {"images.signing.attestations.sbom": False, "images.signing.attestations.provenance": False},
    {**SIGNING, "images.signing.attestations.sbom": True, "images.signing.attestations.provenance": True},
])
def test_attestations_switched_off_without_signing_or_on_with_it_are_accepted(overrides):
    evaluate("dev", set=overrides, secrets=SIGNING_SECRETS)


def test_signing_needs_the_private_key():
    assert_rejected("dev", SIGNING, "cosignPrivateKey", "is required: images.signing.enabled is true")


# --- keyless signing -------------------------------------------------------------------------------------------

def test_keyless_signing_and_attesting_carry_no_key_record_in_the_log_and_run_once_per_digest():
    evaluation = evaluate("prod", set=KEYLESS)
    signed, attested = signatures(evaluation), attestations(evaluation)
    assert "gateway-signature" in signed and {"gateway-attestation-sbom", "gateway-attestation-provenance"} <= set(attested)
    assert {inputs["environment"]["IMAGE"] for inputs in attested.values()} == {
        inputs["environment"]["IMAGE"] for inputs in signed.values()}
    for name, inputs in {**signed, **attested}.items():
        environment = inputs["environment"]
        assert "COSIGN_PRIVATE_KEY" not in environment and "COSIGN_PASSWORD" not in environment, name
        assert environment["TLOG_UPLOAD"] == "true", name
        assert "@sha256:" in environment["IMAGE"], name
        # The digest alone: a fresh certificate on every run must not sign again.
        assert inputs["triggers"] == [environment["IMAGE"]], name
        assert not any(isinstance(trigger, Secret) for trigger in inputs["triggers"]), name
        assert environment["REGISTRY_ADDRESS"] == ECR


def fake_tools(directory: Path, cosign_version: str = "v2.6.1") -> Path:
    """`cosign` and `syft` stand-ins that append their arguments, one per line, to `calls` in `directory`; `cosign
    version` answers as a cosign of `cosign_version` does (GitVersion among other lines)."""
    for tool in ("cosign", "syft"):
        script = directory / tool
        version = (f'if [ "$1" = version ]; then printf "cosign: A tool for Container Signing\\n\\n'
                   f'GitVersion:    {cosign_version}\\nGitCommit:     0000\\n"; exit 0; fi\n') if tool == "cosign" else ""
        script.write_text(f'#!/bin/sh\n{version}printf "{tool}" >> "{directory}/calls"\n'
                          f'for argument in "$@"; do printf " %s" "$argument" >> "{directory}/calls"; done\n'
                          f'echo >> "{directory}/calls"\n')
        script.chmod(0o755)
    return directory / "calls"


def run_script(script: str, tools: Path, environment: dict) -> subprocess.CompletedProcess:
    """`script` with the stand-in tools in `tools` first on the PATH, and `environment` (secrets unwrapped)."""
    plain = {key: value.value if isinstance(value, Secret) else value for key, value in environment.items()}
    return subprocess.run(["sh", "-c", script], env={"PATH": f"{tools}:{os.environ['PATH']}", **plain},
                          capture_output=True, text=True)


@pytest.mark.parametrize("keyless", [True, False])
def test_the_stack_scripts_sign_by_digest_with_the_key_only_when_there_is_one(tmp_path, keyless):
    """The commands the sign and attest scripts run, with the environment the dev stack passes them (its local
    registry: no login), cosign and syft replaced by stand-ins that record their arguments."""
    evaluation = evaluate("dev", set=KEYLESS if keyless else SIGNING, secrets=None if keyless else SIGNING_SECRETS)
    calls = fake_tools(tmp_path)
    scripts = {"gateway-signature": SIGN_SCRIPT, "gateway-attestation-sbom": SBOM_SCRIPT,
               "gateway-attestation-provenance": PROVENANCE_SCRIPT}
    commands = {**signatures(evaluation), **attestations(evaluation)}
    assert set(commands) == set(scripts)
    for name, script in scripts.items():
        assert commands[name]["create"] == script
        run = run_script(script, tmp_path, commands[name]["environment"])
        assert run.returncode == 0, run.stderr
    image = commands["gateway-signature"]["environment"]["IMAGE"]
    assert image.startswith("localhost:5001/model-gateway:dev@sha256:")
    key = [] if keyless else ["--key", "env://COSIGN_PRIVATE_KEY"]
    tlog = "--tlog-upload=true" if keyless else "--tlog-upload=false"
    # Each predicate is written to a throwaway directory: only its file name is the same on every run.
    cosign = [[Path(argument).name if argument.startswith("/") else argument for argument in line.split(" ")]
              for line in calls.read_text().splitlines() if line.startswith("cosign")]
    assert cosign == [
        ["cosign", "sign", *key, *LEGACY_FORMAT, tlog, "--yes", image],
        ["cosign", "attest", *key, *LEGACY_FORMAT, "--type", "spdxjson", "--predicate", "sbom.spdx.json", tlog, "--yes",
         image],
        ["cosign", "attest", *key, *LEGACY_FORMAT, "--type", "slsaprovenance1", "--predicate", "provenance.json", tlog,
         "--yes", image],
    ]


# cosign 3 defaults both to true: new-format bundles (policy-controller 0.13 verifies those for keyless authorities
# only) and a signing config from TUF, which picks the transparency log whatever --tlog-upload says.
LEGACY_FORMAT = ["--new-bundle-format=false", "--use-signing-config=false"]
UNSIGNED = {"IMAGE": "localhost:5001/model-gateway@sha256:" + "0" * 64, "TLOG_UPLOAD": "false", "PREDICATE": "{}"}


@pytest.mark.parametrize("version", ["v2.6.1", "v2.10.0", "v3.0.2"])
def test_every_cosign_script_pins_the_signature_format_of_cosign_2_on_cosign_3_too(tmp_path, version):
    calls = fake_tools(tmp_path, cosign_version=version)
    for script in (SIGN_SCRIPT, SBOM_SCRIPT, PROVENANCE_SCRIPT):
        run = run_script(script, tmp_path, UNSIGNED)
        assert run.returncode == 0, run.stderr
    signing = [line.split(" ") for line in calls.read_text().splitlines() if line.startswith("cosign")]
    assert len(signing) == 3 and all(line[2:4] == LEGACY_FORMAT for line in signing), signing


@pytest.mark.parametrize("version", ["v2.5.3", "v1.13.6", "v4.0.0", ""])
def test_every_cosign_script_refuses_a_cosign_without_those_options_before_it_signs(tmp_path, version):
    """cosign has the options from 2.6; what a 4.x would do with them is unknown."""
    calls = fake_tools(tmp_path, cosign_version=version)
    for script in (SIGN_SCRIPT, SBOM_SCRIPT, PROVENANCE_SCRIPT):
        run = run_script(script, tmp_path, UNSIGNED)
        assert run.returncode != 0
        shown = version.removeprefix("v") or "(version unknown)"
        assert f"cosign {shown} is on the PATH; the stack signs with cosign 2.6 or a later 2.x, or 3.x" in run.stderr
    assert not calls.exists()


def test_keyless_signing_without_the_transparency_log_is_refused_by_the_component_too():
    with pytest.raises(ValueError, match="keyless signing needs tlog_upload"):
        cosign_environment({"image": "registry.example/gateway@sha256:" + "0" * 64, "tlog_upload": False})


KEYLESS_IDENTITY = {"issuer": "https://token.actions.githubusercontent.com",
                    "subject": "https://github.com/acme/model-stack/.github/workflows/pulumi.yml@refs/heads/main"}
GITHUB_WORKFLOWS = {"issuer": "https://token.actions.githubusercontent.com",
                    "subjectRegExp": "^https://github[.]com/acme/model-stack/[.]github/workflows/.*@refs/heads/main$"}


@pytest.mark.parametrize("overrides,secrets,key,text", [
    ({**KEYLESS, "images.signing.tlogUpload": False}, None, "images.signing.tlogUpload",
     "must be true or unset with images.signing.keyless: true"),
    (KEYLESS, SIGNING_SECRETS, "cosignPrivateKey", "is not used with images.signing.keyless: true"),
    (KEYLESS, SIGNING_SECRETS, "cosignPassword", "is not used with images.signing.keyless: true"),
    ({"images.signing.keyless": True}, None, "images.signing.keyless", "needs images.signing.enabled: true"),
    ({"images.verification.enabled": True}, None, "images.verification.enabled",
     "needs at least one of images.verification.publicKeys and images.verification.keylessIdentities"),
    ({"images.verification.enabled": True, "images.verification.keylessIdentities": [
        {**KEYLESS_IDENTITY, "issuer": "token.actions.githubusercontent.com"}]},
     None, "images.verification.keylessIdentities[0].issuer", "https://"),
    ({"images.verification.enabled": True, "images.verification.keylessIdentities": [
        KEYLESS_IDENTITY, {**KEYLESS_IDENTITY, "subjectRegExp": GITHUB_WORKFLOWS["subjectRegExp"]}]},
     None, "images.verification.keylessIdentities[1]", "needs exactly one of subject and subjectRegExp (given: 'both')"),
    ({"images.verification.enabled": True, "images.verification.keylessIdentities": [
        {"issuer": KEYLESS_IDENTITY["issuer"]}]},
     None, "images.verification.keylessIdentities[0]", "needs exactly one of subject and subjectRegExp (given: 'neither')"),
    ({"images.verification.enabled": True, "images.verification.keylessIdentities": [
        {**GITHUB_WORKFLOWS, "subjectRegExp": "^https://github.com/acme/(model-stack$"}]},
     None, "images.verification.keylessIdentities[0].subjectRegExp", "is not a regular expression"),
])
def test_bad_keyless_config_is_refused(overrides, secrets, key, text):
    assert_rejected("prod", overrides, key, text, secrets=secrets)


@pytest.mark.parametrize("overrides,secrets", [
    ({**KEYLESS, "images.signing.tlogUpload": True}, None),                   # keyless with the log set explicitly
    (KEYLESS, None),                                                          # keyless, no key secret
    ({**SIGNING, "images.signing.tlogUpload": False}, SIGNING_SECRETS),       # a key may sign without the log
    ({"images.signing.keyless": False}, None),                                # keyless off without signing
    ({**KEYLESS, "images.verification.enabled": True,                         # identities instead of keys
      "images.verification.keylessIdentities": [KEYLESS_IDENTITY, GITHUB_WORKFLOWS]}, None),
])
def test_keyless_config_near_those_refused_is_accepted(overrides, secrets):
    evaluate("prod", set=overrides, secrets=secrets)


def test_the_docker_runtime_cannot_sign_or_verify():
    overrides = {**SIGNING, "images.verification.enabled": True, "images.verification.publicKeys": [public_key_pem()]}
    for key in ("images.signing.enabled", "images.verification.enabled"):
        assert_rejected("local", overrides, key, "the Docker runtime", secrets=SIGNING_SECRETS)


# --- verification at admission ---------------------------------------------------------------------------------

def verifying(public_keys: list[str], mode: str = "enforce") -> dict:
    """Verification with `public_keys`, of images the stack signs with a key (SIGNING_SECRETS')."""
    return {**SIGNING, "images.verification.enabled": True, "images.verification.publicKeys": public_keys,
            "images.verification.mode": mode}


def test_dev_installs_no_admission_policy_by_default():
    evaluation = evaluate("dev")
    assert evaluation.of_type("kubernetes:helm.sh/v4:Chart") == []
    assert not any(obj["kind"] == "ClusterImagePolicy" for _, obj in evaluation.kubernetes_objects())


def test_prod_admission_policy_is_schema_valid_and_guards_exactly_the_model_namespace():
    key = public_key_pem()
    evaluation = evaluate("prod", set=verifying([key]), secrets=SIGNING_SECRETS)
    objects = [obj for _, obj in evaluation.kubernetes_objects()]

    [policy] = [obj for obj in objects if obj["kind"] == "ClusterImagePolicy"]
    assert validation_errors(policy, "1.32", policy_controller_crd_schemas(CONTROLLER_VERSION)) == []
    assert policy["spec"] == {"images": [{"glob": "**"}], "authorities": [{"name": "key-0", "key": {"data": key}}],
                              "mode": "enforce"}

    guarded = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "Namespace"
               and NAMESPACE_LABEL.items() <= obj["metadata"].get("labels", {}).items()}
    assert guarded == {stack_config("prod").get("namespace", "models")}

    chart = evaluation.one("kubernetes:helm.sh/v4:Chart", "signed-images-controller").plain()
    assert (chart["chart"], chart["version"], chart["repositoryOpts"]["repo"]) == (
        "policy-controller", CHART_VERSION, CHART_REPOSITORY)
    assert chart["values"]["webhook"]["namespaceSelector"] == {
        "matchExpressions": [{"key": "policy.sigstore.dev/include", "operator": "In", "values": ["true"]}]}


def admission_policy(evaluation: Evaluation) -> dict:
    [policy] = [obj for _, obj in evaluation.kubernetes_objects() if obj["kind"] == "ClusterImagePolicy"]
    return policy


def test_a_keyless_admission_policy_is_schema_valid_and_guards_exactly_the_model_namespace():
    key = public_key_pem()
    evaluation = evaluate("prod", set={**verifying([key]),
                                       "images.verification.keylessIdentities": [KEYLESS_IDENTITY, GITHUB_WORKFLOWS]},
                          secrets=SIGNING_SECRETS)
    policy = admission_policy(evaluation)
    assert validation_errors(policy, "1.32", policy_controller_crd_schemas(CONTROLLER_VERSION)) == []
    assert policy["metadata"]["name"] == POLICY_NAME
    assert policy["spec"]["authorities"] == [
        {"name": "key-0", "key": {"data": key}},
        # One authority of every identity: any one of them admits. Fulcio's public URL is policy-controller's
        # default, written out.
        {"name": "keyless", "keyless": {"url": "https://fulcio.sigstore.dev", "identities": [
            KEYLESS_IDENTITY, GITHUB_WORKFLOWS]}},
    ]
    guarded = {obj["metadata"]["name"] for _, obj in evaluation.kubernetes_objects() if obj["kind"] == "Namespace"
               and NAMESPACE_LABEL.items() <= obj["metadata"].get("labels", {}).items()}
    assert guarded == {stack_config("prod").get("namespace", "models")}


def test_identities_alone_make_an_admission_policy_without_key_authorities():
    evaluation = evaluate("prod", set={**KEYLESS, "images.verification.enabled": True,
                                       "images.verification.keylessIdentities": [GITHUB_WORKFLOWS]})
    [authority] = admission_policy(evaluation)["spec"]["authorities"]
    assert authority == {"name": "keyless", "keyless": {"url": "https://fulcio.sigstore.dev",
                                                        "identities": [GITHUB_WORKFLOWS]}}


def test_the_crd_schema_takes_an_identity_with_both_subjects_that_the_config_refuses():
    """Why the config checks subject and subjectRegExp itself: the CRD's schema takes both (and neither), and only
    policy-controller's webhook refuses them (Identity.Validate), when `pulumi up` creates the policy."""
    policy = {"apiVersion": "policy.sigstore.dev/v1beta1", "kind": "ClusterImagePolicy", "metadata": {"name": "p"},
              "spec": {"images": [{"glob": "**"}], "authorities": [{"name": "keyless", "keyless": {
                  "url": "https://fulcio.sigstore.dev",
                  "identities": [{**KEYLESS_IDENTITY, **GITHUB_WORKFLOWS}, {"issuer": KEYLESS_IDENTITY["issuer"]}]}}]}}
    assert validation_errors(policy, "1.32", policy_controller_crd_schemas(CONTROLLER_VERSION)) == []


def test_the_controller_image_counts_as_deployed_for_the_registry_mapping():
    """The rule that mirrors the webhook's image (prod's ghcr.io) maps a deployed image once verification is on."""
    def ghcr_warnings(overrides: dict) -> list[str]:
        # Without the embedding model, whose llama.cpp image comes from ghcr.io too.
        only_chat = {"models.embed": None, **overrides}
        secrets = SIGNING_SECRETS if overrides else None
        return [w for w in evaluate("prod", set=only_chat, secrets=secrets).warnings
                if w.startswith('images.rewrite["ghcr.io"]')]

    assert ghcr_warnings({}) != []
    assert ghcr_warnings(verifying([public_key_pem()])) == []


def test_the_controller_image_is_mirrored_and_pulled_from_the_mirror():
    evaluation = evaluate("prod", set=verifying([public_key_pem()]), secrets=SIGNING_SECRETS)
    repository, _, digest = WEBHOOK_IMAGE.partition("@")
    mirrored = f"{ECR}/mirror/{repository}"
    assert any(index.plain()["sources"] == [WEBHOOK_IMAGE] for index in evaluation.of_type("docker-build:index:Index"))
    image = evaluation.one("kubernetes:helm.sh/v4:Chart", "signed-images-controller").plain()["values"]["webhook"]["image"]
    assert image == {"repository": mirrored, "version": digest}


def test_workloads_wait_for_the_policy():
    evaluation = evaluate("prod", set=verifying([public_key_pem()]), secrets=SIGNING_SECRETS)
    policy = evaluation.one("kubernetes:policy.sigstore.dev/v1beta1:ClusterImagePolicy")
    for runner in evaluation.of_type("model-stack:index:ModelRunner"):
        assert policy.urn in runner.dependencies


def test_audit_mode_warns_and_every_key_is_an_authority(tmp_path):
    keys = [public_key_pem(), public_key_pem()]
    key_file = tmp_path / "cosign.pub"
    key_file.write_text(keys[1])
    evaluation = evaluate("prod", set=verifying([keys[0], str(key_file)], mode="audit"), secrets=SIGNING_SECRETS)
    [policy] = [obj for _, obj in evaluation.kubernetes_objects() if obj["kind"] == "ClusterImagePolicy"]
    assert policy["spec"]["mode"] == "warn"
    assert [authority["key"]["data"] for authority in policy["spec"]["authorities"]] == keys


@pytest.mark.parametrize("overrides,key,text", [
    (verifying(["keys/missing.pub"]), "images.verification.publicKeys[0]", "neither a PEM public key nor a file"),
    (verifying(["README.md"]), "images.verification.publicKeys[0]", "is not a PEM public key"),
    (verifying([public_key_pem(), "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n"]),
     "images.verification.publicKeys[1]", "is not a PEM public key"),
    (verifying([public_key_pem()], mode="permissive"), "images.verification.mode", "enforce"),
])
def test_bad_verification_config_is_rejected(overrides, key, text):
    assert_rejected("prod", overrides, key, text, secrets=SIGNING_SECRETS)


def test_a_private_key_in_the_public_keys_is_rejected_without_echoing_it():
    private_key = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nc2VjcmV0LWtleS1ib2R5\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    error, _ = evaluate_failure("prod", set=verifying([private_key]))
    assert "images.verification.publicKeys[0]: is not a PEM public key" in str(error)
    assert "given: '-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----'" in str(error)
    assert "c2VjcmV0LWtleS1ib2R5" not in str(error)


# --- the admission webhook's availability ------------------------------------------------------------------------

def webhook_values(evaluation: Evaluation) -> dict:
    return evaluation.one("kubernetes:helm.sh/v4:Chart", "signed-images-controller").plain()["values"]["webhook"]


def test_production_runs_the_webhook_on_several_nodes_with_a_budget_that_lets_nodes_drain():
    """The chart's defaults (one replica, a PDB of minAvailable 1) make the webhook a single point of failure whose
    budget blocks every drain; the chart writes minAvailable only when truthy, and a PDB takes one of the two."""
    webhook = webhook_values(evaluate("prod", set=verifying([public_key_pem()]), secrets=SIGNING_SECRETS))
    assert webhook["replicaCount"] >= 2
    budget = webhook["podDisruptionBudget"]
    assert budget["enabled"] and budget["maxUnavailable"] == 1 and not budget["minAvailable"]
    terms = webhook["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert {term["podAffinityTerm"]["topologyKey"] for term in terms} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    # The chart labels the webhook's pods with its name; its other labels carry the release name.
    assert all(term["podAffinityTerm"]["labelSelector"] == {"matchLabels": {"app.kubernetes.io/name": "policy-controller"}}
               for term in terms)
    # Enforcing fails closed (only the labelled namespace's pods wait for the webhook).
    assert webhook["failurePolicy"] == "Fail"


# --- verification that could never admit ---------------------------------------------------------------------------

QUAY_VLLM = "quay.io/acme/vllm-openai:v0.11.0@sha256:" + "c" * 64
ACME_SIGNER = {"identity": "https://github.com/acme/vllm/.github/workflows/release.yml@refs/heads/main",
               "issuer": "https://token.actions.githubusercontent.com"}


def refused_keys(overrides: dict, secrets: dict | None = SIGNING_SECRETS, stack: str = "prod") -> dict[str, str]:
    """Each refused config key and its line, for a config that must be refused before anything is registered."""
    error, evaluation = evaluate_failure(stack, set=overrides, secrets=secrets)
    assert evaluation.resources == [], error
    return {line[4:].partition(":")[0]: line for line in str(error).splitlines() if line.startswith("  - ")}


def test_enforcing_with_signing_off_names_every_image_it_would_deny():
    refused = refused_keys({**verifying([public_key_pem()]), "images.signing.enabled": False}, secrets=None)
    assert set(refused) == {"models.chat.image", "models.embed.image", "images.verification.mode"}
    assert "images.signing.enabled is false" in refused["models.chat.image"]
    assert stack_config("prod")["models"]["chat"]["image"] in refused["models.chat.image"]
    assert "the gateway build" in refused["images.verification.mode"]


@pytest.mark.parametrize("overrides,secrets,reason", [
    ({**KEYLESS, "images.verification.enabled": True, "images.verification.publicKeys": [public_key_pem()]}, None,
     "keylessIdentities names no identity"),
    ({**SIGNING, "images.verification.enabled": True, "images.verification.keylessIdentities": [KEYLESS_IDENTITY]},
     SIGNING_SECRETS, "publicKeys holds no key"),
])
def test_enforcing_without_what_verifies_the_stacks_own_signatures_is_refused(overrides, secrets, reason):
    refused = refused_keys(overrides, secrets)
    assert {"models.chat.image", "models.embed.image", "images.verification.mode"} <= set(refused)
    assert all(reason in line for line in refused.values())


def test_an_image_nothing_copies_into_the_registry_is_named():
    refused = refused_keys({**verifying([public_key_pem()]), "models.chat.image": QUAY_VLLM})
    assert set(refused) == {"models.chat.image"}
    assert "no images.rewrite rule copies it" in refused["models.chat.image"] and QUAY_VLLM in refused["models.chat.image"]


def test_the_pull_sidecar_counts_as_a_deployed_image():
    sidecar = "quay.io/curl/curl:8.10.1@sha256:" + "d" * 64
    model = {"engine": "docker-model-runner", "model": "ai/smollm2:360M-Q4_K_M",
             "image": "docker/model-runner:v0.1.0@sha256:" + "e" * 64, "pullSidecarImage": sidecar}
    refused = refused_keys({**verifying([public_key_pem()]), "models.embed": None, "models.chat": {
        **stack_config("prod")["models"]["embed"], **model, "gpu": {"count": 0}}})
    assert set(refused) == {"models.chat.pullSidecarImage"}, refused


def test_knatives_queue_proxy_counts_as_a_deployed_image(pinned_knative_release):
    knative = {"gateway.workload": "knative", "gateway.scaling.targetCpuUtilization": None,
               "knative.domain": "models.example.com", "knative.manifestsDir": str(pinned_knative_release)}
    refused = refused_keys({**verifying([public_key_pem()]), **knative})
    assert set(refused) == {"knative.servingVersion"}, refused
    assert "queue" in refused["knative.servingVersion"]
    # Copied into the registry (and so signed), it is admitted.
    evaluate("prod", set={**verifying([public_key_pem()]), **knative,
                          'images.rewrite["opencsg-registry.cn-beijing.cr.aliyuncs.com"]': f"{ECR}/mirror/knative"},
             secrets=SIGNING_SECRETS)


@pytest.mark.parametrize("identity,admitted", [
    ({"issuer": ACME_SIGNER["issuer"], "subjectRegExp": "^https://github[.]com/acme/vllm/.*$"}, True),
    ({"issuer": ACME_SIGNER["issuer"], "subject": ACME_SIGNER["identity"]}, True),
    ({"issuer": "https://accounts.google.com", "subject": ACME_SIGNER["identity"]}, False),
    ({"issuer": ACME_SIGNER["issuer"], "subjectRegExp": "^https://github[.]com/other/.*$"}, False),
])
def test_an_image_pulled_from_a_publisher_whose_signer_the_policy_accepts_is_admitted(identity, admitted):
    overrides = {**verifying([public_key_pem()]), "models.chat.image": QUAY_VLLM,
                 'images.publisherSignatures["quay.io/acme"]': ACME_SIGNER,
                 "images.verification.keylessIdentities": [identity]}
    if admitted:
        evaluate("prod", set=overrides, secrets=SIGNING_SECRETS)
    else:
        assert set(refused_keys(overrides)) == {"models.chat.image"}


def test_auditing_admits_what_enforcing_would_deny_and_never_blocks_admission():
    evaluation = evaluate("prod", set={**verifying([public_key_pem()], mode="audit"), "images.signing.enabled": False,
                                       "models.chat.image": QUAY_VLLM})
    assert webhook_values(evaluation)["failurePolicy"] == "Ignore"


# --- publishers' signatures, verified before a copy ------------------------------------------------------------

VLLM_SIGNER = {"identity": "https://github.com/vllm-project/vllm/.github/workflows/release.yml@refs/tags/v0.11.0",
               "issuer": "https://token.actions.githubusercontent.com"}


def verifications(evaluation: Evaluation) -> dict[str, dict]:
    """The environment of every publisher-signature check, by the upstream image it checks."""
    return {
        command.inputs["environment"]["SOURCE"]: command
        for command in evaluation.of_type("command:local:Command")
        if "cosign verify --certificate-identity" in command.inputs["create"]
    }


def test_a_mirrored_image_under_a_signing_publisher_is_verified_before_it_is_copied():
    evaluation = evaluate("prod", set={"images.publisherSignatures.vllm": VLLM_SIGNER})
    source = stack_config("prod")["models"]["chat"]["image"]
    [(checked, command)] = verifications(evaluation).items()
    assert checked == source
    environment = command.inputs["environment"]
    assert (environment["IDENTITY"], environment["ISSUER"]) == (VLLM_SIGNER["identity"], VLLM_SIGNER["issuer"])
    assert command.inputs["triggers"] == [source, VLLM_SIGNER["identity"], VLLM_SIGNER["issuer"]]
    [copy] = [index for index in evaluation.of_type("docker-build:index:Index") if index.plain()["sources"] == [source]]
    assert command.urn in copy.dependencies


def test_the_longest_publisher_prefix_wins():
    docker_hub = {"identity": "someone@example.com", "issuer": "https://accounts.google.com"}
    evaluation = evaluate("prod", set={'images.publisherSignatures["docker.io"]': docker_hub,
                                       'images.publisherSignatures["docker.io/vllm"]': VLLM_SIGNER})
    identities = {source: command.inputs["environment"]["IDENTITY"]
                  for source, command in verifications(evaluation).items()}
    vllm = stack_config("prod")["models"]["chat"]["image"]
    assert identities.pop(vllm) == VLLM_SIGNER["identity"]
    assert set(identities.values()) <= {docker_hub["identity"]}


def test_no_publisher_signature_is_checked_unless_configured():
    assert verifications(evaluate("prod")) == {}


def test_a_publisher_issuer_must_be_an_https_url():
    assert_rejected("prod", {"images.publisherSignatures.vllm": {**VLLM_SIGNER, "issuer": "accounts.google.com"}},
                    "images.publisherSignatures.vllm.issuer", "https://")


def test_verification_needs_a_registry_the_webhook_reaches():
    assert_rejected("dev", verifying([public_key_pem()]), "images.verification.enabled", "needs images.registry.server")
