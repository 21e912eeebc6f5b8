"""Composition of the components per stack: the program `__main__.py` runs."""

from __future__ import annotations

from typing import Iterator

import pulumi

from .config import StackConfig, load
from .config.base import Problem


def deploy() -> None:
    """Validates the stack config (nothing is registered if it is wrong), then deploys the chosen runtime."""
    config, secrets = load(deployment_checks=_deployment_problems)
    if config.runtime == "kubernetes":
        from .kubernetes import deploy_kubernetes, deployed_images

        # A rule for images the stack does not deploy yet (another engine's registry) is no error, but worth a look.
        for problem in config.images.unused_rule_problems("images", deployed_images(config)):
            pulumi.log.warn(str(problem))

        deploy_kubernetes(config, secrets)
    else:
        from .docker import deploy_docker

        deploy_docker(config, secrets)
    pulumi.export("environment", config.environment)


def _deployment_problems(config: StackConfig) -> Iterator[Problem]:
    """Rules that read what the stack deploys: the Knative release, whether each model's pod fits a node it can land
    on, and (once the release reads) the images an enforcing admission policy would deny."""
    from .admission import queue_proxy_image, unverifiable_image_problems
    from .serving import scheduling_problems

    release = list(_release_problems(config))
    yield from release
    yield from scheduling_problems(config)
    if not release and config.runtime == "kubernetes":
        yield from unverifiable_image_problems(config, queue_proxy_image(config))


def _release_problems(config: StackConfig) -> Iterator[Problem]:
    """Knative release manifests in knative.manifestsDir that cannot be read or are no Kubernetes objects."""
    if not config.knative_installed:
        return
    from components.knative_serving import ManifestError

    from .knative import release_images_of

    try:
        release_images_of(config)
    except ManifestError as error:
        if config.knative.manifests_dir is None:
            raise  # a failed download is no config problem; its message says what to do
        for reason in error.reasons:
            yield Problem("knative.manifestsDir", reason, config.knative.manifests_dir)
