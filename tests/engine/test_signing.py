"""Signing and attestations with the real cosign and syft (built by .ci/toolchain.py) against a real registry: an
image is built, pushed, signed by digest with a key, and attested with the stack's own scripts; verification holds for
that digest only, so a tag moved to other bytes no longer verifies.

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
from typing import Callable, Iterator
from unittest import mock

import pulumi
import pytest
from pulumi import automation as auto

from components.image_attestation import PROVENANCE_SCRIPT, SBOM_SCRIPT, ImageAttestation
from components.image_mirror import ImageMirror
from components.image_signature import SIGN_SCRIPT, ImageSignature, ImageSignatureArgs
from docker_engine import BASE_IMAGE, REGISTRY, docker, require_docker_setup
from stacks.cluster import ClusterHandle
from stacks.config import StackConfig
from stacks.config.images import GatewayBuildConfig
from stacks.config.secrets import StackSecrets
from stacks.images import _gateway_provenance, _mirror_names, publish_images

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
    run_stack_script(cosign, SIGN_SCRIPT, f"{tag}@{digest_reference.partition('@')[2]}", private_key)
    cosign("verify", "--key", str(public_key), *VERIFY_FLAGS, digest_reference)
    docker("image", "rm", "--force", tag, check=False)


def run_stack_script(cosign: Cosign, script: str, image: str, private_key: Path, **environment: str) -> None:
    """One of the stacks' cosign scripts, with the environment ImageSignature and ImageAttestation pass it: the key
    only in the environment, the push login in a throwaway Docker config."""
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300, env={
        **cosign.env, "IMAGE": image, "COSIGN_PRIVATE_KEY": private_key.read_text(), "TLOG_UPLOAD": "false",
        "REGISTRY_ADDRESS": REGISTRY, "REGISTRY_USERNAME": "ci", "REGISTRY_PASSWORD": "anonymous-registry",
        **environment,
    })
    assert result.returncode == 0, result.stderr


def verified_predicates(cosign: Cosign, public_key: Path, kind: str, image: str, check: bool = True) -> list[dict]:
    """The predicates of `image`'s attestations of `kind` that `public_key` verifies and that name its digest."""
    verified = cosign("verify-attestation", "--key", str(public_key), "--type", kind, *VERIFY_FLAGS, image, check=check)
    if verified.returncode != 0:
        return []
    envelopes = [json.loads(line) for line in verified.stdout.splitlines() if line.strip()]
    statements = [json.loads(base64.b64decode(envelope["payload"])) for envelope in envelopes]
    digest = image.partition("@sha256:")[2]
    return [statement["predicate"] for statement in statements
            if not digest or {"sha256": digest} in [subject["digest"] for subject in statement["subject"]]]


@pytest.fixture(scope="module")
def attested(cosign, tmp_path_factory) -> Iterator[tuple[str, str, Path, dict]]:
    """(tag, build reference, public key, provenance predicate) of an image the stack's scripts signed and attested:
    the SBOM from syft, the provenance the stack writes for a gateway build."""
    private_key, public_key = cosign.key_pair("attesting")
    tag = f"{REGISTRY}/model-stack/signing-test:attested-{uuid.uuid4().hex[:12]}"
    digest_reference = build_and_push(tag, "attested bytes\n", tmp_path_factory.mktemp("attested-image"))
    build_ref = f"{tag}@{digest_reference.partition('@')[2]}"
    build = GatewayBuildConfig.model_validate({"target": "dev", "buildArgs": {"PIP_INDEX": "mirror"}})
    provenance = _gateway_provenance(build, dict(build.build_args))
    run_stack_script(cosign, SIGN_SCRIPT, build_ref, private_key)
    run_stack_script(cosign, SBOM_SCRIPT, build_ref, private_key)
    run_stack_script(cosign, PROVENANCE_SCRIPT, build_ref, private_key, PREDICATE=json.dumps(provenance))
    yield tag, build_ref, public_key, provenance
    docker("image", "rm", "--force", tag, check=False)


