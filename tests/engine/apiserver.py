"""The Kubernetes composition as the lane runs it on its API server (which has no kubelet): a small stack config on
the existing-cluster provider, the lane's program for a cluster without nodes, kubectl, and the storage class kind
clusters have."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from schemas import KNATIVE_MANIFESTS

# Stands in for the digest CI pushed; nothing pulls it, since no pod runs.
GATEWAY_IMAGE = "registry.example.com/model-gateway@sha256:" + "1" * 64
# The lane's program: the project's, with pod awaits skipped and Knative's webhooks failing open (its docstring).
WITHOUT_NODES = "tests/engine/programs/without_nodes.py"


def config(kubeconfig: Path, load_budget_seconds: int = 300, stable_window_seconds: int = 120) -> dict:
    return {
        "environment": "development",
        "cluster": {"provider": "existing", "kubernetesVersion": "1.32",
                    "existing": {"kubeconfigPath": str(kubeconfig)}},
        "knative": {"install": True, "manifestsDir": str(KNATIVE_MANIFESTS),
                    "stableWindowSeconds": stable_window_seconds},
        "runner": {
            "engine": "llama.cpp",
            "model": "engine-lane/tiny-model/tiny.gguf",
            "workload": "deployment",
            "cache": {"size": "1Gi", "storageClass": "standard", "protect": True},
            "loadBudgetSeconds": load_budget_seconds,
        },
        "gateway": {"workload": "deployment", "image": GATEWAY_IMAGE},
    }


def kubectl(control_plane, *args: str) -> dict:
    result = subprocess.run(["kubectl", f"--kubeconfig={control_plane.kubeconfig}", *args, "-o", "json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def cluster(control_plane):  # imported by the conftest, so every lane test can ask for it
    """The storage class kind clusters have: claims wait for their first pod, as on kind."""
    manifest = {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "standard"},
        "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }
    subprocess.run(["kubectl", f"--kubeconfig={control_plane.kubeconfig}", "apply", "-f", "-"],
                   input=json.dumps(manifest), text=True, check=True, capture_output=True)
    return control_plane
