"""A cosign signature of a pushed image, by digest, stored in the image's registry beside it: made with a key, or
keyless with the OIDC identity of where `pulumi up` runs."""

from typing import NotRequired, Optional, TypedDict

import pulumi
import pulumi_command as command

from .image import RegistryLoginArgs

# cosign 3 signs into the new bundle format with a TUF-provided signing config by default (which also decides the
# transparency log, whatever --tlog-upload says), and policy-controller 0.13 (what SignedImagesPolicy installs)
# verifies bundles only for keyless authorities; for a key it reads the `.sig` tags cosign 2 writes. These options
# pin cosign 2's behaviour in both majors; cosign has them from 2.6 (off by default there), so the scripts refuse
# an older cosign, and an unknown newer major, before anything is signed.
FORMAT_OPTIONS = "--new-bundle-format=false --use-signing-config=false"
SUPPORTED_COSIGN = "2.6 or a later 2.x, or 3.x"
# The key, its password and the registry login reach cosign through the environment, never the command line
# (where `ps` would show them). The login goes to a throwaway Docker config, so the signature is pushed with the same
# credentials as the image and nothing is left in the user's ~/.docker.
COSIGN_SETUP = """set -eu
cosign_version="$(cosign version 2>/dev/null | sed -n 's/^GitVersion:[[:space:]]*v\\{0,1\\}//p')"
case "$cosign_version" in
  2.[6-9].*|2.[1-9][0-9].*|3.*) ;;
  *) echo "cosign ${cosign_version:-(version unknown)} is on the PATH; the stack signs with cosign """ + SUPPORTED_COSIGN + """ \\
(it pins """ + FORMAT_OPTIONS + """, which older releases lack). Put one first on the PATH of pulumi up." >&2
     exit 1 ;;
esac
export DOCKER_CONFIG="$(mktemp -d)"
trap 'rm -rf "$DOCKER_CONFIG"' EXIT
if [ -n "${REGISTRY_ADDRESS:-}" ]; then
  printf '%s' "$REGISTRY_PASSWORD" | cosign login "$REGISTRY_ADDRESS" --username "$REGISTRY_USERNAME" --password-stdin
fi
"""
# The key option of every cosign command that signs, present only with a key in the environment. Without one cosign
# signs keyless: it finds the ambient OIDC token itself (GitHub Actions' id-token, or SIGSTORE_ID_TOKEN; the command
# inherits the environment of `pulumi up`), gets a short-lived certificate for it from Fulcio and, with `--yes`,
# records the signature in Rekor without asking.
KEY_OPTION = "${COSIGN_PRIVATE_KEY:+--key env://COSIGN_PRIVATE_KEY}"
SIGN_SCRIPT = COSIGN_SETUP + "cosign sign " + KEY_OPTION + " " + FORMAT_OPTIONS + """ --tlog-upload="$TLOG_UPLOAD" \\
  --yes "$IMAGE"
"""


class ImageSignatureArgs(TypedDict):
    image: pulumi.Input[str]
    """The pushed image, pinned by digest (`<repository>[:tag]@sha256:...`): the signature covers those bytes only."""

    private_key: NotRequired[pulumi.Input[str]]
    """Cosign private key (PEM, `cosign generate-key-pair`), a Pulumi secret; absent to sign keyless, with the
    OIDC identity where `pulumi up` runs (GitHub Actions' id-token, or a token in `SIGSTORE_ID_TOKEN`)."""

    password: NotRequired[pulumi.Input[str]]
    """Password of the private key, a Pulumi secret; absent for a key without one, and when keyless."""

    tlog_upload: NotRequired[bool]
    """Record the signature in the transparency log (Rekor) as well: default true when keyless, which cannot be
    verified without it (false is refused then), false with a key."""

    registry_login: NotRequired[RegistryLoginArgs]
    """Push credentials of the image's registry; absent where the registry takes anonymous pushes."""


def cosign_environment(args: ImageSignatureArgs) -> dict[str, pulumi.Input[str]]:
    """What a script that starts with COSIGN_SETUP and then runs cosign with KEY_OPTION reads: the image, the key
    and its password (none when keyless), the transparency-log setting and the registry login, secrets marked."""
    keyless = "private_key" not in args
    tlog_upload = args.get("tlog_upload", keyless)
    if keyless and not tlog_upload:
        raise ValueError("keyless signing needs tlog_upload: its certificate expires minutes after signing, and only "
                         "the transparency log entry shows the signature was made while it was valid")
    login = args.get("registry_login")
    environment: dict[str, pulumi.Input[str]] = {"IMAGE": args["image"], "TLOG_UPLOAD": "true" if tlog_upload else "false"}
    if not keyless:
        environment |= {
            "COSIGN_PRIVATE_KEY": pulumi.Output.secret(args["private_key"]),
            "COSIGN_PASSWORD": pulumi.Output.secret(args.get("password", "")),
        }
    if login is not None:
        environment |= {
            "REGISTRY_ADDRESS": login["address"],
            "REGISTRY_USERNAME": login["username"],
            "REGISTRY_PASSWORD": pulumi.Output.secret(login["password"]),
        }
    return environment


def signing_triggers(args: ImageSignatureArgs) -> list[pulumi.Input[str]]:
    """Triggers of a cosign command: a new digest, or a new key, runs it again. Nothing else does: a registry token
    that differs on every run (ECR's) must not add another signature or attestation each time. Keyless, the digest
    alone: each keyless signature is made with a fresh short-lived certificate, so anything from the signing itself
    in the triggers would sign again on every run, piling up signatures and transparency log entries."""
    if "private_key" not in args:
        return [args["image"]]
    return [args["image"], pulumi.Output.secret(args["private_key"])]


class ImageSignature(pulumi.ComponentResource):
    """Signs `image` with cosign where `pulumi up` runs (cosign 2.6+ or 3.x on its PATH), once per digest (and key)."""

    def __init__(self, name: str, args: ImageSignatureArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:ImageSignature", name, None, opts)
        command.local.Command(
            name,
            create=SIGN_SCRIPT,
            environment=cosign_environment(args),
            triggers=signing_triggers(args),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["environment"]),
        )
        self.register_outputs({})
