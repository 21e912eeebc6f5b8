"""Strict schema validation of Kubernetes objects: built-in kinds with kubernetes-validate, custom resources
against the openAPIV3Schema of their CRD (Knative's from ../shared/knative/v1.15, KEDA's from the release the stack
installs, or any CRD the stack applies).

CRD schemas are made strict the way the API server's pruning would make a typo disappear: every object schema
that lists its properties and does not preserve unknown fields gets `additionalProperties: false`, so a field
the API server would silently drop fails here instead.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import kubernetes_validate
import pytest
import yaml

KNATIVE_MANIFESTS = Path(
    os.environ.get("KNATIVE_MANIFESTS_DIR", Path(__file__).resolve().parents[2] / "shared" / "knative" / "v1.15")
)


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def crd_schemas(documents: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, for every served version of every CRD given."""
    schemas = {}
    for document in documents:
        if not document or document.get("kind") != "CustomResourceDefinition":
            continue
        spec = document["spec"]
        for version in spec["versions"]:
            if version.get("served", True) and "schema" in version:
                schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                # The API server accepts these on every object whether or not the CRD's schema lists them.
                for implicit in ("apiVersion", "kind", "metadata"):
                    schema.setdefault("properties", {}).setdefault(implicit, {})
                schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return schemas


@functools.cache
def knative_crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    path = KNATIVE_MANIFESTS / "serving-crds.yaml"
    assert path.exists(), f"Knative CRDs not found at {path}; set KNATIVE_MANIFESTS_DIR"
    return crd_schemas(yaml.safe_load_all(path.read_text()))


@functools.cache
def go_module_dir(module: str) -> Path:
    """Where `module` (path@version) is unpacked, downloaded through the Go module proxy (the one place besides
    package registries tests may download from; nothing is built). Skipped without Go, failed in CI."""
    if not shutil.which("go"):
        message = f"Go is needed to read {module} (https://go.dev/doc/install)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    download = subprocess.run(["go", "mod", "download", "-json", module], capture_output=True, text=True, timeout=300)
    assert download.returncode == 0, f"go mod download {module}: {download.stdout}{download.stderr}"
    return Path(json.loads(download.stdout)["Dir"])


def go_module_crd_schemas(module: str, *files: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The CRDs in `files` (paths inside the module) as strict schemas."""
    directory = go_module_dir(module)
    return crd_schemas(document for file in files for document in yaml.safe_load_all((directory / file).read_text()))


def policy_controller_crd_schemas(version: str) -> dict[tuple[str, str], dict[str, Any]]:
    """ClusterImagePolicy's CRD as policy-controller `version` ships it, from its Go module."""
    return go_module_crd_schemas(f"github.com/sigstore/policy-controller@{version}", "config/300-clusterimagepolicy.yaml")


@functools.cache
def keda_crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """KEDA's CRDs as the release the stack installs ships them (a stack may also apply ScaledObjects to a KEDA it
    finds); tests/test_inference_autoscaling.py validates against the Go module's too."""
    from components.model_autoscaler import keda_release

    return crd_schemas(keda_release())


def validation_errors(obj: dict[str, Any], kubernetes_version: str, extra_crds: dict | None = None) -> list[str]:
    """Problems with one object; empty when it is valid. `kubernetes_version` is a minor version ('1.32')."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    schemas = {**knative_crd_schemas(), **keda_crd_schemas(), **(extra_crds or {})}
    if key in schemas:
        validator = jsonschema.Draft7Validator(schemas[key])
        return [f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}" for error in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, f"{kubernetes_version}.0", strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key[0]} {key[1]} in Kubernetes {kubernetes_version} or the known CRDs"]
    return []
