"""A cosign signature of a pushed image, by digest, stored in the image's registry beside it."""

from typing import NotRequired, Optional, TypedDict

import pulumi
import pulumi_command as command

from .image import RegistryLoginArgs

# The key, its password and the registry login reach cosign through the environment, never the command line
# (where `ps` would show them). The login goes to a throwaway Docker config, so the signature is pushed with the same
# credentials as the image and nothing is left in the user's ~/.docker.
REGISTRY_LOGIN = """set -eu
export DOCKER_CONFIG="$(mktemp -d)"
trap 'rm -rf "$DOCKER_CONFIG"' EXIT
if [ -n "${REGISTRY_ADDRESS:-}" ]; then
  printf '%s' "$REGISTRY_PASSWORD" | cosign login "$REGISTRY_ADDRESS" --username "$REGISTRY_USERNAME" --password-stdin
fi
"""
SIGN_SCRIPT = REGISTRY_LOGIN + """cosign sign --key env://COSIGN_PRIVATE_KEY --tlog-upload="$TLOG_UPLOAD" --yes "$IMAGE"
"""


class ImageSignatureArgs(TypedDict):
    image: pulumi.Input[str]
    """The pushed image, pinned by digest (`<repository>[:tag]@sha256:...`): the signature covers those bytes only."""

    private_key: pulumi.Input[str]
    """Cosign private key (PEM, `cosign generate-key-pair`), a Pulumi secret."""

    password: NotRequired[pulumi.Input[str]]
    """Password of the private key, a Pulumi secret; absent for a key without one."""

    tlog_upload: NotRequired[bool]
    """Record the signature in the transparency log (Rekor) as well (default false)."""

    registry_login: NotRequired[RegistryLoginArgs]
    """Push credentials of the image's registry; absent where the registry takes anonymous pushes."""


def cosign_environment(args: ImageSignatureArgs) -> dict[str, pulumi.Input[str]]:
    """What a script that starts with REGISTRY_LOGIN and then runs cosign with the key reads: the image, the key and
    its password, the transparency-log setting and the registry login, secrets marked."""
    login = args.get("registry_login")
    environment: dict[str, pulumi.Input[str]] = {
        "IMAGE": args["image"],
        "COSIGN_PRIVATE_KEY": pulumi.Output.secret(args["private_key"]),
        "COSIGN_PASSWORD": pulumi.Output.secret(args.get("password", "")),
        "TLOG_UPLOAD": "true" if args.get("tlog_upload", False) else "false",
    }
    if login is not None:
        environment |= {
            "REGISTRY_ADDRESS": login["address"],
            "REGISTRY_USERNAME": login["username"],
            "REGISTRY_PASSWORD": pulumi.Output.secret(login["password"]),
        }
    return environment


def once_per_digest_and_key(args: ImageSignatureArgs) -> list[pulumi.Input[str]]:
    """Triggers of a cosign command: a new digest or a new key runs it again. Nothing else does: a registry token
    that differs on every run (ECR's) must not add another signature or attestation each time."""
    return [args["image"], pulumi.Output.secret(args["private_key"])]


class ImageSignature(pulumi.ComponentResource):
    """Signs `image` with cosign where `pulumi up` runs (cosign must be on its PATH), once per digest and key."""

    def __init__(self, name: str, args: ImageSignatureArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:ImageSignature", name, None, opts)
        command.local.Command(
            name,
            create=SIGN_SCRIPT,
            environment=cosign_environment(args),
            triggers=once_per_digest_and_key(args),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["environment"]),
        )
        self.register_outputs({})
