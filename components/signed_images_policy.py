"""Admission of only signed images: Sigstore's policy-controller from its pinned Helm chart, and one
ClusterImagePolicy that admits an image into the selected namespaces only when one of the given cosign public keys
verifies its signature.

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


class SignedImagesPolicyArgs(TypedDict):
    public_keys: list[str]
    """Cosign public keys (PEM); an image verified by any one of them is admitted."""

    mode: str
    """`enforce` rejects an unsigned image; `warn` admits it and returns a warning."""

    webhook_image: NotRequired[str]
    """The controller's image, digest-pinned, as the cluster pulls it (a mirror of `WEBHOOK_IMAGE`)."""


class SignedImagesPolicy(pulumi.ComponentResource):
    """policy-controller plus the policy: done once the webhook serves and the policy is stored."""

    def __init__(self, name: str, args: SignedImagesPolicyArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:SignedImagesPolicy", name, None, opts)
        if not args["public_keys"]:
            raise ValueError(f"SignedImagesPolicy {name}: at least one public key is needed")
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace", metadata={"name": CONTROLLER_NAMESPACE}, opts=pulumi.ResourceOptions(parent=self))
        repository, _, digest = args.get("webhook_image", WEBHOOK_IMAGE).partition("@")
        chart = k8s.helm.v4.Chart(
            f"{name}-controller",
            chart=CHART,
            version=CHART_VERSION,
            repository_opts=k8s.helm.v4.RepositoryOptsArgs(repo=CHART_REPOSITORY),
            namespace=CONTROLLER_NAMESPACE,
            values={
                "webhook": {
                    "image": {"repository": repository, "version": digest},
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
                # No `ctlog`: the signatures are verified with the keys alone, so images signed without a
                # transparency log entry (images.signing.tlogUpload false) are admitted.
                "authorities": [{"name": f"key-{index}", "key": {"data": key}}
                                for index, key in enumerate(args["public_keys"])],
                "mode": args["mode"],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[chart]),
        )
        self.register_outputs({})
