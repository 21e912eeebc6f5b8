"""Promise: images.rewrite keys and targets are registry or repository prefixes in the distribution reference
grammar; prefixes that name the same place (Docker Hub's aliases, `library`) are one rule, so a second one is
refused; a rule that maps no image the stack deploys is reported."""

import pytest

from components.image_rewrite import canonical_prefix, canonical_repository, rewrite_image
from harness import assert_rejected, evaluate, evaluate_failure

MIRROR = "registry.example.com/mirror"

REFUSED = [
    ({"https://docker.io": MIRROR}, 'images.rewrite["https://docker.io"]', "has a scheme"),
    ({"docker.io": f"https://{MIRROR}"}, 'images.rewrite["docker.io"]', "has a scheme"),
    ({"ghcr.io/Acme": MIRROR}, 'images.rewrite["ghcr.io/Acme"]', "lowercase path components"),
    ({"Vllm": MIRROR}, "images.rewrite.Vllm", "lowercase path components"),
    ({"vllm/vllm-openai:v0.11.0": MIRROR}, 'images.rewrite["vllm/vllm-openai:v0.11.0"]', "has a tag or digest"),
    ({"docker.io": f"{MIRROR}/hub:latest"}, 'images.rewrite["docker.io"]', "has a tag or digest"),
    ({"ghcr.io/": MIRROR}, 'images.rewrite["ghcr.io/"]', "ends with '/'"),
    ({"docker.io": f"{MIRROR}/"}, 'images.rewrite["docker.io"]', "ends with '/'"),
    ({"ghcr.io//acme": MIRROR}, 'images.rewrite["ghcr.io//acme"]', "registry host or repository prefix"),
    ({"docker.io": f"{MIRROR}/hub", "index.docker.io": f"{MIRROR}/hub2"}, 'images.rewrite["index.docker.io"]',
     'same prefix as images.rewrite["docker.io"]'),
    ({"docker.io": f"{MIRROR}/hub", "registry-1.docker.io": f"{MIRROR}/hub2"},
     'images.rewrite["registry-1.docker.io"]', "both are docker.io"),
    ({"library": f"{MIRROR}/official", "docker.io/library": f"{MIRROR}/official2"},
     'images.rewrite["docker.io/library"]', "both are docker.io/library"),
    ({"vllm": MIRROR, "docker.io/vllm": f"{MIRROR}/2"}, 'images.rewrite["docker.io/vllm"]', "can never apply"),
]


@pytest.mark.parametrize("rules,key,text", REFUSED, ids=[case[1] for case in REFUSED])
def test_rules_outside_the_reference_grammar_or_naming_one_place_twice_are_refused(rules, key, text):
    assert_rejected("dev", {"images.rewrite": rules}, key, text)


ACCEPTED = [
    {"docker.io": f"{MIRROR}/hub"},
    {"vllm": f"{MIRROR}/vllm", "docker.io": f"{MIRROR}/hub"},  # nested prefixes: the longest wins
    {"docker.io/curlimages": "registry.internal:5000/mirror/curl"},
    {"index.docker.io": "localhost:5001"},
    {"docker.io": "[::1]:5000/hub"},
    {"docker.io": "Registry.Example.com/mirror"},  # hosts are not lowercase in the grammar
]


@pytest.mark.parametrize("rules", ACCEPTED, ids=[str(rules) for rules in ACCEPTED])
def test_rules_in_the_reference_grammar_are_accepted(rules):
    evaluate("dev", set={"images.rewrite": rules})


def test_docker_hubs_aliases_are_docker_io():
    assert canonical_prefix("index.docker.io/vllm") == canonical_prefix("registry-1.docker.io/vllm") == "docker.io/vllm"
    assert canonical_repository("index.docker.io/nginx") == "docker.io/library/nginx"
    assert canonical_repository("docker.io/nginx") == "docker.io/library/nginx"
    assert rewrite_image("index.docker.io/vllm/vllm-openai:v1", {"docker.io/vllm": MIRROR}) == f"{MIRROR}/vllm-openai:v1"


def test_a_rule_that_maps_no_deployed_image_is_reported():
    evaluation = evaluate("dev", set={"images.rewrite": {"nvcr.io": f"{MIRROR}/nvcr", "docker.io": f"{MIRROR}/hub"}})
    warnings = [warning for warning in evaluation.warnings if warning.startswith("images.rewrite")]
    assert len(warnings) == 1 and warnings[0].startswith('images.rewrite["nvcr.io"]: applies to no image this stack')
    assert "docker.io/curlimages/curl" in warnings[0]


def test_a_rule_shadowed_by_a_longer_one_for_every_deployed_image_is_reported():
    evaluation = evaluate("local", set={"runtime": "kubernetes", "docker": None, "images.rewrite": {
        "docker.io": f"{MIRROR}/hub", "ghcr.io": f"{MIRROR}/ghcr", "ghcr.io/ggml-org": f"{MIRROR}/ggml"}})
    assert [w.partition(":")[0] for w in evaluation.warnings if w.startswith("images.rewrite")] == ['images.rewrite["ghcr.io"]']


def test_the_docker_runtime_refuses_the_mapping_it_does_not_apply():
    assert_rejected("local", {"images.rewrite": {"docker.io": f"{MIRROR}/hub"}}, "images.rewrite",
                    "applies to the Kubernetes runtime only")


@pytest.mark.parametrize("rules,keys", [
    ({"https://ghcr.io": MIRROR, "docker.io": f"{MIRROR}/hub:1", "quay.io/": MIRROR, "gcr.io": f"{MIRROR}/gcr"},
     ['images.rewrite["https://ghcr.io"]', 'images.rewrite["docker.io"]', 'images.rewrite["quay.io/"]']),
    ({"library": MIRROR, "docker.io/library": f"{MIRROR}/2", "index.docker.io": f"{MIRROR}/hub",
      "registry-1.docker.io": f"{MIRROR}/hub2", "ghcr.io": "ghcr.io"},
     ['images.rewrite["docker.io/library"]', 'images.rewrite["registry-1.docker.io"]', 'images.rewrite["ghcr.io"]']),
], ids=["grammar", "duplicates"])
def test_every_problem_of_the_mapping_is_reported_at_once(rules, keys):
    error, evaluation = evaluate_failure("dev", set={"images.rewrite": rules})
    assert sorted(problem.key for problem in error.problems) == sorted(keys)
    assert evaluation.resources == []
