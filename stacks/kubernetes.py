"""The Kubernetes runtime, layer by layer: cluster, images, Knative, then the serving workloads."""

from __future__ import annotations

from .admission import admission_images, admit_signed_images
from .cluster import provision_cluster
from .config import StackConfig
from .config.secrets import StackSecrets
from .images import publish_images
from .knative import install_knative, release_images_of
from .serving import knative_settings, serve_models, upstream_images


def deploy_kubernetes(config: StackConfig, secrets: StackSecrets) -> None:
    knative_images = release_images_of(config)
    cluster = provision_cluster(config, secrets)
    images = publish_images(
        config, secrets, cluster, [*upstream_images(config), *knative_images, *admission_images(config)])
    admission = admit_signed_images(config, cluster, images)
    knative = install_knative(config, cluster, images, knative_settings(config, cluster))
    serve_models(config, secrets, cluster, images, knative, admission)