def test_the_stacks_sbom_lists_the_images_packages(cosign, attested):
    _, build_ref, public_key, _ = attested
    [sbom] = verified_predicates(cosign, public_key, "spdxjson", build_ref)
    assert sbom["spdxVersion"].startswith("SPDX-2.")
    [image] = [package for package in sbom["packages"] if package.get("primaryPackagePurpose") == "CONTAINER"]
    assert image["name"] == build_ref.partition("@")[0].rpartition(":")[0]
    # The base image's Debian packages (.ci/docker-setup installs python3 with debootstrap), with the files they own.
    packages = {package["name"] for package in sbom["packages"]}
    assert {"bash", "python3"} <= packages, sorted(packages)
    assert any(file["fileName"].endswith("bin/bash") for file in sbom["files"])


def test_the_stacks_provenance_names_the_build_parameters(cosign, attested):
    _, build_ref, public_key, provenance = attested
    [predicate] = verified_predicates(cosign, public_key, "slsaprovenance1", build_ref)
    # cosign reads the predicate into its SLSA v1 type and writes that back (with an empty `runDetails.metadata`),
    # so a field outside the schema would be lost: everything the stack writes must come through.
    assert predicate["buildDefinition"] == provenance["buildDefinition"]
    assert predicate["runDetails"]["builder"] == provenance["runDetails"]["builder"]
    parameters = predicate["buildDefinition"]["externalParameters"]
    assert (parameters["target"], parameters["buildArgs"], parameters["dockerfile"]) == (
        "dev", {"PIP_INDEX": "mirror"}, "app/Dockerfile")


def test_another_key_verifies_no_attestation(cosign, attested):
    _, build_ref, _, _ = attested
    _, other_public_key = cosign.key_pair("other-attesting")
    for kind in ("spdxjson", "slsaprovenance1"):
        result = cosign("verify-attestation", "--key", str(other_public_key), "--type", kind, *VERIFY_FLAGS, build_ref,
                        check=False)
        assert result.returncode != 0, result.stdout


def test_a_tag_moved_to_other_bytes_has_no_attestations(cosign, attested, tmp_path):
    tag, build_ref, public_key, _ = attested
    for kind in ("spdxjson", "slsaprovenance1"):
        assert verified_predicates(cosign, public_key, kind, tag)
    tampered_reference = build_and_push(tag, "tampered bytes\n", tmp_path)
    assert tampered_reference.partition("@")[2] != build_ref.partition("@")[2]
    for kind in ("spdxjson", "slsaprovenance1"):
        tampered = cosign("verify-attestation", "--key", str(public_key), "--type", kind, *VERIFY_FLAGS, tag, check=False)
        assert tampered.returncode != 0
        assert "no matching attestations" in tampered.stderr or "no attestations" in tampered.stderr, tampered.stderr
        # The attested digest still verifies.
        assert verified_predicates(cosign, public_key, kind, build_ref)


# --- what `pulumi up` signs as digests and keys change --------------------------------------------------------------

def signature_count(cosign: Cosign, image: str) -> int:
    """How many signatures `image`'s digest has in the registry, whoever made them."""
    result = cosign("download", "signature", image, check=False)
    return len([line for line in result.stdout.splitlines() if line.strip()]) if result.returncode == 0 else 0


def provenance(run: str) -> str:
    build = GatewayBuildConfig.model_validate({"buildArgs": {"RUN": run}})
    return json.dumps(_gateway_provenance(build, dict(build.build_args)))


