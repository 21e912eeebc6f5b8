"""The image layer: images the stack builds and mirrors, and where the cluster pulls every image from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Optional

import pulumi

from components.image import Image, RegistryLoginArgs
from components.image_mirror import ImageMirror
from components.image_rewrite import canonical_repository, rewrite_image, split_reference
from components.registry_credentials import RegistryCredentials

from .cluster import ClusterHandle
from .config import StackConfig
from .config.base import ImageReference
from .config.secrets import StackSecrets

PULL_SECRET_NAME = "registry-pull"


@dataclass(frozen=True)
class PullCredentials:
    server: str
    username: str
    password: pulumi.Output[str]


@dataclass(frozen=True)
class ImageHandle:
    gateway_image: pulumi.Output[str]
    """Digest-pinned reference of the gateway image: built and pushed here, or the prebuilt one configured."""

    rewrite_rules: dict[str, str] = field(default_factory=dict)
    """Upstream prefix -> mirror prefix, applied to every image the stack deploys (third-party manifests too)."""

    ready: list[pulumi.Resource] = field(default_factory=list)
    """Pushes and mirror copies that must finish before workloads pull (pass as depends_on)."""

    pull_credentials: Optional[PullCredentials] = None
    """Credentials the cluster pulls with; None when nodes need none."""

    _pull_secrets: dict[str, str] = field(default_factory=dict)

    def rewrite(self, reference: str) -> str:
        """`reference` as the cluster pulls it (through the registry mapping)."""
        return rewrite_image(reference, self.rewrite_rules)

    def pull_secret(self, namespace: str, opts: pulumi.ResourceOptions) -> Optional[str]:
        """Name of a dockerconfigjson Secret in `namespace` for imagePullSecrets, created on first use;
        None when the registry needs no credentials."""
        credentials = self.pull_credentials
        if credentials is None:
            return None
        if namespace not in self._pull_secrets:
            RegistryCredentials(
                f"{namespace}-{PULL_SECRET_NAME}",
                {
                    "secret_name": PULL_SECRET_NAME,
                    "namespace": namespace,
                    "server": credentials.server,
                    "username": credentials.username,
                    "password": credentials.password,
                },
                opts=opts,
            )
            self._pull_secrets[namespace] = PULL_SECRET_NAME
        return self._pull_secrets[namespace]


def publish_images(
    config: StackConfig, secrets: StackSecrets, cluster: ClusterHandle, deployed: list[str]
) -> ImageHandle:
    """Builds and pushes the gateway, and copies into the private registry every pinned image the mapping sends
    there: `images.mirror`, plus whatever the stack deploys (`deployed`: engine, sidecar, Knative, Kourier)."""
    images = config.images
    rules = dict(images.rewrite)
    server = images.registry.server or cluster.local_registry
    registry_host = server.partition("/")[0] if server else None
    login: Optional[RegistryLoginArgs] = None
    if images.registry.push_username and registry_host and secrets.registry_push_password is not None:
        login = {
            "address": registry_host,
            "username": images.registry.push_username,
            "password": secrets.registry_push_password,
        }
    ready: list[pulumi.Resource] = []
    mapped = [image for image in deployed if ImageReference.parse(image).pinned and rewrite_image(image, rules) != image]
    for source in dict.fromkeys([*images.mirror, *mapped]):
        repository, suffix = split_reference(rewrite_image(source, rules))
        tag = suffix.partition("@")[0]
        mirror = ImageMirror(
            _resource_name("mirror", canonical_repository(split_reference(source)[0])),
            {"source": source, "target": repository + tag, **({"registry_login": login} if login else {})},
            # The copy runs where `pulumi up` runs; it waits for the cluster only because kind's local registry
            # comes up with it.
            opts=pulumi.ResourceOptions(depends_on=cluster.ready),
        )
        ready.append(mirror)

    gateway_image: pulumi.Output[str]
    if config.gateway.image is not None:
        gateway_image = pulumi.Output.from_input(rewrite_image(config.gateway.image, rules))
    else:
        assert server is not None  # StackConfig.check requires a registry to push the build to
        build = images.gateway_build
        repository = f"{server}/{build.repository}"
        build_args = dict(build.build_args)
        if build.base_image is not None:
            build_args["BASE_IMAGE"] = build.base_image
        image = Image(
            "gateway",
            {
                "repository": repository,
                "tag": build.tag,
                # Relative to the project, which Pulumi runs the program in.
                "context": build.context,
                **({"dockerfile": str(PurePosixPath(build.context, build.dockerfile))} if build.dockerfile else {}),
                "target": build.target,
                "build_args": build_args,
                **({"platforms": list(build.platforms)} if build.platforms else {}),
                **({"cache_from": [f"{repository}:buildcache"], "cache_to": [f"{repository}:buildcache"]} if build.cache else {}),
                "labels": {
                    "org.opencontainers.image.title": build.repository,
                    "org.opencontainers.image.version": build.tag,
                    **build.labels,
                },
                "pull": build.pull,
                **({"registry_login": login} if login else {}),
            },
            opts=pulumi.ResourceOptions(depends_on=cluster.ready),
        )
        ready.append(image)
        gateway_image = image.ref

    pull_credentials = None
    if images.registry.pull_username and registry_host and secrets.registry_pull_password is not None:
        pull_credentials = PullCredentials(registry_host, images.registry.pull_username, secrets.registry_pull_password)
    return ImageHandle(rewrite_rules=rules, gateway_image=gateway_image, ready=ready, pull_credentials=pull_credentials)


def _resource_name(kind: str, repository: str) -> str:
    """`mirror-docker-io-vllm-vllm-openai` for `docker.io/vllm/vllm-openai`: unique per upstream repository."""
    return f"{kind}-" + re.sub(r"[^a-z0-9]+", "-", repository).strip("-")
