"""The config reference (`docs/config-reference.md`) and the editor schema (`docs/config.schema.json`), both
generated from the pydantic schema so they cannot drift from what the loader accepts.

Regenerate with `scripts/gen-config-reference`; `tests/test_config_reference.py` fails when they are stale.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path
from typing import Any, Iterator

from pydantic.alias_generators import to_camel

from . import StackConfig
from .base import RUNTIME_SCHEMA_KEY, join_key
from .secrets import StackSecrets

PROJECT = "model-stack"
DOCS = Path(__file__).resolve().parents[2] / "docs"
MARKDOWN_PATH = DOCS / "config-reference.md"
JSON_SCHEMA_PATH = DOCS / "config.schema.json"
REGENERATE = "scripts/gen-config-reference"

SECURE_VALUE = {
    "type": "object",
    "description": "An encrypted value written by `pulumi config set --secret`.",
    "properties": {"secure": {"type": "string"}},
    "required": ["secure"],
    "additionalProperties": False,
}


def secret_descriptions() -> dict[str, str]:
    """Config key -> the docstring under each StackSecrets field (dataclasses keep no attribute docstrings)."""
    tree = ast.parse(inspect.getsource(StackSecrets))
    body = tree.body[0].body  # type: ignore[attr-defined]
    descriptions = {}
    for statement, following in zip(body, body[1:]):
        if (isinstance(statement, ast.AnnAssign) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            descriptions[to_camel(statement.target.id)] = inspect.cleandoc(following.value.value)  # type: ignore[union-attr]
    return descriptions


def json_schema() -> dict[str, Any]:
    """A JSON Schema for a whole `Pulumi.<stack>.yaml`: this project's keys under `config` as `<project>:<key>`,
    credentials only as encrypted `{secure: ...}` values, other namespaces (`aws:region`) left alone."""
    root = StackConfig.model_json_schema(by_alias=True)
    config_properties = {f"{PROJECT}:{key}": value for key, value in root["properties"].items()}
    for key, description in sorted(secret_descriptions().items()):
        config_properties[f"{PROJECT}:{key}"] = {**SECURE_VALUE, "description": description}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Pulumi.<stack>.yaml of {PROJECT}",
        "description": f"Generated from stacks/config by {REGENERATE}; do not edit.",
        "type": "object",
        "properties": {
            "config": {
                "type": "object",
                "description": root.get("description", ""),
                "properties": config_properties,
                "patternProperties": {f"^(?!{PROJECT}:)[^:]+:": {}},
                "additionalProperties": False,
            },
        },
        "$defs": root.get("$defs", {}),
    }


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Follows `$ref` (and pydantic's `allOf: [$ref]` wrapping), keeping the referring field's own keys."""
    own = {key: value for key, value in schema.items() if key not in ("$ref", "allOf")}
    ref = schema.get("$ref") or next((part["$ref"] for part in schema.get("allOf", []) if "$ref" in part), None)
    if ref is None:
        return schema
    return {**defs[ref.rsplit("/", 1)[-1]], **own}


def _nested_section(schema: dict[str, Any], key: str, defs: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """If a field holds a section (directly, as list items, or as map values): (its key pattern, its schema)."""
    resolved = _resolve(schema, defs)
    if "properties" in resolved:
        return key, resolved
    for option in resolved.get("anyOf", []):
        found = _nested_section(option, key, defs)
        if found:
            return found
    if isinstance(resolved.get("items"), dict):
        return _nested_section(resolved["items"], f"{key}[<i>]", defs)
    # A map's values: under any key, or under keys of a pattern (a map whose keys have a grammar).
    for values in [resolved.get("additionalProperties"), *resolved.get("patternProperties", {}).values()]:
        if isinstance(values, dict):
            return _nested_section(values, f'{key}["<name>"]', defs)
    return None


def _type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    schema = _resolve(schema, defs)
    if "anyOf" in schema:
        return " or ".join(_type(option, defs) for option in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}), defs)}"
    if schema.get("type") == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type(schema['additionalProperties'], defs)}"
    return schema.get("type", "any")


