"""Composition of the components per stack: the program `__main__.py` runs."""

from __future__ import annotations

import pulumi

from .config import load


def deploy() -> None:
    """Validates the stack config (nothing is registered if it is wrong), then deploys the chosen runtime."""
    config, secrets = load()
    if config.runtime == "kubernetes":
        from .kubernetes import deploy_kubernetes

        deploy_kubernetes(config, secrets)
    else:
        from .docker import deploy_docker

        deploy_docker(config, secrets)
    pulumi.export("environment", config.environment)
