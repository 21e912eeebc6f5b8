"""The image layer: images the stack builds and mirrors, and where the cluster pulls every image from."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Callable, Optional

import pulumi

from components.image import Image, RegistryLoginArgs
from components.image_attestation import ImageAttestation, ImageAttestationArgs
from components.image_mirror import ImageMirror, ImageMirrorArgs
from components.image_signature import ImageSignature, ImageSignatureArgs
from components.image_rewrite import (
    canonical_repository, ecr_host, longest_matching_prefix, rewrite_image, split_reference,
)
from components.registry_credentials import RegistryCredentials

from .cluster import ClusterHandle
from .config import StackConfig
from .config.base import ImageReference
from .config.images import PROJECT_ROOT, GatewayBuildConfig
from .config.secrets import StackSecrets

if TYPE_CHECKING:
    from components.ecr_registry import EcrRegistry

PULL_SECRET_NAME = "registry-pull"
BUILD_CACHE_TAG = "buildcache"
# What the gateway build's provenance names: the build type defines its `externalParameters` (images.gatewayBuild's
# settings as built), the builder is this project's `pulumi up` with pulumi-docker-build driving BuildKit.
PROVENANCE_BUILD_TYPE = "urn:model-stack:gateway-build:v1"
PROVENANCE_BUILDER = "urn:model-stack:pulumi-up"


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
    build = images.gateway_build
    gateway_repository = f"{server}/{build.repository}" if config.gateway.image is None and server else None
    mapped = [image for image in deployed if ImageReference.parse(image).pinned and rewrite_image(image, rules) != image]
    mirrors = {source: split_reference(rewrite_image(source, rules)) for source in dict.fromkeys([*images.mirror, *mapped])}

    # The copy and the build run where `pulumi up` runs; they wait for the cluster only because kind's local
    # registry comes up with it.
    push_after: list[pulumi.Resource] = list(cluster.ready)
    login: Optional[RegistryLoginArgs] = None
    if registry_host and ecr_host(registry_host):
        registry = _ecr_registry(registry_host, gateway_repository, build.cache, [repo for repo, _ in mirrors.values()],
                                 images.signing.enabled)
        login = {"address": registry.address, "username": registry.username, "password": registry.password}
        push_after.append(registry)
    elif images.registry.push_username and registry_host and secrets.registry_push_password is not None:
        login = {
            "address": registry_host,
            "username": images.registry.push_username,
            "password": secrets.registry_push_password,
        }

    ready: list[pulumi.Resource] = []

    def publish(
        name: str, pushed: pulumi.Resource, ref: pulumi.Output[str], provenance: Optional[Callable[[], dict]] = None,
        former_name: Optional[str] = None,
    ) -> None:
        """Workloads wait for the push and, when images are signed, for the signature too: an admission policy
        that verifies signatures would otherwise reject a pod that raced it. Attestations follow the signature;
        nothing at admission reads them, so nothing waits for them. `provenance` writes the build's provenance
        predicate (asked only when it is attested: it reads git). `former_name`: what `name` was called in a
        stack deployed before, whose signature and attestations are kept."""
        def renamed(kind: str) -> list[pulumi.Alias]:
            return [pulumi.Alias(name=f"{former_name}-{kind}")] if former_name else []

        ready.append(pushed)
        signing = images.signing
        if not signing.enabled:
            return
        args: ImageSignatureArgs = {"image": ref}
        if not signing.keyless:
            assert secrets.cosign_private_key is not None  # StackSecrets.problems requires it when signing with a key
            args["private_key"] = secrets.cosign_private_key
            if secrets.cosign_password is not None:
                args["password"] = secrets.cosign_password
        if signing.tlog_upload is not None:  # unset: ImageSignature's default, on exactly when keyless
            args["tlog_upload"] = signing.tlog_upload
        if login is not None:
            args["registry_login"] = login
        signature = ImageSignature(f"{name}-signature", args, opts=pulumi.ResourceOptions(
            depends_on=[pushed], aliases=renamed("signature")))
        ready.append(signature)
        attestation: ImageAttestationArgs = {"signature": args, "sbom": signing.attestations.sbom}
        if signing.attestations.provenance and provenance is not None:
            attestation["provenance"] = json.dumps(provenance())
        if attestation["sbom"] or "provenance" in attestation:
            ImageAttestation(f"{name}-attestation", attestation, opts=pulumi.ResourceOptions(
                depends_on=[signature], aliases=renamed("attestation")))

    for source, (name, former_name) in _mirror_names(list(mirrors)).items():
        repository, suffix = mirrors[source]
        mirror_args: ImageMirrorArgs = {"source": source, "target": repository + suffix.partition("@")[0]}
        if _on_loopback(repository.partition("/")[0]):
            mirror_args["local_target"] = True
        elif login:
            mirror_args["registry_login"] = login
        publisher = longest_matching_prefix(source, images.publisher_signatures)
        if publisher is not None:
            signer = images.publisher_signatures[publisher]
            mirror_args["publisher_signature"] = {"identity": signer.identity, "issuer": signer.issuer}
        mirror = ImageMirror(name, mirror_args, opts=pulumi.ResourceOptions(
            depends_on=push_after, aliases=[pulumi.Alias(name=former_name)] if former_name else None))
        # An SBOM only: the copy's provenance is its publisher's build, of which this stack knows nothing.
        publish(name, mirror, mirror.ref, former_name=former_name)

    gateway_image: pulumi.Output[str]
    if config.gateway.image is not None:
        gateway_image = pulumi.Output.from_input(rewrite_image(config.gateway.image, rules))
    else:
        assert gateway_repository is not None  # StackConfig.check requires a registry to push the build to
        build_args = dict(build.build_args)
        if build.base_image is not None:
            build_args["BASE_IMAGE"] = build.base_image
        cache = f"{gateway_repository}:{BUILD_CACHE_TAG}"
        image = Image(
            "gateway",
            {
                "repository": gateway_repository,
                "tag": build.tag,
                # Relative to the project, which Pulumi runs the program in.
                "context": build.context,
                **({"dockerfile": str(PurePosixPath(build.context, build.dockerfile))} if build.dockerfile else {}),
                "target": build.target,
                "build_args": build_args,
                **({"platforms": list(build.platforms)} if build.platforms else {}),
                **({"cache_from": [cache], "cache_to": [cache]} if build.cache else {}),
                "labels": {
                    "org.opencontainers.image.title": build.repository,
                    "org.opencontainers.image.version": build.tag,
                    **build.labels,
                },
                "pull": build.pull,
                **({"registry_login": login} if login else {}),
                **({"host_network_builder": f"model-stack-{pulumi.get_stack()}"} if _on_loopback(registry_host) else {}),
            },
            opts=pulumi.ResourceOptions(depends_on=push_after),
        )
        publish("gateway", image, image.ref, lambda: _gateway_provenance(build, build_args))
        gateway_image = image.ref

    pull_credentials = None
    if images.registry.pull_username and registry_host and secrets.registry_pull_password is not None:
        pull_credentials = PullCredentials(registry_host, images.registry.pull_username, secrets.registry_pull_password)
    return ImageHandle(rewrite_rules=rules, gateway_image=gateway_image, ready=ready, pull_credentials=pull_credentials)


def _gateway_provenance(build: GatewayBuildConfig, build_args: dict[str, str]) -> dict:
    """SLSA provenance v1 predicate of the gateway build: what the stack asked BuildKit for and the source it built
    from. No timestamps or invocation ids: the predicate is an input, and it must be the same on every run."""
    dockerfile = str(PurePosixPath(build.context, build.dockerfile or "Dockerfile"))
    external_parameters = {
        "context": build.context,
        "dockerfile": dockerfile,
        "target": build.target,
        # Config values, never secrets: the stack passes the build no secrets.
        "buildArgs": build_args,
        **({"platforms": list(build.platforms)} if build.platforms else {}),
    }
    dependencies = []
    commit = _project_commit([build.context, dockerfile])
    if commit is not None:
        dependencies.append({"name": "model-stack", "digest": {"gitCommit": commit}})
    if build.base_image is not None and ImageReference.parse(build.base_image).pinned:
        algorithm, _, value = build.base_image.partition("@")[2].partition(":")
        dependencies.append({"name": build.base_image, "digest": {algorithm: value}})
    return {
        "buildDefinition": {
            "buildType": PROVENANCE_BUILD_TYPE,
            "externalParameters": external_parameters,
            # Left out when there is none, as cosign writes it back (and SLSA v1 allows).
            **({"resolvedDependencies": dependencies} if dependencies else {}),
        },
        "runDetails": {
            "builder": {
                "id": PROVENANCE_BUILDER,
                "version": {package: metadata.version(package) for package in ("pulumi", "pulumi-docker-build")},
            },
        },
    }


def _project_commit(paths: list[str]) -> Optional[str]:
    """The git commit the project is checked out at, or None where no commit names what was built: outside a git
    checkout (an unpacked archive), or with changes under `paths` (the build's files) that are not committed."""
    def git(*arguments: str) -> Optional[str]:
        try:
            result = subprocess.run(["git", *arguments], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30)
        except OSError:
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "--verify", "HEAD")
    return commit if commit and git("status", "--porcelain", "--", *paths) == "" else None


