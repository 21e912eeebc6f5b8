"""Signed in-toto attestations of a pushed image (an SPDX SBOM, a SLSA provenance), by digest, stored in the image's
registry beside it."""

from typing import NotRequired, Optional, TypedDict

import pulumi
import pulumi_command as command

from .image_signature import (
    COSIGN_SETUP, FORMAT_OPTIONS, KEY_OPTION, ImageSignatureArgs, cosign_environment, signing_triggers,
)
from .options import child_options

# BuildKit could record both itself, but pulumi-docker-build has no option for its attestations
# (pulumi/pulumi-docker-build#73), so cosign attaches them after the push, signed as the image is (its key, or
# keyless).
# syft reads the pushed image from the registry with the login COSIGN_SETUP wrote to the throwaway Docker config
# (a loopback registry such as kind's localhost:5001 over plain HTTP by itself, as cosign does, so no
# SYFT_REGISTRY_INSECURE_USE_HTTP); for a multi-platform index it describes the image of this machine's platform.
# No update check leaves the machine. Each predicate is written beside that config and removed with it.
SBOM_SCRIPT = COSIGN_SETUP + """export SYFT_CHECK_FOR_APP_UPDATE=false
syft scan "registry:$IMAGE" --quiet -o "spdx-json=$DOCKER_CONFIG/sbom.spdx.json"
cosign attest """ + KEY_OPTION + " " + FORMAT_OPTIONS + """ --type spdxjson --predicate "$DOCKER_CONFIG/sbom.spdx.json" \\
  --tlog-upload="$TLOG_UPLOAD" --yes "$IMAGE"
"""
PROVENANCE_SCRIPT = COSIGN_SETUP + """printf '%s' "$PREDICATE" > "$DOCKER_CONFIG/provenance.json"
cosign attest """ + KEY_OPTION + " " + FORMAT_OPTIONS + """ --type slsaprovenance1 --predicate "$DOCKER_CONFIG/provenance.json" \\
  --tlog-upload="$TLOG_UPLOAD" --yes "$IMAGE"
"""


class ImageAttestationArgs(TypedDict):
    signature: ImageSignatureArgs
    """The image (by digest) and how it is signed: its attestations are signed the same way (the same key, or
    keyless) and pushed with the same login."""

    sbom: NotRequired[bool]
    """Attest an SPDX JSON SBOM of the image that syft writes from the pushed bytes (syft must be on the PATH)."""

    provenance: NotRequired[pulumi.Input[str]]
    """Attest this SLSA provenance v1 predicate (JSON: `buildDefinition`, `runDetails`), what the builder knows of
    the build; absent for an image built elsewhere."""


class ImageAttestation(pulumi.ComponentResource):
    """Attests `image` with cosign where `pulumi up` runs (cosign 2.6+ or 3.x, and syft for the SBOM, on its PATH),
    once per digest (and key), like its signature."""

    def __init__(self, name: str, args: ImageAttestationArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:ImageAttestation", name, None, opts)
        signed = args["signature"]
        environment = cosign_environment(signed)
        scripts: dict[str, tuple[str, dict[str, pulumi.Input[str]]]] = {}
        if args.get("sbom", False):
            scripts["sbom"] = (SBOM_SCRIPT, environment)
        if "provenance" in args:
            scripts["provenance"] = (PROVENANCE_SCRIPT, {**environment, "PREDICATE": args["provenance"]})
        previous: list[pulumi.Resource] = []
        for kind, (script, script_environment) in scripts.items():
            attest = command.local.Command(
                f"{name}-{kind}",
                create=script,
                environment=script_environment,
                # A provenance that changes while the digest does not (a commit that leaves the build's files alone)
                # attests nothing new: the bytes it describes are those already attested.
                triggers=signing_triggers(signed),
                # After what the component waits for (the signature), and one after the other: cosign adds an
                # attestation by rewriting the image's one `.att` manifest, so two at once would lose one.
                opts=pulumi.ResourceOptions.merge(
                    child_options(self, opts), pulumi.ResourceOptions(ignore_changes=["environment"], depends_on=previous)),
            )
            previous = [attest]
        self.register_outputs({})
