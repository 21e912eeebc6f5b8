"""Image references as Docker resolves them, and the registry mapping every deployed image goes through.

A rule maps a repository prefix to another (`docker.io/vllm` -> `registry.internal/mirror/vllm`); the longest
matching prefix wins, and tag and digest are kept, so a mirrored copy is pinned to exactly the upstream image.
"""

import re
from typing import Iterable, Mapping, NamedTuple, Optional

# The grammar of github.com/distribution/reference (what Docker, containerd and Kubernetes accept): path
# components, registry domains (host and optional port) and tags.
REFERENCE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
REFERENCE_DOMAIN = (r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
REFERENCE_TAG = r"[\w][\w.-]{0,127}"

DEFAULT_REGISTRY = "docker.io"
OFFICIAL_NAMESPACE = "library"
_ECR_HOST = re.compile(r"(?P<account>[0-9]{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?")


class EcrHost(NamedTuple):
    account: str
    region: str


def ecr_host(host: str) -> Optional[EcrHost]:
    """Account and region of an Amazon ECR registry host (`123456789012.dkr.ecr.us-east-1.amazonaws.com`); None
    for any other registry."""
    match = _ECR_HOST.fullmatch(host)
    return EcrHost(match["account"], match["region"]) if match else None


def split_reference(reference: str) -> tuple[str, str]:
    """(repository, suffix) where suffix is `:tag`, `@digest`, `:tag@digest` or empty."""
    name, at, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon:]
    else:
        tag = ""
    return name, tag + (at + digest if at else "")


def is_registry_host(component: str) -> bool:
    """Whether the first component of a name is a registry host (distribution/reference's rule)."""
    return "." in component or ":" in component or component == "localhost"


# Names Docker Hub goes by besides docker.io: reference's legacy default domain and its registry API host.
_HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io"})


def _on_hub(host: str) -> str:
    return DEFAULT_REGISTRY if host in _HUB_ALIASES else host


def canonical_repository(repository: str) -> str:
    """The fully qualified repository Docker pulls for a name: `nginx` and `index.docker.io/nginx` ->
    `docker.io/library/nginx`, `vllm/vllm-openai` -> `docker.io/vllm/vllm-openai`; other hosts stay as they are."""
    first, _, rest = repository.partition("/")
    host, path = (_on_hub(first), rest) if rest and is_registry_host(first) else (DEFAULT_REGISTRY, repository)
    if host == DEFAULT_REGISTRY and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    return f"{host}/{path}"


def canonical_prefix(prefix: str) -> str:
    """A rule's prefix, fully qualified: a registry host (`ghcr.io`; Docker Hub's aliases as `docker.io`), or a
    repository path where a path without a host is on Docker Hub (`vllm` -> `docker.io/vllm`)."""
    first, slash, rest = prefix.strip("/").partition("/")
    return _on_hub(first) + slash + rest if is_registry_host(first) else f"{DEFAULT_REGISTRY}/{prefix.strip('/')}"


def longest_matching_prefix(reference: str, prefixes: Iterable[str]) -> Optional[str]:
    """The longest of `prefixes` (as written) that `reference` is under, comparing whole path components of the
    fully qualified names; None when none matches."""
    canonical = canonical_repository(split_reference(reference)[0])
    matching = [prefix for prefix in prefixes
                if canonical == canonical_prefix(prefix) or canonical.startswith(canonical_prefix(prefix) + "/")]
    return max(matching, key=lambda prefix: len(canonical_prefix(prefix)), default=None)


def rewrite_image(reference: str, rules: Mapping[str, str]) -> str:
    """`reference` as the cluster pulls it: through the longest matching rule, or unchanged when none matches."""
    prefix = longest_matching_prefix(reference, rules)
    if prefix is None:
        return reference
    repository, suffix = split_reference(reference)
    return rules[prefix].rstrip("/") + canonical_repository(repository)[len(canonical_prefix(prefix)):] + suffix
