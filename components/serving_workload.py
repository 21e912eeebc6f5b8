"""One HTTP workload behind a stable in-cluster name, as a Deployment or as a Knative Service.

The model runner and the gateway both describe their pod once (a Kubernetes PodSpec, camelCase); this component
turns it into either form, so probes, resources and security are the same whichever the stack chooses:
- `deployment`: Deployment + Service, a HorizontalPodAutoscaler when the replica bounds leave room (unless a KEDA
  ScaledObject beside it scales it: `scaling.signal` `requests`), a
  PodDisruptionBudget when there is redundancy to protect, and a NetworkPolicy when only some clients may call.
- `knative`: a Knative Service whose revisions scale on in-flight requests (scale to zero when the minimum is 0),
  with the pod adapted to Knative's rules (one unnamed-or-`http1` port; probes find the port themselves), plus
  the same disruption budget and a NetworkPolicy admitting only Knative's data path (activator and Kourier).

Knative refuses pod fields it has not been told to allow (`config-features` in `knative-serving`);
`knative_features` lists the flags a pod spec needs, so whoever installs Knative can enable exactly those.
"""


from typing import Any, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from .options import child_options

PORT_NAME = "http"
SELECTOR_LABEL = "app.kubernetes.io/name"
PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "model-stack"
# A replica that took minutes to load a model is expensive to lose: scale down only after load stays low.
SCALE_DOWN_STABILIZATION_SECONDS = 300
KNATIVE_SERVICE_LABEL = "serving.knative.dev/service"
# Knative's in-cluster address of a Service (an ExternalName Service in front of the ingress) listens on 80.
KNATIVE_SERVICE_PORT = 80
# Requests to a Knative revision arrive from the activator (knative-serving) or straight from the ingress
# gateway (Kourier), on the queue proxy's ports; the autoscaler scrapes the queue proxy from knative-serving.
KNATIVE_DATA_PATH_NAMESPACES = ("knative-serving", "kourier-system")
# What Knative adds to every revision's pod: its queue proxy, requesting this much CPU (config-deployment's
# `queue-sidecar-cpu-request` default; it requests memory only with `queueproxy.resource-defaults` enabled).
KNATIVE_QUEUE_PROXY_CPU_REQUEST = "25m"
# Pod fields Knative 1.15 accepts only when `config-features` enables them (serving-core.yaml, config-features).
_KNATIVE_POD_FEATURES = {
    "affinity": "kubernetes.podspec-affinity",
    "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
    "hostAliases": "kubernetes.podspec-hostaliases",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "tolerations": "kubernetes.podspec-tolerations",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "dnsPolicy": "kubernetes.podspec-dnspolicy",
    "dnsConfig": "kubernetes.podspec-dnsconfig",
    "securityContext": "kubernetes.podspec-securitycontext",
    "shareProcessNamespace": "kubernetes.podspec-shareprocessnamespace",
    "priorityClassName": "kubernetes.podspec-priorityclassname",
    "schedulerName": "kubernetes.podspec-schedulername",
    "initContainers": "kubernetes.podspec-init-containers",
}


# The "restricted" Pod Security Standard, container and pod halves: every container of every served pod runs so.
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


STOP_FIRST_ROLLOUT: dict[str, Any] = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
"""A Deployment's rollout in which an old pod goes before its replacement starts. Not Recreate, which would also
wait for the old pods to be gone: the Deployment controller then records the new generation before it makes the
new ReplicaSet, and pulumi-kubernetes' rollout await (pkg/await/deployment.go) takes the old, still available
ReplicaSet for the finished rollout, so an update that can never become ready (a model that fails to load, a
config Prometheus refuses) reported success."""


def isolated_pod(user: int, **security_context: Any) -> dict[str, Any]:
    """Pod settings every served workload shares: the restricted Pod Security Standard as `user` (uid and gid)
    with RuntimeDefault seccomp, no service account token (no pod of the stack calls the Kubernetes API, so a
    compromised engine gets no credential for it), and no service-link environment."""
    return {
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": user, "runAsGroup": user, "seccompProfile": {"type": "RuntimeDefault"},
            **security_context,
        },
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }


