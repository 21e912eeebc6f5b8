"""The components other Pulumi languages can use, through the source-based plugin package in `plugin/`.

Every component listed here takes a TypedDict `args` and declares its outputs as class annotations, which is
what Pulumi infers the package schema from. EksCluster is left out: it needs the optional AWS SDKs.
"""

from .container_service import ContainerService
from .gateway import Gateway
from .image import Image
from .image_attestation import ImageAttestation
from .image_mirror import ImageMirror
from .image_signature import ImageSignature
from .kind_cluster import KindCluster
from .knative_serving import KnativeServing
from .local_registry import LocalRegistry
from .metrics_pipeline import MetricsPipeline
from .model_autoscaler import Keda, ModelAutoscaler
from .model_runner import ModelRunner
from .registry_credentials import RegistryCredentials
from .serving_workload import ServingWorkload
from .signed_images_policy import SignedImagesPolicy

PACKAGE_NAME = "model-stack"
COMPONENTS = [
    ModelRunner, Gateway, ServingWorkload, Image, ImageMirror, RegistryCredentials, KnativeServing, KindCluster,
    LocalRegistry, ContainerService, ImageSignature, ImageAttestation, SignedImagesPolicy, MetricsPipeline, Keda,
    ModelAutoscaler,
]
