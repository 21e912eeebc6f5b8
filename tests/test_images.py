"""Image builds, pushes, pull credentials, mirrors and the registry mapping every deployed image goes through."""

from __future__ import annotations

import base64
import json
import re

import pytest

from components.image_rewrite import canonical_repository, rewrite_image
from harness import (
    FAKE_SECRETS, ROOT, Evaluation, Secret, assert_rejected, diffed_inputs, evaluate, evaluate_failure, stack_config, unwrap,
)

DIGEST = "sha256:" + "a" * 64
MIRROR = "registry.example.com/mirror"
# Where the Knative release in ../shared takes its images from.
KNATIVE_RELEASES = "opencsg-registry.cn-beijing.cr.aliyuncs.com/opencsghq/knative-releases"


# --- the registry mapping --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,canonical", [
    ("nginx", "docker.io/library/nginx"),
    ("vllm/vllm-openai", "docker.io/vllm/vllm-openai"),
    ("ghcr.io/ggml-org/llama.cpp", "ghcr.io/ggml-org/llama.cpp"),
    ("localhost:5001/model-gateway", "localhost:5001/model-gateway"),
])
def test_names_are_qualified_the_way_docker_resolves_them(name, canonical):
    assert canonical_repository(name) == canonical


RULES = {"docker.io": f"{MIRROR}/dockerhub", "vllm": f"{MIRROR}/vllm", "ghcr.io/ggml-org/": f"{MIRROR}/ggml/"}


@pytest.mark.parametrize("reference,pulled", [
    ("nginx:1.27", f"{MIRROR}/dockerhub/library/nginx:1.27"),
    # The longest prefix wins; tag and digest survive.
    (f"vllm/vllm-openai:v0.11.0@{DIGEST}", f"{MIRROR}/vllm/vllm-openai:v0.11.0@{DIGEST}"),
    # A prefix matches whole path components only.
    ("vllm-project/router:1", f"{MIRROR}/dockerhub/vllm-project/router:1"),
    ("ghcr.io/ggml-org/llama.cpp:server", f"{MIRROR}/ggml/llama.cpp:server"),
    ("quay.io/prometheus/prometheus:v3.0.0", "quay.io/prometheus/prometheus:v3.0.0"),
    ("localhost:5001/model-gateway:dev", "localhost:5001/model-gateway:dev"),
])
def test_rewrite_uses_the_longest_matching_prefix_and_keeps_tag_and_digest(reference, pulled):
    assert rewrite_image(reference, RULES) == pulled


# --- builds ----------------------------------------------------------------------------------------------------

def container_images(evaluation: Evaluation) -> dict[str, str]:
    """Every container image the stack applies to the cluster, keyed by object and container."""
    found = {}
    for _, obj in evaluation.kubernetes_objects():
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec", {}) if obj["kind"] != "Pod" else spec
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            found[f"{obj['kind']}/{obj['metadata'].get('name')}/{container['name']}"] = container["image"]
    return found


def deployed_images(evaluation: Evaluation) -> dict[str, str]:
    """Container images plus the two Knative deploys on its own: the queue proxy and its pre-pull."""
    images = container_images(evaluation)
    for _, obj in evaluation.kubernetes_objects():
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "config-deployment":
            images["queue-proxy sidecar"] = obj["data"]["queue-sidecar-image"]
        if obj["kind"] == "Image":
            images[f"Image/{obj['metadata']['name']}"] = obj["spec"]["image"]
    return images


def test_dev_builds_the_gateway_into_the_kind_registry_and_deploys_its_digest():
    evaluation = evaluate("dev")
    build = evaluation.one("docker-build:index:Image")
    assert build.inputs["tags"] == ["localhost:5001/model-gateway:dev"]
    assert build.inputs["push"] is True and build.inputs["buildOnPreview"] is False
    assert build.inputs["target"] == "prod"
    assert "registries" not in build.inputs  # the local registry takes anonymous pushes
    image = container_images(evaluation)["Service/gateway/gateway"]
    assert re.fullmatch(r"localhost:5001/model-gateway:dev@sha256:[0-9a-f]{64}", image)