def _ecr_registry(
    host: str, gateway_repository: Optional[str], build_cache: bool, mirror_repositories: list[str], signed: bool,
) -> EcrRegistry:
    """The ECR repositories of every push on `host`, and the push login (a fresh token each run). `signed`: every
    image pushed is signed, so its signature and attestation tags must stay rewritable."""
    from components.ecr_registry import EcrRegistry  # the AWS SDK is an optional dependency

    def under_host(repository: str) -> Optional[str]:
        registry, _, name = repository.partition("/")
        return name if registry == host else None

    repositories: dict[str, list[str]] = {}
    if gateway_repository is not None and under_host(gateway_repository):
        # The cache tag moves with every build; release tags never do.
        repositories[under_host(gateway_repository)] = [BUILD_CACHE_TAG] if build_cache else []
    for repository in mirror_repositories:
        name = under_host(repository)
        if name is not None:
            repositories.setdefault(name, [])
    return EcrRegistry(
        "ecr",
        {
            "host": host,
            "repositories": [
                {"name": name, **({"mutable_tags": tags} if tags else {})} for name, tags in repositories.items()
            ],
            "cosign_signatures": signed,
        },
    )


def _on_loopback(host: Optional[str]) -> bool:
    """A registry on this machine (kind's local one), which only a BuildKit on the host's network can reach."""
    if host is None:
        return False
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return name == "localhost" or name.startswith("127.") or name in ("[::1]", "::1")


