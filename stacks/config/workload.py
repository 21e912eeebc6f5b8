"""Settings every serving workload (the model runner and the gateway) shares: compute resources and scaling."""

from __future__ import annotations

from typing import Annotated, Iterator, Literal, Optional

from pydantic import Field

from .base import (
    ByteQuantity, DnsLabel, MetricName, Problem, Quantity, Section, join_key, join_keys, only_on, quantity_value, unique,
)

# Namespaces a workload's NetworkPolicy admits: a set, so a namespace twice is a typo for another one.
AllowedNamespaces = Annotated[list[DnsLabel], unique("each namespace is admitted once")]


def workload_scaling_problems(path: str, workload: str, scaling: "ScalingConfig", configured: bool) -> Iterator[Problem]:
    """Scaling settings the chosen workload form cannot honour or ignores (`path` is the section holding both;
    `configured`: the scaling was written in the config, not the section's built-in one)."""
    ignored = {"deployment": ("target_concurrency", "Knative workloads"),
               "knative": ("target_cpu_utilization", "Deployment workloads (Knative scales on scaling.targetConcurrency)")}
    field, applies_to = ignored[workload]
    if configured and field in scaling.model_fields_set:
        yield Problem(join_keys(path, f"scaling.{ScalingConfig.model_fields[field].alias}"),
                      f"applies to {applies_to}; this one is workload {workload}", getattr(scaling, field))
    if scaling.min_replicas == 0 and workload != "knative" and getattr(scaling, "signal", None) != "requests":
        yield Problem(
            join_keys(path, "scaling.minReplicas"),
            "can be 0 only with workload knative, or on a model runner with scaling.signal requests (KEDA wakes "
            "its Deployment on the requests the gateway holds for it); nothing else wakes a Deployment on a request",
            0,
        )
    if scaling.pods_metric is not None and workload == "knative":
        yield Problem(
            join_keys(path, "scaling.podsMetric"),
            "applies to Deployment workloads; Knative scales on in-flight requests (scaling.targetConcurrency)",
            scaling.pods_metric.name,
        )


class ComputeQuantities(Section):
    cpu: Optional[Quantity] = None
    """CPU cores (`500m`, `4`)."""

    memory: Optional[ByteQuantity] = None
    """Memory (`512Mi`, `16Gi`)."""


class ResourcesConfig(Section):
    requests: ComputeQuantities = ComputeQuantities(cpu="250m", memory="256Mi")
    """What the scheduler reserves for each pod."""

    limits: ComputeQuantities = ComputeQuantities(memory="512Mi")
    """Hard caps. Memory is always capped (an engine that grows past it is OOM-killed instead of starving its
    node); CPU is left uncapped by default because throttling a busy engine only adds latency."""

    def check(self, path: str) -> Iterator[Problem]:
        if self.limits.memory is None:
            yield Problem(join_keys(path, "limits.memory"), "is required: an uncapped model server can take down its node")
        for name in ("cpu", "memory"):
            request, limit = getattr(self.requests, name), getattr(self.limits, name)
            if request is not None and limit is not None and quantity_value(limit) < quantity_value(request):
                yield Problem(
                    join_keys(path, f"limits.{name}"),
                    f"must be at least requests.{name} ({request})",
                    limit,
                )


class PodsMetricConfig(Section):
    name: MetricName
    """Per-pod metric a custom metrics adapter serves (e.g. prometheus-adapter exposing vLLM's
    `vllm:num_requests_waiting`); the cluster must run one, or the autoscaler reports the metric missing."""

    average_value: Quantity
    """Average per pod the autoscaler aims for (`4` waiting requests)."""


class ScalingConfig(Section):
    min_replicas: Annotated[int, Field(ge=0, le=100)] = 1
    """Warm replicas kept at all times. 0 lets a Knative workload, or a Deployment model runner scaled on requests
    (KEDA), scale to zero when idle (the next request waits for a model load); production stacks keep at least 2
    so one can be drained or lost."""

    max_replicas: Annotated[int, Field(ge=1, le=100)] = 1
    """Upper bound for the autoscaler."""

    target_cpu_utilization: Annotated[int, Field(ge=10, le=100)] = 80
    """Deployment workloads: average CPU utilisation (percent of requests) the HorizontalPodAutoscaler aims for."""

    target_concurrency: Annotated[int, Field(ge=1, le=1000)] = 4
    """Knative workloads: in-flight requests per replica the autoscaler aims for. Inference is bound by how many
    sequences a replica batches at once, so concurrency, not CPU, is the signal that tracks load."""

    pods_metric: Optional[PodsMetricConfig] = None
    """Deployment workloads: an inference signal to scale on as well as CPU (the autoscaler follows whichever
    asks for more replicas). Unset: CPU only, which every cluster can measure."""

    def check(self, path: str) -> Iterator[Problem]:
        if self.max_replicas < self.min_replicas:
            yield Problem(
                join_key(path, "maxReplicas"), f"must be at least minReplicas ({self.min_replicas})", self.max_replicas
            )


class ServedWorkload(Section):
    """What every served workload (the model runner, the gateway) chooses the same way."""

    workload: Annotated[Literal["deployment", "knative"], only_on("kubernetes")] = "deployment"
    """How it runs on Kubernetes: a Deployment with Service, autoscaler and disruption budget, or a Knative
    Service (scale to zero, request-driven autoscaling; Knative Serving is installed when any workload uses it).
    Switching a deployed stack from `deployment` to `knative` takes two steps: Knative's route needs the name of
    the Service the Deployment form created and refuses one it does not own, so delete that Service first
    (`pulumi destroy --target <its URN>`), then `pulumi up`."""

    def scaling_problems(self, path: str) -> Iterator[Problem]:
        scaling: ScalingConfig = self.scaling  # type: ignore[attr-defined]  # declared by each workload
        return workload_scaling_problems(
            path, self.workload, scaling, configured=scaling != type(self).model_fields["scaling"].default)
