"""Where the stack's inference metrics go: a pinned Prometheus it installs, or an existing one it feeds.

What is scraped: each engine that exports metrics (vLLM; llama.cpp with `--metrics`) on its API port, and the
gateway (per-model requests, tokens, errors, and the waiting and in-flight gauges that stand in for engines that
export nothing). Every series gets the pod's `namespace` and its `workload` (the pod's `app.kubernetes.io/name`),
which the autoscaler's and the dashboard's queries select on.

- `install`: Prometheus and kube-state-metrics (for replicas wanted and ready), rendered here as plain objects with
  pinned images sent through the registry mapping (no chart, no download), scraping through a scrape config in
  their ConfigMap. Both read only the serving namespace (a Role there, no cluster-wide access). Storage is an
  emptyDir: the history serves autoscaling and a dashboard's hours, not long-term retention.
- `podMonitor`: an existing Prometheus run by the Prometheus Operator: a PodMonitor (monitoring.coreos.com/v1) per
  scraped workload. The program cannot ask a cluster at preview whether those CRDs exist, so the config says so.
- `scrapeConfig`: an existing Prometheus (or agent, such as an ADOT collector writing into Amazon Managed Service
  for Prometheus) configured by hand: the scrape jobs as a ConfigMap for its operator to include.

In every mode a NetworkPolicy admits the scraper's namespace to the scraped pods' ports (the workloads' own
policies admit only their callers; policies add up), and the dashboard is a ConfigMap Grafana's sidecar loads.
"""

import hashlib
from typing import Any, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import yaml

from .dashboard import SIDECAR_LABEL
from .inference_signals import WORKLOAD_LABEL
from .options import child_options
from .serving_workload import SELECTOR_LABEL, STOP_FIRST_ROLLOUT, isolated_pod, RESTRICTED_CONTAINER, workload_labels

PROMETHEUS = "prometheus"
KUBE_STATE_METRICS = "kube-state-metrics"
PROMETHEUS_PORT = 9090
KUBE_STATE_METRICS_PORT = 8080
SCRAPE_INTERVAL_SECONDS = 15
RETENTION = "3d"
# The `nobody` user both images run as.
RUN_AS_USER = 65534
SCRAPE_CONFIG_KEY = "scrape-configs.yaml"
DASHBOARD_KEY = "model-stack.json"


class ScrapeTarget(TypedDict):
    workload: str
    """The workload's name (its pods' `app.kubernetes.io/name`)."""

    container: str
    """Name of the container serving the metrics."""

    port: int
    """Container port the metrics are served on."""

    path: str
    """HTTP path of the metrics."""

    isolated: bool
    """Whether the workload's own NetworkPolicy restricts who reaches it. The scraper is admitted to those only:
    a policy selecting a workload open to every client would make the scraper its only client."""


class MetricsPipelineArgs(TypedDict):
    mode: str
    """`install`, `podMonitor` or `scrapeConfig` (see the module's description)."""

    namespace: str
    """Namespace of the installed Prometheus, or of the existing scraper (admitted to the scraped ports), and of
    the dashboard ConfigMap."""

    serving_namespace: str
    """Namespace of the scraped workloads."""

    targets: list[ScrapeTarget]
    """Workloads to scrape."""

    dashboard: str
    """The Grafana dashboard JSON."""

    prometheus_image: NotRequired[str]
    """`install`: Prometheus image, as the cluster pulls it."""

    kube_state_metrics_image: NotRequired[str]
    """`install`: kube-state-metrics image, as the cluster pulls it."""

    monitor_labels: NotRequired[dict[str, str]]
    """`podMonitor`: labels the existing Prometheus selects PodMonitors by (kube-prometheus-stack: `release`)."""



def scrape_configs(serving_namespace: str, targets: list[ScrapeTarget]) -> list[dict[str, Any]]:
    """Prometheus scrape jobs (kubernetes_sd, pod role) for the targets, one job per workload."""
    jobs = []
    for target in targets:
        jobs.append({
            "job_name": target["workload"],
            "metrics_path": target["path"],
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [serving_namespace]}}],
            "relabel_configs": [
                {"action": "keep",
                 "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name",
                                   "__meta_kubernetes_pod_container_name",
                                   "__meta_kubernetes_pod_container_port_number"],
                 "regex": f"{target['workload']};{target['container']};{target['port']}"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "target_label": WORKLOAD_LABEL},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        })
    return jobs


