"""The Kubernetes runtime, layer by layer: cluster, images, Knative, then the serving workloads."""

from __future__ import annotations

from .admission import admission_images, admit_signed_images
from .cluster import provision_cluster
from .config import StackConfig
from .config.secrets import StackSecrets
from .images import publish_images
from .knative import install_knative, release_images_of
from .metrics import metrics_images
from .serving import knative_settings, serve_models, upstream_images


def deployed_images(config: StackConfig) -> list[str]:
    """Every image the Kubernetes stack deploys, before the registry mapping: the engine and its sidecar, Knative's
    and Kourier's, the admission webhook's, the metrics pipeline's and KEDA's (the gateway's own build is pushed where it is pulled from)."""
    return [*upstream_images(config), *release_images_of(config), *admission_images(config), *metrics_images(config)]


def deploy_kubernetes(config: StackConfig, secrets: StackSecrets) -> None:
    deployed = deployed_images(config)
    cluster = provision_cluster(config, secrets)
    images = publish_images(config, secrets, cluster, deployed)
    admission = admit_signed_images(config, cluster, images)
    knative = install_knative(config, cluster, images, knative_settings(config, cluster))
    serve_models(config, secrets, cluster, images, knative, admission)