# How long a stopping pod keeps serving before its container gets SIGTERM: the endpoints controller, kube-proxy
# and the ingress take a few seconds to stop sending it new requests, and a listener closed before then answers
# them with resets (clients see 502s on every rollout and scale-down).
PRE_STOP_SLEEP_SECONDS = 10


def draining(drain_seconds: int) -> tuple[dict[str, Any], int]:
    """The serving container's `lifecycle` that keeps it serving while it is taken out of its endpoints, and the
    pod's terminationGracePeriodSeconds covering that sleep plus `drain_seconds` for in-flight requests after
    SIGTERM. The sleep action needs Kubernetes 1.30 (beta, on by default), which the cluster config requires."""
    return {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_SECONDS}}}, PRE_STOP_SLEEP_SECONDS + drain_seconds


def replicas_service_name(name: str) -> str:
    """The headless Service of a Deployment workload's pods. A prefix, not a suffix: every workload is named
    `model-runner...` or `gateway`, so no workload's own Service can take this name."""
    return f"replicas-{name}"


def workload_labels(name: str) -> dict[str, str]:
    """Labels of a workload's pods, which its Service, autoscaler, budget and policies select on."""
    return {SELECTOR_LABEL: name, PART_OF_LABEL: PART_OF}


class PodsMetricArgs(TypedDict):
    name: str
    """Per-pod metric served by a custom metrics adapter (e.g. prometheus-adapter exposing vLLM's
    `vllm:num_requests_waiting`)."""

    average_value: str
    """Target average across the pods, a quantity (`4`, `500m`)."""


class ScalingArgs(TypedDict):
    min_replicas: int
    """Replicas kept warm; 0 (Knative only) scales to zero when idle."""

    max_replicas: int
    """Upper bound for the autoscaler."""

    target_cpu_utilization: int
    """Deployment: average CPU utilisation (percent of requests) the HorizontalPodAutoscaler aims for."""

    target_concurrency: int
    """Knative: in-flight requests per replica the autoscaler aims for."""

    pods_metric: NotRequired[PodsMetricArgs]
    """Deployment: an inference signal the HorizontalPodAutoscaler also scales on (it follows whichever of CPU
    and this metric asks for more replicas)."""

    signal: NotRequired[str]
    """Deployment: `cpu` (default) makes the HorizontalPodAutoscaler here; `requests` leaves the replica count to
    a KEDA ScaledObject made beside this workload (components/model_autoscaler.py), which makes its own."""


class ServingWorkloadArgs(TypedDict):
    namespace: str
    """Namespace of every object."""

    port: int
    """Port the serving container listens on; the Service exposes it under the same number."""

    pod_spec: dict[str, Any]
    """The pod (Kubernetes PodSpec, camelCase). The serving container is the first; its port is named `http`,
    and its probes refer to that name."""

    scaling: ScalingArgs
    """Replica bounds and autoscaling targets."""

    workload: str
    """`deployment` or `knative`."""

    surge: NotRequired[bool]
    """Deployment: roll by starting each new pod before an old one stops (default). False rolls by stopping one
    old pod first: for pods that need what the old pod holds (a GPU no spare node may have, a single-node
    volume)."""

    allowed_clients: NotRequired[list[dict[str, Any]]]
    """NetworkPolicy peers (camelCase `from` entries) that may reach the port; empty admits none, absent admits
    every client."""

    node_port: NotRequired[int]
    """Deployment: also expose the port on every node at this node port (a NodePort Service), e.g. one a kind
    cluster maps a host port to. Traffic from it comes from the nodes, so it passes only when `allowed_clients`
    is absent."""

    allowed_destinations: NotRequired[list[dict[str, Any]]]
    """NetworkPolicy egress rules (camelCase `to`/`ports`) the pods may open connections to, DNS always
    included; absent lets them connect anywhere."""

    pod_annotations: NotRequired[dict[str, str]]
    """Annotations on the pod template (e.g. a config checksum that rolls pods when settings change)."""

    request_timeout_seconds: NotRequired[int]
    """Knative: longest a request (a streamed completion) may take."""

    progress_deadline_seconds: NotRequired[int]
    """How long a new pod may take to become ready (image pull and model load included) before the rollout
    counts as failed: the Deployment's progress deadline or the Knative revision's, and what `pulumi up` waits
    for. Absent: Kubernetes' and Knative's defaults (10 minutes)."""

    replicas_service: NotRequired[bool]
    """Deployment: also a headless Service (`replicas_service_name`) whose DNS name resolves to each ready pod, so a
    client (the gateway) can spread requests over the replicas itself instead of kube-proxy per connection."""

    cluster_local: NotRequired[bool]
    """Knative: reachable only inside the cluster (no route through the ingress)."""


