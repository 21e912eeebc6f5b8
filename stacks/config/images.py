"""Images the stack builds, the registries it pushes to and pulls from, and upstream images it mirrors."""

import re
from pathlib import Path
from typing import Annotated, Iterator, Literal, Optional

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from components.image_rewrite import (
    canonical_prefix, canonical_repository, ecr_host, longest_matching_prefix, rewrite_image, split_reference,
)

from .base import (
    ImageRef, ImageReference, Problem, RegistryLocation, RegistryPrefix, Section, join_key, join_keys, matching,
    no_whitespace, only_on, unique,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

Tag = Annotated[str, matching(r"[\w][\w.-]{0,127}", "an image tag such as 1.4.0 (letters, digits, '_', '.', '-')")]
Username = Annotated[str, no_whitespace("a user name")]
Repository = Annotated[str, matching(r"[a-z0-9]+([._/-][a-z0-9]+)*", "a lowercase repository name such as model-gateway")]
# A keyless signer, as its Fulcio certificate names it: the OIDC issuer that vouched for it and its identity (the
# certificate's subject). Publishers' identities and those the admission policy accepts are spelled alike.
OidcIssuer = Annotated[str, matching(r"https://\S+", "an https:// OIDC issuer URL such as https://accounts.google.com")]
SigningIdentity = Annotated[str, no_whitespace("a signing identity (an email or a URL)")]


class RegistryConfig(Section):
    server: Optional[RegistryLocation] = None
    """Where the stack pushes what it builds, as host[/path] (`123456789012.dkr.ecr.us-east-1.amazonaws.com`,
    `ghcr.io/acme`). Unset: the cluster's local registry (kind: `localhost:5001`)."""

    push_username: Optional[Username] = None
    """User that pushes builds (CI's account); its password is the `registryPushPassword` secret. Unset for
    registries that take anonymous pushes or where the Docker credential helper already logs in, and for Amazon
    ECR, where the program gets a push token from AWS on every run (a stored one expires after 12 hours)."""

    pull_username: Optional[Username] = None
    """Read-only user the cluster pulls with; its password is the `registryPullPassword` secret and it becomes
    an `imagePullSecret`. Unset where nodes pull without credentials (kind's local registry, ECR via the node
    role)."""


class GatewayBuildConfig(Section):
    context: str = "app"
    """Build context, relative to the project. Only what `.dockerignore` admits is hashed and sent, so the
    image is rebuilt exactly when a file that reaches the build changes."""

    dockerfile: Optional[str] = None
    """Dockerfile path; unset uses the context's `Dockerfile`."""

    target: Literal["dev", "prod"] = "prod"
    """Stage of app/Dockerfile: `prod` (dependencies only, non-root, health check) or `dev` (adds test tools)."""

    base_image: Optional[ImageRef] = None
    """Python base image (the Dockerfile's `BASE_IMAGE`); unset keeps the Dockerfile's default. Production
    builds need it digest-pinned so a rebuild cannot pick up a different base."""

    build_args: dict[str, str] = {}
    """Other `ARG` values."""

    platforms: Annotated[list[Literal["linux/amd64", "linux/arm64"]], unique("each platform is built once"),
                         only_on("kubernetes")] = []
    """Platforms to build; unset builds for the machine running `pulumi up`."""

    cache: Annotated[bool, only_on("kubernetes")] = False
    """Import and export BuildKit cache at `<repository>:buildcache`, so CI runners without local cache reuse
    layers."""

    labels: dict[str, str] = {}
    """Extra image labels (the OCI source and version labels are set already)."""

    repository: Repository = "model-gateway"
    """Repository under `images.registry.server`."""

    tag: Tag = "dev"
    """Tag pushed with the build (deployments use its digest)."""

    pull: bool = False
    """Pull newer base images on every build."""


class PublisherSignature(Section):
    identity: SigningIdentity
    """The identity the publisher signs with keyless (the certificate subject, such as
    `signer@knative-releases.iam.gserviceaccount.com`)."""

    issuer: OidcIssuer
    """The OIDC issuer of `identity`."""


class AttestationsConfig(Section):
    sbom: bool = True
    """Attest an SPDX JSON SBOM of the gateway build and of every mirrored copy, which `syft` writes from the
    pushed image (`pulumi up` then needs `syft` on its PATH too)."""

    provenance: bool = True
    """Attest a SLSA provenance v1 of the gateway build: its context, Dockerfile, target, build args, platforms,
    base image and the project's git commit. Mirrored copies get none: their build is their publisher's."""


class SigningConfig(Section):
    enabled: bool = False
    """Sign the gateway build and every mirrored copy with cosign right after the push, by digest, with the key
    in the `cosignPrivateKey` secret (its password: `cosignPassword`) or keyless (`keyless`), and attest them
    (`attestations`); again for a new digest or key, never for anything else. `pulumi up` then needs cosign 2.6+
    or 3.x (older ones are refused before signing; cosign 3 is held to cosign 2's signature format, the one the
    admission policy reads for a key) and `syft` for SBOMs on its PATH, and write access to the registry, where
    signatures and attestations are stored beside the image (ECR repositories keep their tags for them mutable)."""

    keyless: bool = False
    """Sign keyless instead of with a key: cosign gets a short-lived Fulcio certificate for the OIDC identity of
    where `pulumi up` runs (in GitHub Actions the workflow's id-token, which needs `permissions: id-token: write`;
    elsewhere a token in `SIGSTORE_ID_TOKEN`) and records each signature in the public Rekor log, which keyless
    verification needs (the certificate expires minutes after signing). No `cosignPrivateKey` then (setting one
    is refused). Verify such images with `images.verification.keylessIdentities`."""

    tlog_upload: Optional[bool] = None
    """Also record each signature and attestation in the transparency log (Rekor; cosign's default is the public
    instance). Unset: on when `keyless` (which cannot be verified without it; false is refused), off with a key,
    since the public log would publish the name and digest of every private image and the admission policy
    verifies key signatures with the public keys alone."""

    attestations: AttestationsConfig = AttestationsConfig()
    """Signed in-toto attestations stored beside each signed image (`cosign verify-attestation` checks them), made
    only while `enabled` is true (asking for one with signing off is refused)."""

    def check(self, path: str) -> Iterator[Problem]:
        if self.keyless and self.tlog_upload is False:
            yield Problem(join_keys(path, "tlogUpload"), "must be true or unset with images.signing.keyless: true "
                          "(a keyless signature verifies only with its transparency log entry)", False)
        if self.enabled:
            return
        if self.keyless:
            yield Problem(join_keys(path, "keyless"), "needs images.signing.enabled: true; enable signing, or set "
                                                      "it to false or remove it", True)
        for name in self.attestations.model_fields_set:
            if getattr(self.attestations, name):
                key = join_keys(path, f"attestations.{AttestationsConfig.model_fields[name].alias}")
                yield Problem(key, "needs images.signing.enabled: true (attestations are signed like the image); "
                                   "enable signing, or set it to false or remove it", True)


class KeylessIdentity(Section):
    """A keyless signer the admission policy accepts, as Sigstore's policy-controller spells it in a
    ClusterImagePolicy's `keyless.identities`: the issuer and exactly one of `subject` and `subjectRegExp`."""

    issuer: OidcIssuer
    """The OIDC issuer that vouched for the signer (`https://token.actions.githubusercontent.com` for GitHub
    Actions)."""

    subject: Optional[SigningIdentity] = None
    """The signer's identity exactly, as its certificate names it; for a GitHub Actions workflow
    `https://github.com/<owner>/<repo>/.github/workflows/<file>@refs/heads/main`."""

    subject_reg_exp: Optional[str] = None
    """A regular expression (Go's RE2 syntax) the signer's identity must match instead, such as
    `^https://github.com/acme/model-stack/.github/workflows/pulumi.yml@refs/heads/.*$`. Unanchored, as Go matches
    it: anchor it with `^` and `$`, or any identity containing a match is admitted."""

    def check(self, path: str) -> Iterator[Problem]:
        # The CRD's schema takes both or neither; policy-controller's own validation refuses them at `pulumi up`.
        if (self.subject is None) == (self.subject_reg_exp is None):
            given = "both" if self.subject is not None else "neither"
            yield Problem(path, "needs exactly one of subject and subjectRegExp", given)
        if self.subject_reg_exp is not None:
            try:
                re.compile(self.subject_reg_exp)
            except re.error as error:
                yield Problem(join_key(path, "subjectRegExp"), f"is not a regular expression: {error}",
                              self.subject_reg_exp)


class VerificationConfig(Section):
    enabled: bool = False
    """Install Sigstore's policy-controller and admit into the model namespace only images signed by one of
    `publicKeys` or `keylessIdentities` (every container, Knative's queue-proxy sidecar included). Other
    namespaces are not checked."""

    mode: Literal["enforce", "audit"] = "enforce"
    """`enforce` rejects a pod whose image no key or keyless identity verifies, and the webhook fails closed; the
    config then refuses, by the key that chooses it, every deployed image the policy would deny (all of them with
    signing off; any that no rewrite rule copies into the registry pinned by digest, so the stack never signs it,
    unless its publisher's signer is one of `keylessIdentities`). `audit` admits it with a warning and never blocks
    (the step before enforcing, to see what would be rejected). Production runs two webhook replicas spread over
    nodes, with a disruption budget that lets nodes drain."""

    public_keys: Annotated[list[str], unique("each key is trusted once", shown=False)] = []
    """Cosign public keys (PEM), each inline or as a file path relative to the project; an image signed by any
    one of them is admitted. Rotate by adding the new key, setting `cosignPrivateKey` to it (the next `pulumi up`
    signs every pushed image with it), then removing the old one."""

    keyless_identities: Annotated[list[KeylessIdentity], unique("each identity is trusted once")] = []
    """Keyless signers (`images.signing.keyless` and publishers that sign keyless); an image signed by any one of
    them is admitted, beside those `publicKeys` verify. They are verified against Sigstore's public Fulcio and
    Rekor, policy-controller's default trust root, which the webhook reads from Sigstore's TUF repository
    (https://tuf-repo-cdn.sigstore.dev): the cluster needs egress to it."""

    def keys(self) -> list[str]:
        """The PEM text of every public key, files read."""
        return [text for text in map(_key_text, self.public_keys) if text is not None]

    def check(self, path: str) -> Iterator[Problem]:
        if self.enabled and not self.public_keys and not self.keyless_identities:
            yield Problem(join_keys(path, "enabled"), "needs at least one of images.verification.publicKeys and "
                                                      "images.verification.keylessIdentities (neither is set)", True)
        for index, key in enumerate(self.public_keys):
            where = join_key(join_key(path, "publicKeys"), index)
            text = _key_text(key)
            if text is None:
                yield Problem(where, "is neither a PEM public key nor a file (relative to the project)", key)
                continue
            try:
                load_pem_public_key(text.encode())
            except ValueError:
                # Only the PEM header of inline text: a private key pasted here by mistake must not reach the log.
                shown = text.strip().splitlines()[0] if text is key else key
                yield Problem(where, "is not a PEM public key (`cosign generate-key-pair` writes one to cosign.pub)", shown)


def _key_text(key: str) -> Optional[str]:
    """`key` itself when it is PEM text, else the contents of the project file it names; None for neither."""
    if key.lstrip().startswith("-----BEGIN"):
        return key
    path = PROJECT_ROOT / key
    return path.read_text() if path.is_file() else None


class ImagesConfig(Section):
    """Images the stack builds, the registries it pushes to and pulls from, and upstream images it mirrors."""

    registry: Annotated[RegistryConfig, only_on("kubernetes")] = RegistryConfig()
    """The registry for the stack's builds and mirrors."""

    gateway_build: GatewayBuildConfig = GatewayBuildConfig()
    """How the gateway image is built (when `gateway.image` does not name a prebuilt one)."""

    rewrite: Annotated[dict[RegistryPrefix, RegistryPrefix], only_on("kubernetes")] = {}
    """Registry mapping applied to every image the stack deploys, third-party manifests included: upstream
    prefix -> mirror prefix (`docker.io: <registry>/mirror/docker.io`). The longest matching prefix wins; a prefix
    without a host is on Docker Hub. Tags and digests are kept. Every digest-pinned image the stack deploys that
    a rule maps elsewhere (the engine, Knative, Kourier) is copied there on `pulumi up`."""

    mirror: Annotated[list[ImageRef], unique("each image is copied once"), only_on("kubernetes")] = []
    """More upstream images (digest-pinned) to copy to where `rewrite` maps them, for workloads outside this
    stack; the stack's own images need no entry here."""

    publisher_signatures: Annotated[dict[RegistryPrefix, PublisherSignature], only_on("kubernetes")] = {}
    """Upstream prefix (as in `rewrite`) -> the keyless identity its publisher signs with. Every mirrored image
    under the prefix (longest prefix wins) is verified with `cosign verify` against Sigstore's public trust root
    before it is copied; an image that fails is not copied and `pulumi up` fails."""

    signing: SigningConfig = SigningConfig()
    """Cosign signatures of the images the stack pushes."""

    verification: VerificationConfig = VerificationConfig()
    """Admission of only signed images into the model namespace (Kubernetes runtime)."""

    def check(self, path: str) -> Iterator[Problem]:
        build = self.gateway_build
        context = PROJECT_ROOT / build.context
        if not context.is_dir():
            yield Problem(join_keys(path, "gatewayBuild.context"), "no such directory (relative to the project)", build.context)
        elif build.dockerfile is not None and not (context / build.dockerfile).is_file():
            yield Problem(join_keys(path, "gatewayBuild.dockerfile"), "no such file (relative to the build context)",
                          build.dockerfile)
        registry = self.registry
        if registry.push_username and not registry.server:
            yield Problem(join_keys(path, "registry.pushUsername"), "needs images.registry.server to log in to")
        if registry.push_username and registry.server and ecr_host(registry.server.partition("/")[0]):
            yield Problem(
                join_keys(path, "registry.pushUsername"),
                "is not used with Amazon ECR: the program gets a push token from AWS on every run (unset it, and "
                "the registryPushPassword secret)",
                registry.push_username,
            )
        if registry.pull_username and not registry.server:
            yield Problem(join_keys(path, "registry.pullUsername"), "needs images.registry.server to log in to")
        first_of: dict[str, str] = {}
        for prefix, target in self.rewrite.items():
            key = join_key(join_key(path, "rewrite"), prefix)
            canonical = canonical_prefix(prefix)
            if canonical == canonical_prefix(target):
                yield Problem(key, "maps a prefix to itself", target)
            if canonical in first_of:
                yield Problem(key, f"is the same prefix as {join_key(join_key(path, 'rewrite'), first_of[canonical])} "
                                   f"(both are {canonical}), so one of them can never apply; keep one")
            first_of.setdefault(canonical, prefix)
        for index, source in enumerate(self.mirror):
            key = join_key(join_key(path, "mirror"), index)
            if not ImageReference.parse(source).pinned:
                yield Problem(key, "mirrored images must be pinned by digest (name[:tag]@sha256:<digest>)", source)
            elif rewrite_image(source, self.rewrite) == source:
                yield Problem(key, "no images.rewrite rule maps it into the private registry", source)

    def unused_rule_problems(self, path: str, deployed: list[str]) -> Iterator[Problem]:
        """`rewrite` rules that map none of the `deployed` images nor `mirror`."""
        images = [*deployed, *self.mirror]
        applied = {longest_matching_prefix(image, self.rewrite) for image in images}
        repositories = ", ".join(sorted({canonical_repository(split_reference(image)[0]) for image in images}))
        for prefix in self.rewrite:
            if prefix not in applied:
                yield Problem(join_key(join_key(path, "rewrite"), prefix),
                              f"applies to no image this stack deploys or mirrors (a longer prefix wins where several "
                              f"match); it deploys {repositories}")
