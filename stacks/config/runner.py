"""The model runner: engine, model, cache, resources, probes, scaling and exposure."""

from __future__ import annotations

from .base import Section


class RunnerConfig(Section):
    """The model runner: engine, model, cache, resources, probes, scaling and exposure."""