class ServingWorkload(pulumi.ComponentResource):
    """A Deployment (with Service, autoscaler, disruption budget and network policy) or a Knative Service."""

    service_name: pulumi.Output[str]
    """Name of the Service other workloads call."""

    url: pulumi.Output[str]
    """In-cluster base URL (scheme, host and port)."""

    port: pulumi.Output[int]
    """Port of the in-cluster address: the serving port for a Deployment's Service, 80 for Knative's."""

    knative_features: pulumi.Output[list[str]]
    """Knative `config-features` flags the pod needs enabled (empty for a Deployment)."""

    def __init__(self, name: str, args: ServingWorkloadArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:ServingWorkload", name, None, opts)
        namespace = args["namespace"]
        labels = workload_labels(name)
        metadata = {"name": name, "namespace": namespace, "labels": labels}
        child = child_options(self, opts)
        knative = args["workload"] == "knative"
        if knative:
            self._knative_service(metadata, args, child)
            port = KNATIVE_SERVICE_PORT
            url = f"http://{name}.{namespace}.svc.cluster.local"
            pod_labels = {**labels, KNATIVE_SERVICE_LABEL: name}
            clients = [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": data_path}}}
                for data_path in KNATIVE_DATA_PATH_NAMESPACES
            ]
            ports = None
        else:
            self._deployment(name, metadata, labels, args, child)
            port = args["port"]
            url = f"http://{name}.{namespace}.svc.cluster.local:{port}"
            pod_labels = labels
            clients = args.get("allowed_clients")
            ports = [{"port": args["port"], "protocol": "TCP"}]
        self._disruption_budget(metadata, pod_labels, args["scaling"], child)
        destinations = args.get("allowed_destinations")
        if clients is not None or destinations is not None:
            k8s.networking.v1.NetworkPolicy(
                name, metadata=metadata, spec=network_policy_spec(pod_labels, clients, ports, destinations), opts=child
            )
        self.service_name = pulumi.Output.from_input(name)
        self.url = pulumi.Output.from_input(url)
        self.port = pulumi.Output.from_input(port)
        self.knative_features = pulumi.Output.from_input(knative_features(args["pod_spec"]) if knative else [])
        self.register_outputs(
            {
                "service_name": self.service_name,
                "url": self.url,
                "port": self.port,
                "knative_features": self.knative_features,
            }
        )

    def _deployment(
        self, name: str, metadata: dict, labels: dict[str, str], args: ServingWorkloadArgs, opts: pulumi.ResourceOptions
    ) -> None:
        scaling = args["scaling"]
        selector = {"matchLabels": labels}
        if args.get("surge", True):
            # A new pod must be Ready before an old one goes: a replica never drops out mid-rollout.
            strategy: dict[str, Any] = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        else:
            # The old pod frees what the new one needs; the others keep serving meanwhile (as the PDB allows).
            strategy = STOP_FIRST_ROLLOUT
        autoscaled = scaling["max_replicas"] > scaling["min_replicas"]
        spec: dict[str, Any] = {
            "replicas": scaling["min_replicas"],
            "selector": selector,
            "strategy": strategy,
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {"labels": labels, "annotations": args.get("pod_annotations", {})},
                "spec": args["pod_spec"],
            },
        }
        if "progress_deadline_seconds" in args:
            spec["progressDeadlineSeconds"] = args["progress_deadline_seconds"]
        deployment_opts = pulumi.ResourceOptions.merge(opts, _rollout_wait(args))
        if autoscaled:
            # The autoscaler owns the replica count once it exists; `pulumi up` must not reset it.
            deployment_opts = pulumi.ResourceOptions.merge(
                deployment_opts, pulumi.ResourceOptions(ignore_changes=["spec.replicas"])
            )
        deployment_metadata = metadata
        if scaling["min_replicas"] == 0:
            # Pulumi's Deployment await also waits for every claim the pods mount to be Bound, and a claim of a
            # WaitForFirstConsumer class (kind's and EKS's default classes) binds only once a pod is scheduled, which
            # a Deployment at zero replicas never has: `up` would wait out its timeout and fail. Its replicas start
            # on demand, each bounded by the gateway's hold, so `up` waits only for the Deployment to be accepted.
            deployment_metadata = {**metadata, "annotations": {**metadata.get("annotations", {}),
                                                               "pulumi.com/skipAwait": "true"}}
        deployment = k8s.apps.v1.Deployment(name, metadata=deployment_metadata, spec=spec, opts=deployment_opts)
        service_port = {"name": PORT_NAME, "port": args["port"], "targetPort": PORT_NAME, "protocol": "TCP"}
        if "node_port" in args:
            service_port["nodePort"] = args["node_port"]
        k8s.core.v1.Service(
            name,
            metadata=metadata,
            spec={"type": "NodePort" if "node_port" in args else "ClusterIP", "selector": labels,
                  "ports": [service_port]},
            opts=opts,
        )
        if args.get("replicas_service"):
            # No cluster IP: DNS answers with the ready pods' addresses (not-ready ones are left out).
            k8s.core.v1.Service(
                replicas_service_name(name),
                metadata={**metadata, "name": replicas_service_name(name)},
                spec={
                    "clusterIP": "None",
                    "selector": labels,
                    "ports": [{"name": PORT_NAME, "port": args["port"], "targetPort": PORT_NAME, "protocol": "TCP"}],
                },
                opts=opts,
            )
        if autoscaled and scaling.get("signal", "cpu") == "cpu":
            metrics: list[dict[str, Any]] = [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": scaling["target_cpu_utilization"]},
                    },
                }
            ]
            if "pods_metric" in scaling:
                metric = scaling["pods_metric"]
                metrics.append({
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": metric["name"]},
                        "target": {"type": "AverageValue", "averageValue": metric["average_value"]},
                    },
                })
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                name,
                metadata=metadata,
                spec={
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": scaling["min_replicas"],
                    "maxReplicas": scaling["max_replicas"],
                    # CPU is the signal every cluster has; an inference signal (queue depth, KV-cache use) joins
                    # it as a Pods metric where a metrics adapter serves one.
                    "metrics": metrics,
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_STABILIZATION_SECONDS}},
                },
                opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[deployment])),
            )

    def _disruption_budget(
        self, metadata: dict, pod_labels: dict[str, str], scaling: ScalingArgs, opts: pulumi.ResourceOptions
    ) -> None:
        if scaling["min_replicas"] < 2:
            return
        k8s.policy.v1.PodDisruptionBudget(
            metadata["name"],
            metadata=metadata,
            # One replica at a time may be drained; the rest keep serving.
            spec={"maxUnavailable": 1, "selector": {"matchLabels": pod_labels}},
            opts=opts,
        )

    def _knative_service(self, metadata: dict, args: ServingWorkloadArgs, opts: pulumi.ResourceOptions) -> None:
        scaling = args["scaling"]
        annotations = {
            "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
            "autoscaling.knative.dev/metric": "concurrency",
            "autoscaling.knative.dev/target": str(scaling["target_concurrency"]),
            "autoscaling.knative.dev/min-scale": str(scaling["min_replicas"]),
            "autoscaling.knative.dev/max-scale": str(scaling["max_replicas"]),
            **args.get("pod_annotations", {}),
        }
        if "progress_deadline_seconds" in args:
            annotations["serving.knative.dev/progress-deadline"] = f"{args['progress_deadline_seconds']}s"
        labels = dict(metadata["labels"])
        if args.get("cluster_local"):
            labels["networking.knative.dev/visibility"] = "cluster-local"
        spec = knative_pod_spec(args["pod_spec"], args["port"])
        if "request_timeout_seconds" in args:
            spec["timeoutSeconds"] = args["request_timeout_seconds"]
        k8s.apiextensions.CustomResource(
            metadata["name"],
            api_version="serving.knative.dev/v1",
            kind="Service",
            # Without it Pulumi reports a custom resource done once the API server has stored it, long before
            # the revision has loaded its model, or failed to.
            metadata={**metadata, "labels": labels, "annotations": {"pulumi.com/waitFor": "condition=Ready"}},
            spec={"template": {"metadata": {"labels": metadata["labels"], "annotations": annotations}, "spec": spec}},
            opts=pulumi.ResourceOptions.merge(opts, _rollout_wait(args)),
        )


