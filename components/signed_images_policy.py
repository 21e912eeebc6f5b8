"""Admission of only signed images: Sigstore's policy-controller from its pinned Helm chart, and one
ClusterImagePolicy that admits an image into the selected namespaces only when one of the given cosign public keys
verifies its signature, or it is signed keyless by one of the given identities.

policy-controller checks only namespaces labelled `policy.sigstore.dev/include: "true"` (`NAMESPACE_LABEL`): the
namespaces to guard carry that label, and no other namespace is affected. It resolves every tag to a digest at
admission and verifies that digest, so a tag moved to other bytes is rejected.
"""

from typing import NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

CHART = "policy-controller"
CHART_VERSION = "0.10.6"
CONTROLLER_VERSION = "v0.13.1"  # the policy-controller release CHART_VERSION installs (its appVersion)
CHART_REPOSITORY = "https://sigstore.github.io/helm-charts"
# The chart's own default image (its values.yaml), pinned by digest; it is passed through the registry mapping.
WEBHOOK_IMAGE = (
    "ghcr.io/sigstore/policy-controller/policy-controller"
    "@sha256:0bcd60beb93f4427c29cf3a669743caf58490e98ded4380c33c09f092734a6ab"
)
CONTROLLER_NAMESPACE = "cosign-system"
NAMESPACE_LABEL = {"policy.sigstore.dev/include": "true"}
POLICY_NAME = "signed-images"
# Sigstore's public Fulcio: policy-controller's default for a keyless authority, written out so that the stored
# policy is the one the stack sent.
FULCIO_URL = "https://fulcio.sigstore.dev"


class KeylessIdentityArgs(TypedDict):
    issuer: str
    """The OIDC issuer that vouched for the signer (`https://token.actions.githubusercontent.com`)."""

    subject: NotRequired[str]
    """The signer's identity exactly (its certificate's subject); this or `subject_reg_exp`."""

    subject_reg_exp: NotRequired[str]
    """A regular expression (Go RE2, unanchored) the signer's identity matches; this or `subject`."""


class SignedImagesPolicyArgs(TypedDict):
    public_keys: NotRequired[list[str]]
    """Cosign public keys (PEM); an image verified by any one of them is admitted."""

    keyless_identities: NotRequired[list[KeylessIdentityArgs]]
    """Keyless signers; an image signed by any one of them is admitted. Verified against Sigstore's public Fulcio
    and Rekor (policy-controller's default trust root, from Sigstore's TUF repository: the webhook needs egress)."""

    mode: str
    """`enforce` rejects an unsigned image; `warn` admits it and returns a warning."""

    webhook_image: NotRequired[str]
    """The controller's image, digest-pinned, as the cluster pulls it (a mirror of `WEBHOOK_IMAGE`)."""

    webhook_replicas: NotRequired[int]
    """Webhook pods, spread over nodes (and zones) where the scheduler can: 2 or more keep admission up while a node
    drains or is lost. Default 1."""


class SignedImagesPolicy(pulumi.ComponentResource):
    """policy-controller plus the policy: done once the webhook serves and the policy is stored."""

    def __init__(self, name: str, args: SignedImagesPolicyArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:SignedImagesPolicy", name, None, opts)
        public_keys = args.get("public_keys", [])
        identities = args.get("keyless_identities", [])
        if not public_keys and not identities:
            raise ValueError(f"SignedImagesPolicy {name}: at least one public key or keyless identity is needed")
        for identity in identities:
            if ("subject" in identity) == ("subject_reg_exp" in identity):
                raise ValueError(f"SignedImagesPolicy {name}: a keyless identity needs exactly one of subject and "
                                 f"subject_reg_exp (issuer {identity['issuer']})")
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace", metadata={"name": CONTROLLER_NAMESPACE}, opts=pulumi.ResourceOptions(parent=self))
        repository, _, digest = args.get("webhook_image", WEBHOOK_IMAGE).partition("@")
        replicas = args.get("webhook_replicas", 1)
        if replicas < 1:
            raise ValueError(f"SignedImagesPolicy {name}: webhook_replicas must be at least 1, not {replicas}")
        chart = k8s.helm.v4.Chart(
            f"{name}-controller",
            chart=CHART,
            version=CHART_VERSION,
            repository_opts=k8s.helm.v4.RepositoryOptsArgs(repo=CHART_REPOSITORY),
            namespace=CONTROLLER_NAMESPACE,
            values={
                "webhook": {
                    "image": {"repository": repository, "version": digest},
                    "replicaCount": replicas,
                    # The chart's default PDB (minAvailable 1) lets no single webhook pod be evicted, which blocks
                    # every node drain and node-group upgrade; one pod at a time may go (with one replica, admission
                    # waits for its replacement). The chart writes minAvailable only when it is truthy.
                    "podDisruptionBudget": {"enabled": True, "minAvailable": 0, "maxUnavailable": 1},
                    # Preferred, not required: a required spread would leave a rollout's surge pod pending on a
                    # node group at its minimum size. The chart's own default is the hostname term alone.
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": weight, "podAffinityTerm": {
                            # The chart's name label: its other labels carry the release name.
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": CHART}},
                            "topologyKey": key}}
                        for weight, key in ((100, "kubernetes.io/hostname"), (50, "topology.kubernetes.io/zone"))
                    ]}},
                    # Enforcing fails closed: a webhook that cannot answer must not let an unsigned image in, and
                    # only pod admission in the labelled namespaces waits for it (the rest of the cluster, its
                    # system pods included, is never sent to it). Auditing never blocks: it fails open.
                    "failurePolicy": "Fail" if args["mode"] == "enforce" else "Ignore",
                    # The label is the only selector: namespaces without it are never sent to the webhook.
                    "namespaceSelector": {"matchExpressions": [
                        {"key": key, "operator": "In", "values": [value]} for key, value in NAMESPACE_LABEL.items()
                    ]},
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace]),
        )
        k8s.apiextensions.CustomResource(
            f"{name}-policy",
            api_version="policy.sigstore.dev/v1beta1",
            kind="ClusterImagePolicy",
            metadata={"name": POLICY_NAME},
            spec={
                # Every image in a selected namespace, whatever its registry: an image no policy matches would
                # otherwise fall to the controller's no-match policy instead of these keys.
                "images": [{"glob": "**"}],
                # No `ctlog`: key signatures are verified with the keys alone, so images signed without a
                # transparency log entry (images.signing.tlogUpload false) are admitted; keyless ones against the
                # public Rekor's keys (policy-controller's default), with the log entry cosign stored beside them.
                "authorities": [
                    *({"name": f"key-{index}", "key": {"data": key}} for index, key in enumerate(public_keys)),
                    *([{"name": "keyless", "keyless": {
                        "url": FULCIO_URL, "identities": [_policy_identity(identity) for identity in identities],
                    }}] if identities else []),
                ],
                "mode": args["mode"],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[chart]),
        )
        self.register_outputs({})


def _policy_identity(identity: KeylessIdentityArgs) -> dict[str, str]:
    """`identity` as a ClusterImagePolicy's `keyless.identities` spells it (camelCase)."""
    spelled = {"issuer": "issuer", "subject": "subject", "subject_reg_exp": "subjectRegExp"}
    return {spelled[field]: value for field, value in identity.items()}