def signing_program() -> None:
    """The gateway's signature and provenance as stacks/images.py makes them, from this stack's config."""
    config = pulumi.Config()
    signature: ImageSignatureArgs = {
        "image": config.require("image"),
        "private_key": config.require_secret("key"),
        "password": config.require_secret("keyPassword"),
        "registry_login": {"address": REGISTRY, "username": "ci", "password": config.require_secret("registryToken")},
    }
    signed = ImageSignature("gateway-signature", signature)
    ImageAttestation("gateway-attestation", {"signature": signature, "provenance": config.require("provenance")},
                     opts=pulumi.ResourceOptions(depends_on=[signed]))


def test_a_new_digest_or_key_is_signed_with_this_runs_inputs_and_a_new_token_signs_nothing(engine_stack, cosign, tmp_path):
    """The cosign commands keep image, key, login and predicate in an environment they ignore, and run again when
    their triggers (digest, key) change: the engine creates the replacement with this run's inputs, ignored ones
    included, so the new digest is signed with the current key and the old digest is not signed again; a new
    registry token or predicate alone changes nothing."""
    repository = f"{REGISTRY}/model-stack/resigning-{uuid.uuid4().hex[:12]}"
    first = build_and_push(f"{repository}:first", "first build\n", tmp_path)
    second = build_and_push(f"{repository}:second", "second build\n", tmp_path)
    old_key, old_public = cosign.key_pair("before-rotation")
    new_key, new_public = cosign.key_pair("after-rotation")

    def runs(image: str, public_key: Path) -> list[str]:
        return [predicate["buildDefinition"]["externalParameters"]["buildArgs"]["RUN"]
                for predicate in verified_predicates(cosign, public_key, "slsaprovenance1", image, check=False)]

    stack = engine_stack("resigning", {"image": first, "key": old_key.read_text(), "keyPassword": KEY_PASSWORD,
                                       "registryToken": "token-1", "provenance": provenance("first")}, signing_program)

    def up(**changes: str) -> None:
        for key, value in changes.items():
            stack.set_config(f"model-stack:{key}", auto.ConfigValue(value, secret=key in ("key", "registryToken")))
        assert stack.up(on_output=print).summary.result == "succeeded"

    up()
    assert (signature_count(cosign, first), runs(first, old_public)) == (1, ["first"])

    up(image=second, provenance=provenance("second"))  # a rebuild: new digest, new provenance
    cosign("verify", "--key", str(old_public), *VERIFY_FLAGS, second)
    assert (signature_count(cosign, second), runs(second, old_public)) == (1, ["second"])
    assert (signature_count(cosign, first), runs(first, old_public)) == (1, ["first"])  # not signed again

    up(key=new_key.read_text())  # the key rotated as the README says
    cosign("verify", "--key", str(new_public), *VERIFY_FLAGS, second)
    assert (signature_count(cosign, second), runs(second, new_public)) == (2, ["second"])
    assert signature_count(cosign, first) == 1

    up(registryToken="token-2", provenance=provenance("third"))  # a new token, a commit that left the bytes alone
    assert signature_count(cosign, second) == 2
    assert runs(second, old_public) == runs(second, new_public) == ["second"]
    assert signature_count(cosign, first) == 1
    stack.destroy(on_output=print)


# --- mirrors of two images of one repository -----------------------------------------------------------------------

def mirror_config(upstream: str, mirror: str) -> StackConfig:
    return StackConfig.model_validate({
        "gateway": {"image": f"{REGISTRY}/model-stack/prebuilt@sha256:" + "0" * 64},
        "images": {"registry": {"server": REGISTRY}, "rewrite": {upstream: mirror},
                   "signing": {"enabled": True, "attestations": {"sbom": False, "provenance": False}}},
    })