def test_the_dev_build_pushes_from_a_builder_on_the_host_network():
    """docker-build's default BuildKit runs in a container on a bridge network, where localhost:5001 is that
    container: the push to kind's registry only works from a builder on the host's network."""
    evaluation = evaluate("dev")
    build = evaluation.one("docker-build:index:Image")
    builder = evaluation.one("command:local:Command", "gateway-builder")
    name = build.inputs["builder"]["name"]
    assert name == "model-stack-dev" and builder.urn in build.dependencies
    assert f"docker buildx create --name {name} --driver docker-container --driver-opt network=host" in builder.inputs["create"]
    assert builder.inputs["create"].startswith(f"docker buildx inspect {name} ")  # an existing one is reused
    assert f"docker buildx rm {name}" in builder.inputs["delete"]
    # A remote registry is reached from docker-build's own builder.
    remote = evaluate("dev", set={"images.registry.server": "ghcr.io/acme"}).one("docker-build:index:Image")
    assert "builder" not in remote.inputs


PRIVATE = {
    "images.registry.server": "ghcr.io/acme",
    "images.registry.pushUsername": "ci-bot",
    "images.registry.pullUsername": "cluster-reader",
    "images.gatewayBuild.platforms": ["linux/amd64", "linux/arm64"],
    "images.gatewayBuild.cache": True,
    "images.gatewayBuild.baseImage": f"python:3.12-slim-bookworm@{DIGEST}",
    "images.gatewayBuild.tag": "1.4.0",
}


@pytest.mark.parametrize("stack", ["dev", "local"])
def test_build_paths_reach_the_provider_relative_to_the_project(stack, monkeypatch):
    # The provider compares these paths as strings: an absolute path would differ on every other checkout.
    monkeypatch.chdir(ROOT)
    build = evaluate(stack, set={"images.gatewayBuild.dockerfile": "Dockerfile"}).one("docker-build:index:Image")
    assert build.inputs["context"] == {"location": "app"}
    assert build.inputs["dockerfile"] == {"location": "app/Dockerfile"}


def test_a_private_registry_gets_push_credentials_cache_platforms_and_a_pinned_base():
    build = evaluate("dev", set=PRIVATE).one("docker-build:index:Image")
    (registry,) = build.inputs["registries"]
    assert registry["address"] == "ghcr.io" and registry["username"] == "ci-bot"
    assert isinstance(registry["password"], Secret)
    assert build.inputs["tags"] == ["ghcr.io/acme/model-gateway:1.4.0"]
    assert build.inputs["platforms"] == ["linux/amd64", "linux/arm64"]
    assert build.inputs["cacheFrom"] == [{"registry": {"ref": "ghcr.io/acme/model-gateway:buildcache"}}]
    # An OCI image manifest: the only cache export ECR accepts, and one every OCI registry takes.
    assert build.inputs["cacheTo"] == [{"registry": {
        "ref": "ghcr.io/acme/model-gateway:buildcache", "mode": "max", "imageManifest": True, "ociMediaTypes": True,
    }}]
    assert build.inputs["buildArgs"] == {"BASE_IMAGE": f"python:3.12-slim-bookworm@{DIGEST}"}
    assert build.inputs["labels"]["org.opencontainers.image.version"] == "1.4.0"


def test_pull_credentials_become_a_secret_every_workload_pulls_with():
    evaluation = evaluate("dev", set=PRIVATE)
    secret = evaluation.one("kubernetes:core/v1:Secret", "models-registry-pull")
    assert secret.inputs["type"] == "kubernetes.io/dockerconfigjson"
    assert isinstance(secret.inputs["stringData"], Secret) or isinstance(secret.inputs["stringData"][".dockerconfigjson"], Secret)
    config = json.loads(unwrap(secret.inputs["stringData"])[".dockerconfigjson"])
    entry = config["auths"]["ghcr.io"]
    assert (entry["username"], entry["password"]) == ("cluster-reader", FAKE_SECRETS["registryPullPassword"])
    assert base64.b64decode(entry["auth"]).decode() == f"cluster-reader:{FAKE_SECRETS['registryPullPassword']}"
    workloads = [obj for _, obj in evaluation.kubernetes_objects()
                 if obj["metadata"].get("namespace") == "models" and "template" in obj.get("spec", {})]
    assert {obj["kind"] for obj in workloads} == {"Deployment", "Service"}
    for obj in workloads:
        assert obj["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-pull"}]


def test_no_deployed_image_escapes_the_registry_mapping():
    rules = {"docker.io": f"{MIRROR}/dockerhub", KNATIVE_RELEASES: f"{MIRROR}/knative", "quay.io": f"{MIRROR}/quay",
             "registry.k8s.io": f"{MIRROR}/k8s", "ghcr.io": f"{MIRROR}/ghcr"}
    images = deployed_images(evaluate("dev", set={"images.rewrite": rules}))
    assert len(images) > 10 and all(
        image.startswith((f"{MIRROR}/", "localhost:5001/")) for image in images.values()
    ), images


