"""Signing and attestations with the real cosign (built by .ci/toolchain.py) against a real registry: an image is
built, pushed, signed by digest with a key, and attested; verification holds for that digest only, so a tag moved to
other bytes no longer verifies.

Key-based and offline throughout: nothing is uploaded to a transparency log and verification does not ask for one
(`--tlog-upload=false`, `--insecure-ignore-tlog`), so no Sigstore public-good service is reached. Needs what
.ci/docker-setup provides (Docker engine, base image, registry on 127.0.0.1:5000).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from components.image_signature import SIGN_SCRIPT
from docker_engine import BASE_IMAGE, REGISTRY, docker, require_docker_setup

pytestmark = pytest.mark.docker

KEY_PASSWORD = "engine-lane-signing"
# No transparency log is written or consulted. (The registry speaks plain HTTP: cosign's registry client uses HTTP
# for a loopback registry by itself, as it does for kind's localhost:5001.)
SIGN_FLAGS = ["--tlog-upload=false", "--yes"]
VERIFY_FLAGS = ["--insecure-ignore-tlog=true"]


@dataclass(frozen=True)
class Cosign:
    directory: Path
    env: dict[str, str]

    def __call__(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["cosign", *arguments], capture_output=True, text=True, cwd=self.directory,
                                env=self.env, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"cosign {' '.join(arguments)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def key_pair(self, name: str) -> tuple[Path, Path]:
        self("generate-key-pair", f"--output-key-prefix={name}")
        return self.directory / f"{name}.key", self.directory / f"{name}.pub"


@pytest.fixture(scope="module")
def cosign(toolchain, tmp_path_factory) -> Cosign:
    require_docker_setup()
    home = tmp_path_factory.mktemp("cosign")
    # TUF_ROOT: cosign's trust-root cache stays in the test's directory (key-based verification never fills it).
    return Cosign(home, {**os.environ, **toolchain, "COSIGN_PASSWORD": KEY_PASSWORD, "TUF_ROOT": str(home / "tuf")})


def build_and_push(tag: str, content: str, workdir: Path) -> str:
    """Builds a one-file image from the base image, pushes it as `tag`, returns `repository@sha256:...`."""
    context = workdir / uuid.uuid4().hex
    context.mkdir()
    (context / "content").write_text(content)
    (context / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY content /content\n")
    docker("build", "--network", "host", "--tag", tag, str(context), timeout=300)
    docker("push", tag)
    repository = tag.rpartition(":")[0]
    digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", tag).stdout)
    return next(digest for digest in digests if digest.startswith(repository + "@"))


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(tag, digest reference) of a freshly built image, unique to this run."""
    require_docker_setup()
    tag = f"{REGISTRY}/model-stack/signing-test:{uuid.uuid4().hex[:12]}"
    digest_reference = build_and_push(tag, "signed bytes\n", tmp_path_factory.mktemp("signed-image"))
    yield tag, digest_reference
    docker("image", "rm", "--force", tag, check=False)


@pytest.fixture(scope="module")
def signing_key(cosign, pushed) -> tuple[Path, Path]:
    """A key pair whose private half signed the pushed image, by digest."""
    private_key, public_key = cosign.key_pair("release")
    cosign("sign", "--key", str(private_key), *SIGN_FLAGS, pushed[1])
    return private_key, public_key


def spdx_document(name: str) -> dict:
    """The smallest SPDX 2.3 document that describes one package: the image itself."""
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://model-stack.invalid/spdx/{uuid.uuid4()}",
        "creationInfo": {"created": "2026-01-01T00:00:00Z", "creators": ["Tool: model-stack-engine-lane"]},
        "packages": [{"SPDXID": "SPDXRef-image", "name": name, "downloadLocation": "NOASSERTION"}],
        "relationships": [
            {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-image"}
        ],
    }


def slsa_provenance(builder: str) -> dict:
    """A SLSA v0.2 provenance predicate (what `--type slsaprovenance` declares)."""
    return {
        "builder": {"id": builder},
        "buildType": "https://mobyproject.org/buildkit@v1",
        "invocation": {"configSource": {"entryPoint": "Dockerfile"}},
    }