def _rollout_wait(args: ServingWorkloadArgs) -> pulumi.ResourceOptions:
    """How long `pulumi up` waits for a rollout: a surging rollout readies pods one after another, each within
    the progress deadline, so up to `max_replicas` deadlines (Pulumi's own default is 10 minutes)."""
    if "progress_deadline_seconds" not in args:
        return pulumi.ResourceOptions()
    total = f"{args['progress_deadline_seconds'] * args['scaling']['max_replicas']}s"
    return pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create=total, update=total))


# Name resolution, wherever the cluster runs its DNS pods (kube-dns and CoreDNS both carry this label).
DNS_EGRESS = {
    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
}


def network_policy_spec(
    pod_labels: dict[str, str],
    clients: Optional[list[dict[str, Any]]],
    ports: Optional[list[dict[str, Any]]],
    destinations: Optional[list[dict[str, Any]]] = None,
) -> dict[str, Any]:
    """Ingress to the selected pods from `clients` only (on `ports`, or any port when None), and egress from them
    to `destinations` and DNS only; None leaves that direction open. No clients admits nobody: a rule with an
    empty `from` would admit every source instead."""
    spec: dict[str, Any] = {"podSelector": {"matchLabels": pod_labels}, "policyTypes": []}
    if clients is not None:
        rule: dict[str, Any] = {"from": clients}
        if ports is not None:
            rule["ports"] = ports
        spec["policyTypes"].append("Ingress")
        spec["ingress"] = [rule] if clients else []
    if destinations is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = [DNS_EGRESS, *destinations]
    return spec