def _runtime(schema: dict[str, Any]) -> list[str]:
    runtime = schema.get(RUNTIME_SCHEMA_KEY)
    return [f"{runtime.capitalize()} runtime only"] if runtime else []


def _allowed(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return ", ".join([*(f"`{value}`" for value in schema["enum"]), *_runtime(schema)])
    if "const" in schema:
        return f"`{schema['const']}`"
    bounds = [*_runtime(schema), *(["unique entries"] if schema.get("uniqueItems") else []), *[f"{symbol} {schema[key]}" for key, symbol in
              (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")) if key in schema]]
    if "pattern" in schema:
        bounds.append(f"matches `{schema['pattern']}`")
    return ", ".join(bounds)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(schema: dict[str, Any]) -> str:
    if "default" not in schema or isinstance(schema["default"], dict):
        return ""
    return f"`{json.dumps(schema['default'])}`"


def _sections(title: str, path: str, schema: dict[str, Any], defs: dict[str, Any]) -> Iterator[list[str]]:
    """One Markdown table per section, depth first, each row a key as typed with `pulumi config set --path`."""
    rows, nested = [], []
    for name, field in schema["properties"].items():
        key = join_key(path, name)
        section = _nested_section(field, key, defs)
        if section:
            nested.append((field.get("description") or _resolve(field, defs).get("description", ""), *section))
            pattern = section[0]
            kind = "list of sections" if pattern.endswith("[<i>]") else "map of sections" if pattern.endswith('"]') else "section"
            rows.append(f"| `{key}` | {kind} | | {_cell(_allowed(_resolve(field, defs)))} "
                        f"| {_cell(field.get('description', ''))} See below. |")
            continue
        rows.append(
            f"| `{key}` | {_type(field, defs)} | {_default(field)} | {_cell(_allowed(_resolve(field, defs)))} "
            f"| {_cell(field.get('description', ''))} |"
        )
    yield [f"## {title}", "", "| key | type | default | allowed | description |", "| --- | --- | --- | --- | --- |", *rows]
    for description, key, section_schema in nested:
        yield from _sections(f"`{key}`", key, {**section_schema, "description": description}, defs)


def markdown() -> str:
    root = StackConfig.model_json_schema(by_alias=True)
    defs = root.get("$defs", {})
    blocks = [
        "# Config reference",
        "",
        f"<!-- Generated from stacks/config by {REGENERATE}; do not edit. -->",
        "",
        "Set a key with `pulumi config set --path <key> <value>` (e.g. `pulumi config set --path cluster.provider "
        "existing`), or edit `Pulumi.<stack>.yaml`, where each top-level key is written `model-stack:<key>`. "
        "Editors that read JSON Schema can check those files against [`config.schema.json`](config.schema.json) "
        "(for VS Code's YAML extension: `# yaml-language-server: $schema=docs/config.schema.json` at the top).",
        "",
    ]
    for table in _sections("Top-level keys", "", root, defs):
        blocks.extend([*table, ""])
    blocks.extend([
        "## Secrets",
        "",
        "Credentials are top-level keys that must be set encrypted: `pulumi config set --secret <key> <value>`.",
        "",
        "| key | description |",
        "| --- | --- |",
        *(f"| `{key}` | {_cell(text)} |" for key, text in sorted(secret_descriptions().items())),
        "",
    ])
    return "\n".join(blocks)


def rendered() -> dict[Path, str]:
    """Every generated file and its expected contents."""
    return {
        MARKDOWN_PATH: markdown(),
        JSON_SCHEMA_PATH: json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n",
    }


def write() -> list[Path]:
    DOCS.mkdir(exist_ok=True)
    changed = []
    for path, text in rendered().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed
