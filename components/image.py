"""An image built from a Docker context with BuildKit and pushed to a registry, exposed by digest."""

import os
import shlex
from typing import NotRequired, Optional, TypedDict

import pulumi
import pulumi_command as command
import pulumi_docker_build as docker_build


class RegistryLoginArgs(TypedDict):
    address: str
    """Registry host the image is pushed to (`123456789012.dkr.ecr.us-east-1.amazonaws.com`)."""

    username: pulumi.Input[str]
    """User to push as."""

    password: pulumi.Input[str]
    """Password or token to push with (a Pulumi secret)."""


class ImageArgs(TypedDict):
    repository: str
    """Fully qualified repository to push to (`localhost:5001/model-gateway`)."""

    tag: str
    """Tag pushed along with the digest (a release version; deployments use the digest)."""

    context: str
    """Build context directory, best relative to the program's directory. Only what its `.dockerignore` lets
    through is hashed and sent to BuildKit, so a rebuild happens exactly when a file that reaches the build
    changes."""

    dockerfile: NotRequired[str]
    """Dockerfile path (relative to the program's directory, like `context`); absent uses `<context>/Dockerfile`."""

    target: NotRequired[str]
    """Stage of a multi-stage Dockerfile to build."""

    build_args: NotRequired[dict[str, str]]
    """`ARG` values."""

    platforms: NotRequired[list[str]]
    """Platforms to build for (`linux/amd64`, `linux/arm64`); absent builds for the builder's own."""

    cache_from: NotRequired[list[str]]
    """Registry references to import build cache from."""

    cache_to: NotRequired[list[str]]
    """Registry references to export build cache to (mode=max: every stage's layers)."""

    labels: NotRequired[dict[str, str]]
    """Image labels (OCI annotations such as `org.opencontainers.image.source`)."""

    pull: NotRequired[bool]
    """Pull newer versions of the base images on every build."""

    secrets: NotRequired[dict[str, pulumi.Input[str]]]
    """Build secrets (`RUN --mount=type=secret,id=<name>`), kept out of layers and history."""

    registry_login: NotRequired[RegistryLoginArgs]
    """Credentials for the push; absent for registries that take anonymous pushes (a local dev registry)."""

    push: NotRequired[bool]
    """Push to the registry (default); false loads the image into the local Docker engine instead, for the
    single-host runtime."""

    host_network_builder: NotRequired[str]
    """Build with a BuildKit builder of this name on the host's network, created when missing and removed with
    the image. docker-build's own builder runs BuildKit in a container on a bridge network, where `localhost` is
    that container: a registry on this machine's loopback (kind's `localhost:5001`) is reachable only this way."""


class Image(pulumi.ComponentResource):
    """A BuildKit build pushed to a registry; `ref` names exactly the pushed bytes."""

    ref: pulumi.Output[str]
    """Digest-pinned reference of the pushed image (`<repository>:<tag>@sha256:...`); the tag when loaded."""

    context_hash: pulumi.Output[str]
    """Hash of the build context: it changes exactly when the build's inputs do."""

    def __init__(self, name: str, args: ImageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:Image", name, None, opts)
        login = args.get("registry_login")
        push = args.get("push", True)
        builder_name = args.get("host_network_builder")
        builder_ready: list[pulumi.Resource] = []
        if builder_name is not None:
            quoted = shlex.quote(builder_name)
            builder_ready.append(command.local.Command(
                f"{name}-builder",
                create=f"docker buildx inspect {quoted} >/dev/null 2>&1 || docker buildx create --name {quoted} "
                       "--driver docker-container --driver-opt network=host --bootstrap",
                delete=f"if docker buildx inspect {quoted} >/dev/null 2>&1; then docker buildx rm {quoted}; fi",
                opts=pulumi.ResourceOptions(parent=self),
            ))
        image = docker_build.Image(
            name,
            context={"location": _portable_path(args["context"])},
            dockerfile={"location": _portable_path(args["dockerfile"])} if "dockerfile" in args else None,
            target=args.get("target"),
            build_args=args.get("build_args"),
            platforms=args.get("platforms"),
            cache_from=[{"registry": {"ref": ref}} for ref in args.get("cache_from", [])] or None,
            # An OCI image manifest rather than a cache index: ECR rejects the index, and every registry that
            # serves OCI images (GHCR, Docker Hub, Harbor, distribution) takes the manifest.
            cache_to=[
                {"registry": {"ref": ref, "mode": "max", "image_manifest": True, "oci_media_types": True}}
                for ref in args.get("cache_to", [])
            ] or None,
            labels=args.get("labels"),
            pull=args.get("pull", False),
            secrets=args.get("secrets"),
            tags=[f"{args['repository']}:{args['tag']}"],
            push=push,
            load=not push,
            registries=[login] if login else None,
            builder={"name": builder_name} if builder_name is not None else None,
            # `pulumi preview` (CI on pull requests) needs neither a Docker daemon nor push credentials; the image
            # is built and pushed by `pulumi up`, and until then its digest is unknown in the preview.
            build_on_preview=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=builder_ready),
        )
        self.ref = image.ref
        self.context_hash = image.context_hash
        self.register_outputs({"ref": self.ref, "context_hash": self.context_hash})


def _portable_path(path: str) -> str:
    """`path` relative to the working directory (Pulumi runs the program and its providers in the project's
    directory). The provider keeps the path in its state and compares it as a string, so an absolute path would
    differ on every other checkout and show the image as changed."""
    return os.path.relpath(path)