def knative_features(pod_spec: dict[str, Any]) -> list[str]:
    """The `config-features` flags (each to be set to `enabled`) Knative needs before it accepts `pod_spec`.
    emptyDir volumes and several containers are enabled by default in Knative 1.15 and are not listed."""
    features = {flag for field, flag in _KNATIVE_POD_FEATURES.items() if pod_spec.get(field)}
    mounts = [
        mount
        for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]
        for mount in container.get("volumeMounts", [])
    ]
    for volume in pod_spec.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            features.add("kubernetes.podspec-persistent-volume-claim")
            if any(m["name"] == volume["name"] and not m.get("readOnly") for m in mounts):
                features.add("kubernetes.podspec-persistent-volume-write")
    return sorted(features)


# Pod security context fields Knative 1.15 refuses in a Service (its PodSecurityContextMask).
_KNATIVE_REFUSED_POD_SECURITY = {"fsGroupChangePolicy"}


def knative_pod_spec(pod_spec: dict[str, Any], port: int) -> dict[str, Any]:
    """The pod under Knative's rules: the serving port is unnamed (Knative names it); readiness and liveness
    probes carry no port (the queue proxy probes the serving port itself, and Knative points liveness at it),
    while a startup probe, which Knative passes to the kubelet untouched, names the port by number; fields Knative
    sets itself or refuses (the grace period, preStop hooks) are dropped."""
    # Copies of only what changes: the spec may hold Outputs (an image, an upstream URL), which cannot be deep-copied.
    spec = {key: value for key, value in pod_spec.items() if key != "terminationGracePeriodSeconds"}
    if "securityContext" in spec:
        spec["securityContext"] = {key: value for key, value in spec["securityContext"].items()
                                   if key not in _KNATIVE_REFUSED_POD_SECURITY}
    spec["containers"] = [_knative_container(container, port) for container in pod_spec["containers"]]
    spec["containers"][0]["ports"] = [{"containerPort": port}]
    return spec


def _knative_container(container: dict[str, Any], port: int) -> dict[str, Any]:
    # Knative's container schema has no `lifecycle` (the API server would prune it): its queue proxy keeps the
    # revision's pod serving while the ingress drops it, and Knative sets the grace period from the timeout.
    adapted = {key: value for key, value in container.items() if key != "lifecycle"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container and "httpGet" in container[probe]:
            http_get = {key: value for key, value in container[probe]["httpGet"].items() if key != "port"}
            if probe == "startupProbe":
                http_get["port"] = port
            adapted[probe] = {**container[probe], "httpGet": http_get}
    return adapted
