"""Copies pinned upstream images into a private registry, keeping their digests."""

from typing import NotRequired, Optional, TypedDict

import pulumi
import pulumi_command as command
import pulumi_docker_build as docker_build

from .image import RegistryLoginArgs
from .image_rewrite import split_reference


# Keyless verification against Sigstore's public-good trust root (fetched by cosign): the certificate must name
# the publisher's identity, issued by its OIDC issuer, and the signature must be in the transparency log.
VERIFY_SCRIPT = """set -eu
cosign verify --certificate-identity "$IDENTITY" --certificate-oidc-issuer "$ISSUER" "$SOURCE" >/dev/null
"""


# For a registry on this machine that speaks plain HTTP (kind's local one): buildx's own resolver reaches
# localhost over HTTP, as it does for the gateway's push there.
COPY_SCRIPT = """set -eu
docker buildx imagetools create --progress=plain --tag "$TARGET" "$SOURCE"
"""


class PublisherSignatureArgs(TypedDict):
    identity: str
    """The identity the publisher signs with (the certificate's subject: an email or a workflow URL)."""

    issuer: str
    """The OIDC issuer that vouched for `identity` (`https://accounts.google.com`,
    `https://token.actions.githubusercontent.com`)."""


class ImageMirrorArgs(TypedDict):
    source: str
    """Upstream image, digest-pinned (`vllm/vllm-openai:v0.11.0@sha256:...`)."""

    target: str
    """Where the copy goes, without digest (`<registry>/mirror/vllm/vllm-openai:v0.11.0`)."""

    registry_login: NotRequired[RegistryLoginArgs]
    """Push credentials of the target registry."""

    local_target: NotRequired[bool]
    """The target is a registry on this machine speaking plain HTTP (kind's `localhost:5001`), which needs no
    login: the copy runs `docker buildx imagetools create` (buildx on the PATH of `pulumi up`), because
    docker-build's Index reads its copy back over HTTPS only and fails there."""

    publisher_signature: NotRequired[PublisherSignatureArgs]
    """Verify the source's keyless cosign signature before copying (cosign on the PATH of `pulumi up`); the copy
    does not happen when it fails. Absent for publishers that do not sign."""


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
        verified: list[pulumi.Resource] = []
        signature = args.get("publisher_signature")
        if signature is not None:
            environment = {"SOURCE": args["source"], "IDENTITY": signature["identity"], "ISSUER": signature["issuer"]}
            verified.append(command.local.Command(
                f"{name}-verify",
                create=VERIFY_SCRIPT,
                environment=environment,
                triggers=list(environment.values()),
                opts=pulumi.ResourceOptions(parent=self),
            ))
        # docker-build's Index runs `docker buildx imagetools create` inside the provider: the manifest (the whole
        # multi-platform index) is copied registry to registry, so the copy keeps the upstream digest and every
        # platform, and nothing lands in a local image store. The provider holds the login in memory. Its diff
        # ignores the registry password on purpose, so a short-lived token (ECR's lasts 12 hours) that differs on
        # every run neither copies again nor shows a change; a new source or target does.
        copy: pulumi.CustomResource
        if args.get("local_target"):
            if "registry_login" in args:
                raise ValueError(f"ImageMirror {name}: a local_target takes no registry_login")
            environment = {"SOURCE": args["source"], "TARGET": args["target"]}
            copy = command.local.Command(
                name,
                create=COPY_SCRIPT,
                environment=environment,
                triggers=list(environment.values()),
                opts=pulumi.ResourceOptions(parent=self, depends_on=verified),
            )
        else:
            copy = docker_build.Index(
                name,
                sources=[args["source"]],
                tag=args["target"],
                push=True,
                registry=args.get("registry_login"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=verified),
            )
        self.ref = copy.id.apply(lambda _: f"{args['target']}@{digest}")
        self.register_outputs({"ref": self.ref})
