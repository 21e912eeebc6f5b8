"""The project's program for a cluster without nodes (the lane's API server has no kubelet): a stack transform
changes two things, and nothing else:
- the awaits that need a running pod (a Deployment's rollout, a Service's endpoints) are skipped with
  `pulumi.com/skipAwait`; every other await stays;
- Knative's webhooks, which cannot run without a node, fail open (`failurePolicy: Ignore`) so the API server
  stores what they would admit (Knative's ConfigMaps, the release's Certificate and Image).
It stands in for the project copy's `__main__.py` (tests/engine/cli.py), then does what that does."""

import pulumi

from stacks import deploy

# Kinds whose await needs a running pod: rollouts need ready replicas, Services need endpoints.
POD_AWAITS = {
    "kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:DaemonSet", "kubernetes:apps/v1:StatefulSet",
    "kubernetes:core/v1:Service", "kubernetes:batch/v1:Job",
}
WEBHOOK_CONFIGURATIONS = {
    "kubernetes:admissionregistration.k8s.io/v1:MutatingWebhookConfiguration",
    "kubernetes:admissionregistration.k8s.io/v1:ValidatingWebhookConfiguration",
}


def without_nodes(args: pulumi.ResourceTransformArgs):
    if args.type_ in POD_AWAITS:
        def annotated(metadata: dict) -> dict:
            return {**metadata, "annotations": {**(metadata.get("annotations") or {}), "pulumi.com/skipAwait": "true"}}

        metadata = pulumi.Output.from_input(args.props.get("metadata") or {}).apply(annotated)
        return pulumi.ResourceTransformResult({**args.props, "metadata": metadata}, args.opts)
    if args.type_ in WEBHOOK_CONFIGURATIONS:
        webhooks = pulumi.Output.from_input(args.props["webhooks"]).apply(
            lambda hooks: [{**hook, "failurePolicy": "Ignore"} for hook in hooks])
        return pulumi.ResourceTransformResult({**args.props, "webhooks": webhooks}, args.opts)
    return None


pulumi.runtime.register_resource_transform(without_nodes)
deploy()
