"""The OpenAI-compatible gateway in front of the model runner."""

from __future__ import annotations

from .base import Section


class GatewayConfig(Section):
    """The OpenAI-compatible gateway in front of the model runner."""