def _mirror_names(sources: list[str]) -> dict[str, tuple[str, Optional[str]]]:
    """Source -> (resource name of its mirror, the name it had in a stack deployed before, if another): `mirror-`
    and the upstream repository (`mirror-docker-io-vllm-vllm-openai`), with the tag and a short digest added where
    several images of one repository are mirrored (a CPU and a CUDA build). An image that gains or loses such a
    neighbour keeps its resources under the other name, as an alias: the first of several takes over the plain
    name's, those of a stack that mirrored one of them. Two spellings of one image are mirrored once."""
    by_repository: dict[str, dict[str, str]] = {}
    for source in sources:
        repository, suffix = split_reference(source)
        tag, _, digest = suffix.lstrip(":").partition("@")
        distinct = f"{tag.lower()}-{digest.partition(':')[2][:12]}"
        by_repository.setdefault(canonical_repository(repository), {}).setdefault(distinct, source)
    names: dict[str, tuple[str, Optional[str]]] = {}
    for repository, images in by_repository.items():
        plain = _resource_name("mirror", repository)
        for index, (distinct, source) in enumerate(images.items()):
            own = _resource_name(plain, distinct)
            names[source] = (plain, own) if len(images) == 1 else (own, plain if index == 0 else None)
    return names


def _resource_name(kind: str, repository: str) -> str:
    """`mirror-docker-io-vllm-vllm-openai` for `docker.io/vllm/vllm-openai`."""
    return f"{kind}-" + re.sub(r"[^a-z0-9]+", "-", repository).strip("-")
