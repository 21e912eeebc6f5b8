"""Images the stack builds, the registries it pushes to and pulls from, and upstream images it mirrors."""

from __future__ import annotations

from .base import Section


class ImagesConfig(Section):
    """Images the stack builds, the registries it pushes to and pulls from, and upstream images it mirrors."""