def prometheus_config(serving_namespace: str, targets: list[ScrapeTarget], kube_state_metrics: str) -> dict[str, Any]:
    """The installed Prometheus's configuration: the targets, and kube-state-metrics at `kube_state_metrics`
    (host:port), whose series keep their own `namespace` label (the workload's, not kube-state-metrics')."""
    return {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s", "evaluation_interval": f"{SCRAPE_INTERVAL_SECONDS}s"},
        "scrape_configs": [
            *scrape_configs(serving_namespace, targets),
            {"job_name": KUBE_STATE_METRICS, "honor_labels": True, "static_configs": [{"targets": [kube_state_metrics]}]},
        ],
    }


def query_url(namespace: str) -> str:
    """Base URL of the query API of the Prometheus installed in `namespace`."""
    return f"http://{PROMETHEUS}.{namespace}.svc.cluster.local:{PROMETHEUS_PORT}"


class MetricsPipeline(pulumi.ComponentResource):
    """Prometheus (installed, or an existing one fed with PodMonitors or scrape jobs) and the stack's dashboard.
    The installed one answers queries at `query_url(namespace)`."""

    def __init__(self, name: str, args: MetricsPipelineArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:MetricsPipeline", name, None, opts)
        child = child_options(self, opts)
        mode = args["mode"]
        namespace = args["namespace"]
        serving = args["serving_namespace"]
        ready: list[pulumi.Resource] = []
        if mode == "install":
            monitoring = k8s.core.v1.Namespace(
                namespace,
                metadata={"name": namespace, "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}},
                opts=child,
            )
            ready.append(monitoring)
            in_namespace = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[monitoring]))
            self._install(name, args, in_namespace)
        elif mode == "podMonitor":
            for target in args["targets"]:
                k8s.apiextensions.CustomResource(
                    f"{name}-{target['workload']}",
                    api_version="monitoring.coreos.com/v1",
                    kind="PodMonitor",
                    metadata={"name": target["workload"], "namespace": serving,
                              "labels": {**workload_labels(target["workload"]), **args.get("monitor_labels", {})}},
                    spec={
                        "selector": {"matchLabels": workload_labels(target["workload"])},
                        "podMetricsEndpoints": [{
                            "portNumber": target["port"],
                            "path": target["path"],
                            "interval": f"{SCRAPE_INTERVAL_SECONDS}s",
                            "relabelings": [{
                                "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                                "targetLabel": WORKLOAD_LABEL,
                            }],
                        }],
                    },
                    opts=child,
                )
        else:
            k8s.core.v1.ConfigMap(
                f"{name}-scrape-configs",
                metadata={"name": "model-stack-scrape-configs", "namespace": namespace},
                data={SCRAPE_CONFIG_KEY: yaml.safe_dump(scrape_configs(serving, args["targets"]), sort_keys=False)},
                opts=child,
            )
        dashboard_opts = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=ready))
        label, value = SIDECAR_LABEL
        k8s.core.v1.ConfigMap(
            f"{name}-dashboard",
            metadata={"name": "model-stack-dashboard", "namespace": namespace, "labels": {label: value}},
            data={DASHBOARD_KEY: args["dashboard"]},
            opts=dashboard_opts,
        )
        isolated = [target for target in args["targets"] if target["isolated"]]
        if isolated:
            scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
            if mode == "install":
                scraper["podSelector"] = {"matchLabels": workload_labels(PROMETHEUS)}
            k8s.networking.v1.NetworkPolicy(
                f"{name}-scrape",
                metadata={"name": "metrics-scrape", "namespace": serving},
                spec={
                    "podSelector": {"matchExpressions": [{
                        "key": SELECTOR_LABEL, "operator": "In",
                        "values": sorted({target["workload"] for target in isolated})}]},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [scraper],
                                 "ports": [{"port": port, "protocol": "TCP"}
                                           for port in sorted({target["port"] for target in isolated})]}],
                },
                opts=child,
            )
        self.register_outputs({})

    def _install(self, name: str, args: MetricsPipelineArgs, opts: pulumi.ResourceOptions) -> None:
        namespace, serving = args["namespace"], args["serving_namespace"]
        kube_state_metrics = f"{KUBE_STATE_METRICS}.{namespace}.svc:{KUBE_STATE_METRICS_PORT}"
        config = yaml.safe_dump(prometheus_config(serving, args["targets"], kube_state_metrics), sort_keys=False)
        reads = {
            PROMETHEUS: [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
            KUBE_STATE_METRICS: [
                {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "watch"]},
                {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["list", "watch"]},
            ],
        }
        for app, rules in reads.items():
            k8s.core.v1.ServiceAccount(f"{name}-{app}", metadata={"name": app, "namespace": namespace}, opts=opts)
            # Only the serving namespace is read: a Role there, bound to the account in the monitoring namespace.
            k8s.rbac.v1.Role(f"{name}-{app}", metadata={"name": f"{app}-{namespace}", "namespace": serving},
                             rules=rules, opts=opts)
            k8s.rbac.v1.RoleBinding(
                f"{name}-{app}", metadata={"name": f"{app}-{namespace}", "namespace": serving},
                role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{app}-{namespace}"},
                subjects=[{"kind": "ServiceAccount", "name": app, "namespace": namespace}], opts=opts,
            )
        k8s.core.v1.ConfigMap(f"{name}-{PROMETHEUS}", metadata={"name": PROMETHEUS, "namespace": namespace},
                              data={"prometheus.yml": config}, opts=opts)
        containers = {
            PROMETHEUS: {
                "name": PROMETHEUS,
                "image": args["prometheus_image"],
                "args": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                         f"--storage.tsdb.retention.time={RETENTION}"],
                "ports": [{"name": "http", "containerPort": PROMETHEUS_PORT, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/-/ready", "port": "http"}, "periodSeconds": 10},
                "livenessProbe": {"httpGet": {"path": "/-/healthy", "port": "http"}, "periodSeconds": 30},
                "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/prometheus", "readOnly": True},
                                 {"name": "data", "mountPath": "/prometheus"}],
                "securityContext": RESTRICTED_CONTAINER,
            },
            KUBE_STATE_METRICS: {
                "name": KUBE_STATE_METRICS,
                "image": args["kube_state_metrics_image"],
                "args": [f"--namespaces={serving}", "--resources=deployments,horizontalpodautoscalers",
                         f"--port={KUBE_STATE_METRICS_PORT}", "--telemetry-port=8081"],
                "ports": [{"name": "http", "containerPort": KUBE_STATE_METRICS_PORT, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8081}, "periodSeconds": 10},
                "livenessProbe": {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": 30},
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                "securityContext": RESTRICTED_CONTAINER,
            },
        }
        volumes = {
            PROMETHEUS: [{"name": "config", "configMap": {"name": PROMETHEUS}}, {"name": "data", "emptyDir": {}}],
            KUBE_STATE_METRICS: [],
        }
        for app, container in containers.items():
            labels = workload_labels(app)
            pod = {**isolated_pod(RUN_AS_USER, fsGroup=RUN_AS_USER), "automountServiceAccountToken": True,
                   "serviceAccountName": app, "containers": [container],
                   **({"volumes": volumes[app]} if volumes[app] else {})}
            # A new scrape config rolls the pod (Prometheus reads it at start).
            annotations = {"model-stack/config-sha256": hashlib.sha256(config.encode()).hexdigest()} if app == PROMETHEUS else {}
            k8s.apps.v1.Deployment(
                f"{name}-{app}",
                metadata={"name": app, "namespace": namespace, "labels": labels},
                spec={"replicas": 1, "selector": {"matchLabels": labels},
                      # One emptyDir per pod: a second Prometheus during a rollout would only scrape twice.
                      "strategy": STOP_FIRST_ROLLOUT,
                      "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod}},
                opts=opts,
            )
            port = PROMETHEUS_PORT if app == PROMETHEUS else KUBE_STATE_METRICS_PORT
            k8s.core.v1.Service(
                f"{name}-{app}",
                metadata={"name": app, "namespace": namespace, "labels": labels},
                spec={"selector": labels, "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]},
                opts=opts,
            )