class CopiedMirror(pulumi.ComponentResource):
    """ImageMirror's resource without its copy, which the test made beforehand: docker-build's Index reads the
    target registry over HTTPS whatever its host, and the lane's registry speaks plain HTTP."""

    def __init__(self, name: str, args: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__("model-stack:index:ImageMirror", name, None, opts)
        self.ref = pulumi.Output.from_input(f"{args['target']}@{args['source'].partition('@')[2]}")
        self.register_outputs({"ref": self.ref})


def copied(source: str, target: str) -> None:
    """`source` (a digest reference) pushed to `target` as well, as ImageMirror's copy would be: same digest."""
    docker("pull", source)
    docker("tag", source, target)
    docker("push", target)


def test_two_images_of_one_repository_mirror_and_sign_beside_the_one_a_stack_had(engine_stack, cosign, tmp_path):
    """Mirror resources were named by repository alone: a second image of it collided with the first (the engine
    refuses the duplicate URN). Now each is named apart, and the image a stack mirrored before keeps its mirror and
    signature (aliases): neither is replaced nor signed again."""
    run = uuid.uuid4().hex[:12]
    upstream, mirror = f"{REGISTRY}/upstream-{run}", f"{REGISTRY}/mirror-{run}"
    cpu = build_and_push(f"{upstream}/llama-cpp:server", "cpu build\n", tmp_path)
    cuda = build_and_push(f"{upstream}/llama-cpp:server-cuda", "cuda build\n", tmp_path)
    cpu_source, cuda_source = (f"{upstream}/llama-cpp:{tag}@{reference.partition('@')[2]}"
                               for tag, reference in (("server", cpu), ("server-cuda", cuda)))
    for tag, reference in (("server", cpu), ("server-cuda", cuda)):
        copied(reference, f"{mirror}/llama-cpp:{tag}")
    private_key, public_key = cosign.key_pair("mirrors")
    config = mirror_config(upstream, mirror)
    plain = _mirror_names([cpu_source])[cpu_source][0]

    def keyed() -> StackSecrets:
        settings = pulumi.Config()
        return StackSecrets(cosign_private_key=settings.require_secret("key"),
                            cosign_password=settings.require_secret("keyPassword"))

    def deployed(sources: list[str]) -> Callable[[], None]:
        def program() -> None:
            with mock.patch("stacks.images.ImageMirror", CopiedMirror):
                publish_images(config, keyed(), ClusterHandle(provider=None, kubeconfig=None), sources)
        return program

    def colliding() -> None:
        for source in (cpu_source, cuda_source):
            ImageMirror(plain, {"source": source, "target": f"{mirror}/llama-cpp:{source.partition(':')[2]}"})

    settings = {"key": private_key.read_text(), "keyPassword": KEY_PASSWORD}
    with pytest.raises(auto.CommandError, match="Duplicate resource URN"):
        engine_stack("colliding", settings, colliding).preview()

    stack = engine_stack("mirrors", settings, deployed([cpu_source]))  # one image of the repository: its plain name
    assert stack.up(on_output=print).summary.result == "succeeded"
    mirrored_cpu = f"{mirror}/llama-cpp:server@{cpu.partition('@')[2]}"
    assert signature_count(cosign, mirrored_cpu) == 1

    def ids() -> dict[str, str]:
        return {resource["urn"].rpartition("::")[2]: resource.get("id") for resource in
                stack.export_stack().deployment["resources"] if resource["type"] == "command:local:Command"}

    before = ids()
    assert set(before) == {f"{plain}-signature"}
    stack.workspace.program = deployed([cpu_source, cuda_source])
    up = stack.up(on_output=print)
    assert up.summary.result == "succeeded"
    changes = up.summary.resource_changes or {}
    assert "replace" not in changes and "delete" not in changes, changes
    cpu_name = _mirror_names([cpu_source, cuda_source])[cpu_source][0]
    assert cpu_name != plain and ids()[f"{cpu_name}-signature"] == before[f"{plain}-signature"]
    mirrored_cuda = f"{mirror}/llama-cpp:server-cuda@{cuda.partition('@')[2]}"
    cosign("verify", "--key", str(public_key), *VERIFY_FLAGS, mirrored_cuda)
    assert (signature_count(cosign, mirrored_cpu), signature_count(cosign, mirrored_cuda)) == (1, 1)
    stack.destroy(on_output=print)