def test_the_signed_digest_verifies_with_its_public_key(cosign, pushed, signing_key):
    _, digest_reference = pushed
    verified = cosign("verify", "--key", str(signing_key[1]), *VERIFY_FLAGS, digest_reference)
    [signature] = json.loads(verified.stdout)
    assert signature["critical"]["image"]["docker-manifest-digest"] == digest_reference.partition("@")[2]


def test_another_key_does_not_verify_the_signature(cosign, pushed, signing_key):
    _, other_public_key = cosign.key_pair("other")
    result = cosign("verify", "--key", str(other_public_key), *VERIFY_FLAGS, pushed[1], check=False)
    assert result.returncode != 0
    assert "no matching signatures" in result.stderr, result.stderr


@pytest.mark.parametrize(("kind", "make_predicate"), [
    ("spdxjson", lambda: spdx_document("model-stack/signing-test")),
    ("slsaprovenance", lambda: slsa_provenance("https://model-stack.invalid/engine-lane")),
])
def test_an_attestation_verifies_and_names_the_digest(cosign, pushed, signing_key, kind, make_predicate):
    private_key, public_key = signing_key
    _, digest_reference = pushed
    predicate = make_predicate()
    predicate_file = cosign.directory / f"{kind}.json"
    predicate_file.write_text(json.dumps(predicate))
    cosign("attest", "--key", str(private_key), "--type", kind, "--predicate", str(predicate_file), *SIGN_FLAGS,
           digest_reference)

    verified = cosign("verify-attestation", "--key", str(public_key), "--type", kind, *VERIFY_FLAGS, digest_reference)
    envelopes = [json.loads(line) for line in verified.stdout.splitlines() if line.strip()]
    statements = [json.loads(base64.b64decode(envelope["payload"])) for envelope in envelopes]
    digest = digest_reference.partition("@sha256:")[2]
    assert any(
        statement["predicate"] == predicate and {"sha256": digest} in [subject["digest"] for subject in statement["subject"]]
        for statement in statements
    ), statements


def test_a_tag_moved_to_other_bytes_fails_verification(cosign, signing_key, tmp_path):
    private_key, public_key = (str(path) for path in signing_key)
    tag = f"{REGISTRY}/model-stack/signing-test:moved-{uuid.uuid4().hex[:12]}"
    signed_reference = build_and_push(tag, "signed release\n", tmp_path)
    cosign("sign", "--key", private_key, *SIGN_FLAGS, signed_reference)
    cosign("verify", "--key", public_key, *VERIFY_FLAGS, tag)

    tampered_reference = build_and_push(tag, "tampered release\n", tmp_path)
    assert tampered_reference != signed_reference

    tampered = cosign("verify", "--key", public_key, *VERIFY_FLAGS, tag, check=False)
    assert tampered.returncode != 0
    assert "no signatures found" in tampered.stderr, tampered.stderr
    cosign("verify", "--key", public_key, *VERIFY_FLAGS, signed_reference)
    docker("image", "rm", "--force", tag, check=False)


def test_the_stacks_signing_command_signs_what_the_public_key_verifies(cosign, tmp_path):
    """The script ImageSignature runs, with the environment it passes: the key only in the environment, the push
    login in a throwaway Docker config, the image as the build's `repository:tag@digest` reference."""
    private_key, public_key = cosign.key_pair("stack")
    tag = f"{REGISTRY}/model-stack/signing-test:stack-{uuid.uuid4().hex[:12]}"
    digest_reference = build_and_push(tag, "signed by the stack\n", tmp_path)
    build_ref = f"{tag}@{digest_reference.partition('@')[2]}"
    signing = subprocess.run(["sh", "-c", SIGN_SCRIPT], capture_output=True, text=True, timeout=120, env={
        **cosign.env, "IMAGE": build_ref, "COSIGN_PRIVATE_KEY": private_key.read_text(), "TLOG_UPLOAD": "false",
        "REGISTRY_ADDRESS": REGISTRY, "REGISTRY_USERNAME": "ci", "REGISTRY_PASSWORD": "anonymous-registry",
    })
    assert signing.returncode == 0, signing.stderr
    cosign("verify", "--key", str(public_key), *VERIFY_FLAGS, digest_reference)
    docker("image", "rm", "--force", tag, check=False)
