"""Signatures of the images the stack pushes, and admission of only signed images into the model namespace."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from components.signed_images_policy import (
    CHART_REPOSITORY, CHART_VERSION, CONTROLLER_VERSION, NAMESPACE_LABEL, WEBHOOK_IMAGE,
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
        assert "cosign attest --key env://COSIGN_PRIVATE_KEY" in inputs["create"] and '"$IMAGE"' in inputs["create"]
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


def test_the_docker_runtime_cannot_sign_or_verify():
    overrides = {**SIGNING, "images.verification.enabled": True, "images.verification.publicKeys": [public_key_pem()]}
    for key in ("images.signing.enabled", "images.verification.enabled"):
        assert_rejected("local", overrides, key, "the Docker runtime", secrets=SIGNING_SECRETS)


# --- verification at admission ---------------------------------------------------------------------------------

def verifying(public_keys: list[str], mode: str = "enforce") -> dict:
    return {"images.verification.enabled": True, "images.verification.publicKeys": public_keys,
            "images.verification.mode": mode}


def test_dev_installs_no_admission_policy_by_default():
    evaluation = evaluate("dev")
    assert evaluation.of_type("kubernetes:helm.sh/v4:Chart") == []
    assert not any(obj["kind"] == "ClusterImagePolicy" for _, obj in evaluation.kubernetes_objects())


def test_prod_admission_policy_is_schema_valid_and_guards_exactly_the_model_namespace():
    key = public_key_pem()
    evaluation = evaluate("prod", set=verifying([key]))
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


def test_the_controller_image_counts_as_deployed_for_the_registry_mapping():
    """The rule that mirrors the webhook's image (prod's ghcr.io) maps a deployed image once verification is on."""
    def ghcr_warnings(overrides: dict) -> list[str]:
        # Without the embedding model, whose llama.cpp image comes from ghcr.io too.
        only_chat = {"models.embed": None, **overrides}
        return [w for w in evaluate("prod", set=only_chat).warnings if w.startswith('images.rewrite["ghcr.io"]')]

    assert ghcr_warnings({}) != []
    assert ghcr_warnings(verifying([public_key_pem()])) == []


def test_the_controller_image_is_mirrored_and_pulled_from_the_mirror():
    evaluation = evaluate("prod", set=verifying([public_key_pem()]))
    repository, _, digest = WEBHOOK_IMAGE.partition("@")
    mirrored = f"{ECR}/mirror/{repository}"
    assert any(index.plain()["sources"] == [WEBHOOK_IMAGE] for index in evaluation.of_type("docker-build:index:Index"))
    image = evaluation.one("kubernetes:helm.sh/v4:Chart", "signed-images-controller").plain()["values"]["webhook"]["image"]
    assert image == {"repository": mirrored, "version": digest}


def test_workloads_wait_for_the_policy():
    evaluation = evaluate("prod", set=verifying([public_key_pem()]))
    policy = evaluation.one("kubernetes:policy.sigstore.dev/v1beta1:ClusterImagePolicy")
    for runner in evaluation.of_type("model-stack:index:ModelRunner"):
        assert policy.urn in runner.dependencies


def test_audit_mode_warns_and_every_key_is_an_authority(tmp_path):
    keys = [public_key_pem(), public_key_pem()]
    key_file = tmp_path / "cosign.pub"
    key_file.write_text(keys[1])
    evaluation = evaluate("prod", set=verifying([keys[0], str(key_file)], mode="audit"))
    [policy] = [obj for _, obj in evaluation.kubernetes_objects() if obj["kind"] == "ClusterImagePolicy"]
    assert policy["spec"]["mode"] == "warn"
    assert [authority["key"]["data"] for authority in policy["spec"]["authorities"]] == keys


@pytest.mark.parametrize("overrides,key,text", [
    ({"images.verification.enabled": True}, "images.verification.publicKeys", "needs at least one public key"),
    (verifying(["keys/missing.pub"]), "images.verification.publicKeys[0]", "neither a PEM public key nor a file"),
    (verifying(["README.md"]), "images.verification.publicKeys[0]", "is not a PEM public key"),
    (verifying([public_key_pem(), "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n"]),
     "images.verification.publicKeys[1]", "is not a PEM public key"),
    (verifying([public_key_pem()], mode="permissive"), "images.verification.mode", "enforce"),
])
def test_bad_verification_config_is_rejected(overrides, key, text):
    assert_rejected("prod", overrides, key, text)


def test_a_private_key_in_the_public_keys_is_rejected_without_echoing_it():
    private_key = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nc2VjcmV0LWtleS1ib2R5\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    error, _ = evaluate_failure("prod", set=verifying([private_key]))
    assert "images.verification.publicKeys[0]: is not a PEM public key" in str(error)
    assert "given: '-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----'" in str(error)
    assert "c2VjcmV0LWtleS1ib2R5" not in str(error)


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
