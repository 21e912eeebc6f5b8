"""The OpenAI-compatible gateway in front of the model runner."""

from __future__ import annotations

from typing import Annotated, Iterator, Optional

from pydantic import Field

from .base import ImageRef, Problem, WholeByteQuantity, join_keys, matching, only_on, quantity_value, unique
from .workload import AllowedNamespaces, ServedWorkload, ResourcesConfig, ScalingConfig


class GatewayConfig(ServedWorkload):
    """The OpenAI-compatible gateway in front of the model runner."""


    image: Optional[ImageRef] = None
    """A prebuilt gateway image to deploy (e.g. the digest CI pushed for a release); unset deploys the image the
    stack builds from `app/`. Production needs it digest-pinned."""

    resources: Annotated[ResourcesConfig, only_on("kubernetes")] = ResourcesConfig()
    """CPU and memory per gateway replica (it proxies and streams; it holds no model)."""

    allowed_namespaces: Annotated[AllowedNamespaces, only_on("kubernetes")] = []
    """Namespaces whose pods may call the gateway: your ingress controller's (`ingress-nginx`) and in-cluster
    clients'. Empty admits every pod, and on kind without Knative publishes a Deployment gateway on the host port
    kind maps for the ingress (`cluster.kind.httpHostPort`; the stack output `gatewayPublicUrl`). On Knative only
    Knative's own data path reaches it, whatever this says. Either way the gateway itself may connect only to the
    model runner and DNS: it holds the API keys."""

    scaling: Annotated[ScalingConfig, only_on("kubernetes")] = ScalingConfig(targetConcurrency=50)
    """Replica bounds and autoscaling targets of the gateway."""

    request_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 600
    """Longest a proxied completion may take, streamed responses included."""

    cors_allow_origins: Annotated[list[Annotated[str, matching(
        r"\*|[a-z][a-z0-9+.-]*://(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?",
        "a browser origin, scheme://host[:port] with no path or trailing slash (e.g. https://chat.example.com), or *")]],
        unique("each origin is allowed once")] = []
    """Browser origins allowed to call the API (e.g. `https://chat.example.com`); empty allows none."""

    max_request_body: WholeByteQuantity = "1Mi"
    """Largest request body the gateway accepts (`1Mi`, `16Mi`; larger ones get 413 before any engine sees
    them): raise it for batch embedding requests or base64 image inputs. Each body is held in the gateway's memory
    while it is checked and relayed, so it must stay below `resources.limits.memory`."""

    def check(self, path: str) -> Iterator[Problem]:
        yield from self.scaling_problems(path)
        memory = self.resources.limits.memory
        if memory is not None and quantity_value(self.max_request_body) >= quantity_value(memory):
            yield Problem(join_keys(path, "maxRequestBody"),
                          f"must be below resources.limits.memory ({memory}): the gateway holds each body in memory",
                          self.max_request_body)
