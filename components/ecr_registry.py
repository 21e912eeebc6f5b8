"""Amazon ECR as the registry a stack pushes to: the repositories it pushes into, and a push login fetched from
AWS on every run (an ECR password is a token that expires after 12 hours, so a stored one breaks a day later)."""

from __future__ import annotations

import re
from typing import NotRequired, Optional, TypedDict

import pulumi

try:
    import pulumi_aws as aws
except ImportError as error:  # the AWS SDK is an optional dependency (~270 MB)
    raise ImportError(
        "pushing to Amazon ECR needs the AWS provider SDK: install model-stack[eks] (pip install 'model-stack[eks]')"
    ) from error

from .image_rewrite import ecr_host

# The tags cosign stores an image's signatures and attestations under, beside the image, in the format the stack's
# cosign commands pin: it rewrites them to add one (a new key's signature, a second attestation), which an immutable
# tag refuses (sigstore/cosign#3024).
COSIGN_TAGS = ["sha256-*.sig", "sha256-*.att"]


class EcrRepositoryArgs(TypedDict):
    name: str
    """Repository name under the registry host (`model-stack/model-gateway`)."""

    mutable_tags: NotRequired[list[str]]
    """Tags that may be pushed again (a build cache's); every other tag is immutable."""


class EcrRegistryArgs(TypedDict):
    host: str
    """Registry host, `<account>.dkr.ecr.<region>.amazonaws.com`."""

    repositories: list[EcrRepositoryArgs]
    """Repositories the stack pushes to. They are retained when they leave the stack (images in them stay
    pullable); existing ones are adopted with `pulumi import`."""

    cosign_signatures: NotRequired[bool]
    """Images in the repositories are signed or attested with cosign: its `sha256-<digest>.sig` and `.att` tags
    stay mutable in every repository (default false)."""


class EcrRegistry(pulumi.ComponentResource):
    """ECR repositories with immutable tags and scan on push, and a fresh push login."""

    address: pulumi.Output[str]
    """Registry host."""

    username: pulumi.Output[str]
    """User of the push login (`AWS`)."""

    password: pulumi.Output[str]
    """Secret: a push token valid for 12 hours from this run."""

    def __init__(self, name: str, args: EcrRegistryArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:EcrRegistry", name, None, opts)
        host = ecr_host(args["host"])
        if host is None:
            raise ValueError(f"EcrRegistry {name}: {args['host']!r} is not an ECR registry host")
        cosign_tags = COSIGN_TAGS if args.get("cosign_signatures", False) else []
        for repository in args["repositories"]:
            mutable_tags = [*repository.get("mutable_tags", []), *cosign_tags]
            aws.ecr.Repository(
                f"{name}-{re.sub(r'[^a-z0-9]+', '-', repository['name']).strip('-')}",
                name=repository["name"],
                region=host.region,
                # A tag names one image for good: a deployed `:0.1.0` cannot be pushed over by another build.
                image_tag_mutability="IMMUTABLE_WITH_EXCLUSION" if mutable_tags else "IMMUTABLE",
                image_tag_mutability_exclusion_filters=[
                    aws.ecr.RepositoryImageTagMutabilityExclusionFilterArgs(filter=tag, filter_type="WILDCARD")
                    for tag in mutable_tags
                ] or None,
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
            )
        token = aws.ecr.get_authorization_token_output(
            registry_id=host.account, region=host.region, opts=pulumi.InvokeOutputOptions(parent=self)
        )
        self.address = pulumi.Output.from_input(args["host"])
        self.username = token.user_name
        self.password = pulumi.Output.secret(token.password)
        self.register_outputs({"address": self.address, "username": self.username, "password": self.password})
