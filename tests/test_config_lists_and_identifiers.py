"""Promise: lists that are sets (subnets, admitted namespaces, origins, trusted keys, mirrored images, platforms,
registries) refuse a repeated entry at its index; identifiers follow their grammar (EC2 instance types, stack
references, Docker hosts, users and log drivers, autoscaler metric names), so a stray space is a config error, not
a failed `pulumi up`; where a registry host or prefix is expected, a URL's scheme is refused as such."""

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import assert_rejected, evaluate

PUBLIC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

SUBNETS = ["subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002"]
KNATIVE_SIGNER = {"identity": "signer@knative-releases.iam.gserviceaccount.com", "issuer": "https://accounts.google.com"}
EXISTING = {"cluster.provider": "existing", "cluster.kind": None}
DIGEST = "sha256:" + "0" * 64

REFUSED = [
    # (stack, overrides, key, text, the value given)
    ("prod", {"cluster.eks.privateSubnetIds": [*SUBNETS, SUBNETS[0]]}, "cluster.eks.privateSubnetIds[2]",
     "repeats cluster.eks.privateSubnetIds[0]", SUBNETS[0]),
    ("prod", {"cluster.eks.publicSubnetIds": ["subnet-0a1b2c3d4e5f60101", "subnet-0a1b2c3d4e5f60101"]},
     "cluster.eks.publicSubnetIds[1]", "a subnet is listed once", "subnet-0a1b2c3d4e5f60101"),
    ("prod", {"cluster.eks.publicSubnetIds": [SUBNETS[1]]}, "cluster.eks.publicSubnetIds[0]", "privateSubnetIds too",
     SUBNETS[1]),
    # Instance types come from the table the scheduling check sizes nodes with: a stray space is no entry of it.
    ("prod", {"cluster.eks.gpuInstanceType": "g5.xlarge "}, "cluster.eks.gpuInstanceType", "must be 'g5.xlarge'",
     "g5.xlarge "),
    ("prod", {"cluster.eks.systemInstanceType": "m6i large"}, "cluster.eks.systemInstanceType",
     "must be 'm6i.large'", "m6i large"),
    ("dev", {**EXISTING, "cluster.existing.stackReference": "acme/platform/ prod"}, "cluster.existing.stackReference",
     "<org>/<project>/<stack>", "acme/platform/ prod"),
    ("dev", {"models.chat.allowedNamespaces": ["batch", "jobs", "batch"]}, "models.chat.allowedNamespaces[2]",
     "repeats models.chat.allowedNamespaces[0]: each namespace is admitted once", "batch"),
    ("dev", {"gateway.allowedNamespaces": ["ingress-nginx", "ingress-nginx"]}, "gateway.allowedNamespaces[1]",
     "admitted once", "ingress-nginx"),
    ("dev", {"gateway.corsAllowOrigins": ["https://chat.example.com", "https://chat.example.com"]},
     "gateway.corsAllowOrigins[1]", "each origin is allowed once", "https://chat.example.com"),
    ("dev", {"images.gatewayBuild.platforms": ["linux/amd64", "linux/amd64"]}, "images.gatewayBuild.platforms[1]",
     "built once", "linux/amd64"),
    ("dev", {"images.rewrite": {"docker.io": "registry.example.com/hub"}, "images.mirror": [f"nginx@{DIGEST}"] * 2},
     "images.mirror[1]", "each image is copied once", f"nginx@{DIGEST}"),
    ("dev", {"images.verification.publicKeys": [PUBLIC_KEY, PUBLIC_KEY]}, "images.verification.publicKeys[1]",
     "each key is trusted once", None),  # PEM text is never shown: it could be a private key pasted by mistake
    ("dev", {"knative.registriesSkippingTagResolving": ["registry.internal", "registry.internal"]},
     "knative.registriesSkippingTagResolving[1]", "each registry is listed once", "registry.internal"),
    ("local", {"docker.runner.logging.driver": "json file"}, "docker.runner.logging.driver", "no spaces", "json file"),
    ("local", {"docker.gateway.hostname": "my gateway"}, "docker.gateway.hostname", "RFC 1123", "my gateway"),
    ("local", {"docker.runner.user": "10001: 10001"}, "docker.runner.user", "user[:group]", "10001: 10001"),
    ("dev", {"models.chat.scaling.podsMetric": {"name": "", "averageValue": "4"}}, "models.chat.scaling.podsMetric.name",
     "not empty", ""),
    ("dev", {"models.chat.scaling.podsMetric": {"name": "..", "averageValue": "4"}}, "models.chat.scaling.podsMetric.name",
     "path segment name", ".."),
    ("dev", {"models.chat.scaling.podsMetric": {"name": "vllm/waiting", "averageValue": "4"}},
     "models.chat.scaling.podsMetric.name", "without '/' or '%'", "vllm/waiting"),
    # A URL where a registry host or prefix belongs.
    ("dev", {"knative.registriesSkippingTagResolving": ["https://registry.internal"]},
     "knative.registriesSkippingTagResolving[0]", "has a scheme; must be a registry host", "https://registry.internal"),
    ("dev", {"knative.registriesSkippingTagResolving": ["registry.internal/team"]},
     "knative.registriesSkippingTagResolving[0]", "has a path", "registry.internal/team"),
    ("dev", {"images.registry.server": "https://ghcr.io/acme"}, "images.registry.server", "has a scheme",
     "https://ghcr.io/acme"),
    ("dev", {"images.publisherSignatures": {"https://gcr.io/knative-releases": KNATIVE_SIGNER}},
     'images.publisherSignatures["https://gcr.io/knative-releases"]', "has a scheme", "https://gcr.io/knative-releases"),
]


@pytest.mark.parametrize("stack,overrides,key,text,given", REFUSED, ids=[f"{c[2]}={c[4]!r}"[:70] for c in REFUSED])
def test_repeats_stray_spaces_and_urls_are_refused_by_key(stack, overrides, key, text, given):
    assert_rejected(stack, overrides, key, text, given=given)


ACCEPTED = [
    ("prod", {"cluster.eks.publicSubnetIds": ["subnet-0a1b2c3d4e5f60101"], "cluster.eks.gpuInstanceType": "g5.12xlarge",
              "cluster.eks.systemInstanceType": "m7i.xlarge"}),
    ("dev", {"models.chat.allowedNamespaces": ["batch", "jobs"], "gateway.allowedNamespaces": ["ingress-nginx"],
             "gateway.corsAllowOrigins": ["https://chat.example.com", "http://chat.example.com"]}),
    ("dev", {"knative.registriesSkippingTagResolving": ["registry.internal:5000", "kind.local"],
             "images.registry.server": "ghcr.io/acme"}),
    ("local", {"docker.runner.logging.driver": "local", "docker.gateway.hostname": "gateway.local",
               "docker.runner.user": "model-runner:1000"}),
    ("prod", {"models.chat.scaling.signal": "cpu",
              "models.chat.scaling.podsMetric": {"name": "vllm:num_requests_waiting", "averageValue": "4"}}),
    # dev's chat model scales from zero, on requests only: its small one can scale on CPU.
    ("dev", {"models.small.scaling.signal": "cpu",
             "models.small.scaling.podsMetric": {"name": "requests.waiting-per_pod", "averageValue": "4"}}),
]


@pytest.mark.parametrize("stack,overrides", ACCEPTED, ids=[next(iter(c[1])) for c in ACCEPTED])
def test_distinct_entries_and_identifiers_in_their_grammar_are_accepted(stack, overrides):
    evaluate(stack, set=overrides)
