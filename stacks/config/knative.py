"""Knative Serving with Kourier: release, manifests source and the cluster-wide serving config."""

from __future__ import annotations

from .base import Section


class KnativeConfig(Section):
    """Knative Serving with Kourier: release, manifests source and the cluster-wide serving config."""
