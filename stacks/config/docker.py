"""The single-host Docker runtime (used when `runtime` is `docker`)."""

from __future__ import annotations

from .base import Section


class DockerConfig(Section):
    """The single-host Docker runtime (used when `runtime` is `docker`)."""