def test_prod_pulls_everything_from_its_registry():
    registry = stack_config("prod")["images"]["registry"]["server"].partition("/")[0]
    images = container_images(evaluate("prod"))
    assert images and all(image.startswith(registry + "/") for image in images.values()), images


# --- mirrors ---------------------------------------------------------------------------------------------------

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def test_deployed_images_the_mapping_sends_to_the_registry_are_copied_there_by_digest():
    evaluation = evaluate("prod")
    copies = {copy.inputs["sources"][0]: copy for copy in evaluation.of_type("docker-build:index:Index")}
    # Each model's engine image is mirrored because the mapping sends it to ECR.
    models = stack_config("prod")["models"]
    assert set(copies) == {model["image"] for model in models.values()}
    for name, mirrored in (("chat", f"{ECR}/mirror/vllm/vllm-openai:v0.11.0"),
                           ("embed", f"{ECR}/mirror/ghcr.io/ggml-org/llama.cpp:server-b9935")):
        source = models[name]["image"]
        copy = copies[source]
        assert copy.inputs["sources"] == [source] and copy.inputs["push"] is True
        assert copy.inputs["tag"] == mirrored
        runner_image = container_images(evaluation)[f"Deployment/model-runner-{name}/engine"]
        assert runner_image == copy.inputs["tag"] + "@" + source.split("@")[1]


def test_images_mapped_to_the_kind_registry_are_copied_by_buildx_which_reaches_it_over_plain_http():
    # docker-build's Index reads its copy back over HTTPS only, which kind's local registry does not speak.
    engine = f"ghcr.io/ggml-org/llama.cpp:server-b9935@{DIGEST}"
    evaluation = evaluate("dev", set={
        "models.small.engine": "llama.cpp", "models.small.image": engine,
        "models.small.model": "bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf",
        "images.rewrite": {"ghcr.io": "localhost:5001/mirror/ghcr.io"}})
    assert evaluation.of_type("docker-build:index:Index") == []
    [copy] = [c for c in evaluation.of_type("command:local:Command") if c.name.startswith("mirror-")]
    target = "localhost:5001/mirror/ghcr.io/ggml-org/llama.cpp:server-b9935"
    assert copy.inputs["environment"] == {"SOURCE": engine, "TARGET": target}
    assert "docker buildx imagetools create" in copy.inputs["create"]
    assert container_images(evaluation)["Deployment/model-runner-small/engine"] == f"{target}@{DIGEST}"


def test_ecr_pushes_with_a_token_from_aws_that_changes_nothing_when_it_changes():
    # AWS hands out a new 12-hour token on every run (the mocks do too); no stored secret is involved.
    first, second = evaluate("prod"), evaluate("prod")
    pushes = ("docker-build:index:Index", "docker-build:index:Image")
    pairs = [(before, second.one(kind, before.name)) for kind in pushes for before in first.of_type(kind)]
    for before, after in pairs:
        logins = before.inputs.get("registries") or [before.inputs["registry"]]
        for login in logins:
            assert (login["address"], login["username"]) == (ECR, "AWS")
            assert isinstance(login["password"], Secret) and login["password"].value.startswith("ecr-token-123456789012-")
            assert FAKE_SECRETS["registryPushPassword"] not in json.dumps(unwrap(before.inputs))
        # The token is the only input that differs between runs, and it sits in the one field docker-build's
        # Image and Index diffs skip (registry passwords): a new token neither rebuilds, nor copies again, nor
        # shows up in a preview or the drift check.
        assert unwrap(before.inputs) != unwrap(after.inputs)
        assert diffed_inputs(before) == diffed_inputs(after)
    assert not first.of_type("command:local:Command")  # nothing shell-based holds credentials as inputs


