"""The metrics pipeline: which Prometheus holds the inference signals, how it scrapes them, and KEDA."""

from __future__ import annotations

from typing import Annotated, Iterator, Literal, Optional

from .base import ImageRef, LabelKey, LabelValue, Namespace, Problem, Section, join_key, matching
from .runner import HubUrl

PROMETHEUS_IMAGE = "quay.io/prometheus/prometheus:v3.5.0"
KUBE_STATE_METRICS_IMAGE = "registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.16.0"
AwsRegion = Annotated[str, matching(r"[a-z]{2}(-[a-z]+)+-[0-9]", "an AWS region such as us-east-1")]


class MetricsConfig(Section):
    """Where the inference signals (requests waiting and running, tokens, errors) are scraped to and queried from,
    for autoscaling and the dashboard. Kubernetes runtime only."""

    prometheus_url: Optional[HubUrl] = None
    """Base URL of an existing Prometheus's query API that KEDA and the dashboard read (e.g.
    `http://kube-prometheus-stack-prometheus.monitoring:9090`, or an Amazon Managed Service for Prometheus
    workspace's `https://aps-workspaces.<region>.amazonaws.com/workspaces/<id>`). Unset: the stack installs a
    pinned Prometheus and kube-state-metrics in `metrics.namespace` and scrapes with its own scrape config."""

    scrape: Optional[Literal["podMonitor", "scrapeConfig"]] = None
    """How an existing Prometheus learns what to scrape: `podMonitor` (the Prometheus Operator's CRDs exist in the
    cluster: one PodMonitor per scraped workload, which the program cannot detect at preview, so it is said here)
    or `scrapeConfig` (a ConfigMap `model-stack-scrape-configs` in `metrics.namespace` holding the scrape jobs,
    for a Prometheus or agent configured by hand). Only with prometheusUrl; unset then: podMonitor."""

    namespace: Namespace = "monitoring"
    """Namespace of the installed Prometheus, or where the existing scraper runs (its pods are admitted to the
    scraped ports); the dashboard ConfigMap goes here too (Grafana's sidecar must watch it)."""

    monitor_labels: dict[LabelKey, LabelValue] = {}
    """Labels on the PodMonitors, for a Prometheus that selects them by label (kube-prometheus-stack:
    `release: <its release name>`)."""

    aws_region: Optional[AwsRegion] = None
    """prometheusUrl is Amazon Managed Service for Prometheus in this region: KEDA signs its queries with SigV4 as
    its own pod identity (the keda-operator service account needs an IAM role with aps:QueryMetrics)."""

    prometheus_image: Optional[ImageRef] = None
    """Image of the installed Prometheus; unset: `quay.io/prometheus/prometheus:v3.5.0`. Production needs it
    digest-pinned."""

    kube_state_metrics_image: Optional[ImageRef] = None
    """Image of the installed kube-state-metrics (replicas wanted and ready); unset:
    `registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.16.0`. Production needs it digest-pinned."""

    install_keda: bool = True
    """Install KEDA 2.17.2 (from the release manifest kept in this repository, images through the registry
    mapping) when a model scales on requests. `false`: KEDA is already in the cluster (ScaledObjects are applied
    to it as they are)."""

    @property
    def installs_prometheus(self) -> bool:
        return self.prometheus_url is None

    @property
    def scrape_mode(self) -> str:
        return "install" if self.installs_prometheus else (self.scrape or "podMonitor")

    def installed_images(self, path: str) -> Iterator[tuple[str, str]]:
        """Images the installed Prometheus deploys that this config leaves to the defaults, keyed by the setting
        that would override each."""
        if not self.installs_prometheus:
            return
        if self.prometheus_image is None:
            yield join_key(path, "prometheusImage"), PROMETHEUS_IMAGE
        if self.kube_state_metrics_image is None:
            yield join_key(path, "kubeStateMetricsImage"), KUBE_STATE_METRICS_IMAGE

    def images(self) -> list[str]:
        """The installed Prometheus's images, as configured (none for an existing Prometheus)."""
        if not self.installs_prometheus:
            return []
        return [self.prometheus_image or PROMETHEUS_IMAGE, self.kube_state_metrics_image or KUBE_STATE_METRICS_IMAGE]

    def check(self, path: str) -> Iterator[Problem]:
        if self.installs_prometheus:
            for name, value in (("scrape", self.scrape), ("awsRegion", self.aws_region)):
                if value is not None:
                    yield Problem(join_key(path, name),
                                  "applies to an existing Prometheus (metrics.prometheusUrl); the installed one "
                                  "scrapes with its own scrape config", value)
        else:
            for name in ("prometheus_image", "kube_state_metrics_image"):
                if getattr(self, name) is not None:
                    key = type(self).model_fields[name].alias
                    yield Problem(join_key(path, key),
                                  "applies to the Prometheus the stack installs; remove it or prometheusUrl",
                                  getattr(self, name))
        if self.monitor_labels and self.scrape_mode != "podMonitor":
            yield Problem(join_key(path, "monitorLabels"), "applies to PodMonitors (scrape: podMonitor)",
                          ", ".join(self.monitor_labels))
