"""docs/config-reference.md and docs/config.schema.json are what the pydantic schema generates, and every
committed stack file validates against the schema."""

from __future__ import annotations

import json
from typing import Any, Iterator, get_args

import jsonschema
import pytest
import yaml

from harness import ROOT, STACKS
from stacks.config import StackConfig
from stacks.config.base import Section, _section_in, join_key
from stacks.config.reference import JSON_SCHEMA_PATH, REGENERATE, json_schema, rendered
from stacks.config.secrets import SECRET_KEYS


@pytest.mark.parametrize("path", list(rendered()), ids=lambda path: path.name)
def test_generated_docs_are_up_to_date(path):
    expected = rendered()[path]
    committed = path.read_text() if path.exists() else ""
    assert committed == expected, f"{path.relative_to(ROOT)} is stale: run ./{REGENERATE} and commit the result"


def leaf_keys(section: type[Section], path: str = "") -> Iterator[str]:
    """Every settable key of the schema, walked from the models rather than from the generated schema."""
    for name, field in section.model_fields.items():
        key = join_key(path, field.alias or name)
        nested = _section_in(field.annotation)
        if nested is None:
            yield key
            continue
        container = next((arg for arg in (field.annotation, *get_args(field.annotation))
                          if getattr(arg, "__origin__", None) in (list, dict, tuple)), None)
        origin = getattr(container, "__origin__", None)
        suffix = "[<i>]" if origin in (list, tuple) else '["<name>"]' if origin is dict else ""
        yield from leaf_keys(nested, key + suffix)


def test_the_reference_documents_every_key_and_secret():
    text = rendered()[ROOT / "docs/config-reference.md"]
    missing = [key for key in [*leaf_keys(StackConfig), *SECRET_KEYS] if f"| `{key}` |" not in text]
    assert missing == []


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(JSON_SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_file_validates_against_the_schema(validator, stack):
    assert errors(validator, yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())) == []


BAD_DOCUMENTS = [
    ({"model-stack:environment": "staging"}, "config/model-stack:environment"),
    ({"model-stack:runtme": "docker"}, "config"),
    ({"model-stack:cluster": {"provder": "kind"}}, "config/model-stack:cluster"),
    ({"model-stack:cluster": {"kubernetesVersion": "v1.32"}}, "config/model-stack:cluster/kubernetesVersion"),
    ({"model-stack:hfToken": "hf_plaintext"}, "config/model-stack:hfToken"),
]


@pytest.mark.parametrize("config,where", BAD_DOCUMENTS, ids=[list(c)[0] for c, _ in BAD_DOCUMENTS])
def test_the_schema_rejects_what_the_loader_rejects(validator, config, where):
    found = errors(validator, {"config": config})
    assert len(found) == 1 and found[0].startswith(f"{where}:"), found


def test_the_schema_accepts_encrypted_secrets_and_other_namespaces(validator):
    document = {"config": {"model-stack:hfToken": {"secure": "v1:abc"}, "aws:region": "us-east-1"}}
    assert errors(validator, document) == []
    assert json_schema()["properties"]["config"]["properties"]["model-stack:hfToken"]["required"] == ["secure"]