def test_ecr_repositories_exist_before_anything_is_pushed_and_outlive_the_stack():
    evaluation = evaluate("prod")
    repositories = {r.inputs["name"]: r for r in evaluation.of_type("aws:ecr/repository:Repository")}
    assert set(repositories) == {"model-stack/model-gateway", "mirror/vllm/vllm-openai", "mirror/ghcr.io/ggml-org/llama.cpp"}
    for repository in repositories.values():
        assert repository.inputs["imageScanningConfiguration"] == {"scanOnPush": True}
        assert repository.inputs["region"] == "us-east-1"
        assert repository.retain_on_delete  # pushed images stay pullable after the stack goes
    assert repositories["mirror/vllm/vllm-openai"].inputs["imageTagMutability"] == "IMMUTABLE"
    # Release tags are immutable; only the build cache (gatewayBuild.cache) is pushed over on every build.
    gateway = repositories["model-stack/model-gateway"].inputs
    assert gateway["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert gateway["imageTagMutabilityExclusionFilters"] == [{"filter": "buildcache", "filterType": "WILDCARD"}]
    for push in [*evaluation.of_type("model-stack:index:ImageMirror"), evaluation.one("model-stack:index:Image")]:
        assert {r.urn for r in repositories.values()} <= set(push.dependencies)


def test_without_a_build_cache_every_gateway_tag_is_immutable():
    evaluation = evaluate("prod", set={"images.gatewayBuild.cache": False})
    repositories = {r.inputs["name"]: r.inputs for r in evaluation.of_type("aws:ecr/repository:Repository")}
    assert repositories["model-stack/model-gateway"]["imageTagMutability"] == "IMMUTABLE"


COSIGN_TAG_FILTERS = [{"filter": "sha256-*.sig", "filterType": "WILDCARD"},
                      {"filter": "sha256-*.att", "filterType": "WILDCARD"}]


def test_signed_images_keep_cosigns_signature_and_attestation_tags_rewritable_in_every_repository():
    """cosign 2 rewrites `sha256-<digest>.sig` to add a signature and `.att` to add an attestation (the second one
    of every image), which an immutable ECR tag refuses (sigstore/cosign#3024)."""
    evaluation = evaluate("prod", set={"images.signing.enabled": True}, secrets={
        **FAKE_SECRETS, "cosignPrivateKey": "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nk\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"})
    repositories = {r.inputs["name"]: r.inputs for r in evaluation.of_type("aws:ecr/repository:Repository")}
    signed = {image.rpartition("@")[0].rpartition(":")[0].removeprefix(f"{ECR}/")
              for command in evaluation.of_type("command:local:Command")
              for image in [command.inputs["environment"]["IMAGE"]]}
    assert signed and signed <= set(repositories)
    for name, repository in repositories.items():
        assert repository["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION", name
        filters = repository["imageTagMutabilityExclusionFilters"]
        assert filters[-2:] == COSIGN_TAG_FILTERS, name
    assert repositories["model-stack/model-gateway"]["imageTagMutabilityExclusionFilters"][0]["filter"] == "buildcache"
    # ECR's wildcard matches cosign's tags (`*` is any run of characters), and no release tag.
    digest = "sha256-" + "0" * 64
    patterns = [re.compile(re.escape(f["filter"]).replace(r"\*", ".*")) for f in COSIGN_TAG_FILTERS]
    assert all(any(p.fullmatch(tag) for p in patterns) for tag in (f"{digest}.sig", f"{digest}.att"))
    assert not any(p.fullmatch(tag) for p in patterns for tag in ("0.1.0", "v0.11.0", "buildcache"))


# Two builds of one repository: the CPU llama.cpp server prod's embedding model runs, and another one.
LLAMA_CPP = "ghcr.io/ggml-org/llama.cpp"
OTHER_LLAMA_CPP = f"{LLAMA_CPP}:server-b9936@sha256:" + "b" * 64


def mirror_resources(evaluation: Evaluation) -> dict[str, list]:
    """Each mirror's resources (the copy, its signature and attestation components), by upstream source."""
    by_source: dict[str, list] = {}
    mirrors = {m.urn: m for m in evaluation.of_type("model-stack:index:ImageMirror")}
    for copy in evaluation.of_type("docker-build:index:Index"):
        mirror = mirrors[copy.parent]
        related = [r for r in evaluation.resources if r.type in (
            "model-stack:index:ImageSignature", "model-stack:index:ImageAttestation") and r.name.startswith(mirror.name + "-")]
        by_source[copy.inputs["sources"][0]] = [mirror, *related]
    return by_source


def test_two_images_of_one_repository_are_mirrored_under_distinct_names_keeping_the_first_ones_state():
    embed = stack_config("prod")["models"]["embed"]
    evaluation = evaluate("prod", set={
        "models.rerank": {**embed, "model": "ggml-org/bge-reranker-v2-m3-GGUF/bge-reranker-v2-m3-Q8_0.gguf",
                          "image": OTHER_LLAMA_CPP},
        "images.signing.enabled": True,
    }, secrets={**FAKE_SECRETS, "cosignPrivateKey": "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nk\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"})
    urns = [r.urn for r in evaluation.resources]
    assert len(urns) == len(set(urns)), sorted(urn for urn in urns if urns.count(urn) > 1)
    mirrors = mirror_resources(evaluation)
    first, second = mirrors[embed["image"]], mirrors[OTHER_LLAMA_CPP]
    assert first[0].name == "mirror-ghcr-io-ggml-org-llama-cpp-server-b9935-295dc9897fa8"
    assert second[0].name == "mirror-ghcr-io-ggml-org-llama-cpp-server-b9936-bbbbbbbbbbbb"
    # The image a stack mirrored alone before keeps those resources (copy, signature, attestations) by alias.
    plain = "mirror-ghcr-io-ggml-org-llama-cpp"
    assert sorted(alias_names(r) for r in first) == sorted(
        [[plain], [f"{plain}-signature"], [f"{plain}-attestation"]])
    assert all(alias_names(r) == [] for r in second)
    # The vLLM image, alone in its repository, keeps its name.
    assert mirrors[stack_config("prod")["models"]["chat"]["image"]][0].name == "mirror-docker-io-vllm-vllm-openai"


def test_an_image_alone_in_its_repository_keeps_its_name_and_the_state_it_had_beside_another():
    evaluation = evaluate("prod")
    [mirror] = [m for m in evaluation.of_type("model-stack:index:ImageMirror") if "llama" in m.name]
    assert mirror.name == "mirror-ghcr-io-ggml-org-llama-cpp"
    assert alias_names(mirror) == ["mirror-ghcr-io-ggml-org-llama-cpp-server-b9935-295dc9897fa8"]


def alias_names(resource) -> list[str]:
    """The names a resource's aliases give (an alias spec's name, or the last part of an alias URN)."""
    return [alias.spec.name if alias.HasField("spec") else alias.urn.rpartition("::")[2] for alias in resource.aliases]


BAD_IMAGE_CONFIG = [
    ("dev", {"images.mirror": ["vllm/vllm-openai:v0.11.0"]}, "images.mirror[0]", "pinned by digest"),
    ("dev", {"images.mirror": [f"vllm/vllm-openai@{DIGEST}"]}, "images.mirror[0]", "no images.rewrite rule"),
    ("dev", {"images.rewrite": {"docker.io": "index.docker.io"}}, 'images.rewrite["docker.io"]', "to itself"),
    ("dev", {"images.registry.pushUsername": "ci"}, "images.registry.pushUsername", "images.registry.server"),
    ("dev", {"images.registry.server": "ghcr.io/Acme Corp"}, "images.registry.server", "registry host"),
    ("prod", {"images.gatewayBuild.baseImage": "python:3.12-slim"}, "images.gatewayBuild.baseImage", "digest-pinned"),
    ("prod", {"gateway.image": "ghcr.io/acme/model-gateway:latest"}, "gateway.image", "digest-pinned"),
    ("prod", {"images.registry.pushUsername": "AWS"}, "images.registry.pushUsername", "token from AWS"),
]


@pytest.mark.parametrize("stack,overrides,key,text", BAD_IMAGE_CONFIG, ids=[c[2] for c in BAD_IMAGE_CONFIG])
def test_bad_image_config_is_rejected_by_key(stack, overrides, key, text):
    assert_rejected(stack, overrides, key, text)


def test_a_push_user_needs_its_password():
    secrets = {key: value for key, value in FAKE_SECRETS.items() if key != "registryPushPassword"}
    error, evaluation = evaluate_failure("dev", set=PRIVATE, secrets=secrets)
    assert [problem.key for problem in error.problems] == ["registryPushPassword"]
    assert evaluation.resources == []


def test_prod_on_knative_copies_and_pulls_every_knative_and_kourier_image_from_its_registry(pinned_knative_release):
    registry = stack_config("prod")["images"]["registry"]["server"].partition("/")[0]
    evaluation = evaluate("prod", set={
        "gateway.workload": "knative",
        "gateway.scaling.targetCpuUtilization": None,  # Knative ignores it; the config refuses it there
        "knative.domain": "models.example.com",
        "knative.manifestsDir": str(pinned_knative_release),
        f'images.rewrite["{KNATIVE_RELEASES}"]': f"{registry}/mirror/knative",
    })
    copies = {c.inputs["sources"][0]: c.inputs["tag"] for c in evaluation.of_type("docker-build:index:Index")}
    knative_sources = [source for source in copies if source.startswith(KNATIVE_RELEASES)]
    # activator, autoscaler, controller, webhook, queue proxy, net-kourier controller, envoy
    assert len(knative_sources) == 7
    deployed = set(deployed_images(evaluation).values())
    assert {f"{copies[source]}@{source.split('@')[1]}" for source in knative_sources} <= deployed
    assert all(image.startswith(registry + "/") for image in deployed), deployed
