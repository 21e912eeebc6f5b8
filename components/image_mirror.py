"""Copies pinned upstream images into a private registry, keeping their digests."""

from typing import NotRequired, Optional, TypedDict

import pulumi
import pulumi_command as command

from .image import RegistryLoginArgs
from .image_rewrite import split_reference

# `imagetools create` copies the manifest (the whole multi-platform index) registry to registry: the copy has
# the upstream digest, nothing is pulled into a local image store, and every platform comes along. The login
# lives in a throwaway DOCKER_CONFIG, so no credential reaches the command line, the log or ~/.docker.
COPY_IMAGE = """set -eu
export DOCKER_CONFIG="$(mktemp -d)"
trap 'rm -rf "$DOCKER_CONFIG"' EXIT
if [ -n "${REGISTRY_USERNAME:-}" ]; then
  printf '%s' "$REGISTRY_PASSWORD" | docker login --username "$REGISTRY_USERNAME" --password-stdin "$REGISTRY" >&2
fi
docker buildx imagetools create --tag "$TARGET" "$SOURCE" >&2
"""


class ImageMirrorArgs(TypedDict):
    source: str
    """Upstream image, digest-pinned (`vllm/vllm-openai:v0.11.0@sha256:...`)."""

    target: str
    """Where the copy goes, without digest (`<registry>/mirror/vllm/vllm-openai:v0.11.0`)."""

    registry_login: NotRequired[RegistryLoginArgs]
    """Push credentials of the target registry."""


class ImageMirror(pulumi.ComponentResource):
    """One upstream image copied into the private registry."""

    ref: pulumi.Output[str]
    """The copy, pinned to the upstream digest."""

    def __init__(self, name: str, args: ImageMirrorArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:ImageMirror", name, None, opts)
        _, suffix = split_reference(args["source"])
        digest = suffix.partition("@")[2]
        if not digest:
            raise ValueError(f"ImageMirror {name}: source {args['source']!r} must be pinned by digest")
        environment: dict[str, pulumi.Input[str]] = {"SOURCE": args["source"], "TARGET": args["target"]}
        login = args.get("registry_login")
        if login:
            environment.update(
                REGISTRY=login["address"], REGISTRY_USERNAME=login["username"],
                REGISTRY_PASSWORD=pulumi.Output.secret(login["password"]),
            )
        copy = command.local.Command(
            name,
            create=COPY_IMAGE,
            environment=environment,
            # A new source digest or target is a new copy; the same pair is already there.
            triggers=[args["source"], args["target"]],
            logging=command.local.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.ref = copy.id.apply(lambda _: f"{args['target']}@{digest}")
        self.register_outputs({"ref": self.ref})
