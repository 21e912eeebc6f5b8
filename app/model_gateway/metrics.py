"""Prometheus metrics of one gateway instance, kept in a registry of its own."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import gc_collector, platform_collector, process_collector

# Model calls range from milliseconds (cached, tiny models) to minutes (long generations on a CPU).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        # A registry per instance, so several gateways in one process (tests) don't share counters.
        self.registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)

        self.requests = Counter(
            "gateway_requests",
            "HTTP requests answered, by route, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response (whole streams included).",
            ["route", "method"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.stream_first_byte = Histogram(
            "gateway_stream_first_byte_seconds",
            "Time from receiving a request to relaying the first byte of its event-stream response.",
            ["route"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.requests_in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being answered right now, open streams included (scrapes of /metrics are not).",
            registry=self.registry,
        )
        self.model_requests = Counter(
            "gateway_model_requests",
            "Requests naming a served model, by model and status code (unknown models are answered 404 first, so "
            "the model label only takes served model ids).",
            ["model", "status"],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "gateway_model_ready",
            "Whether the engine of each served model could answer for it (1) or not (0), at the last /ready check.",
            ["model"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream failures, by route, model (empty when the model server chooses the model) and reason: "
            "timeout, unreachable, connection_error, server_error (HTTP 5xx) or interrupted (failed while relaying "
            "a response).",
            ["route", "model", "reason"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens the upstream reported in `usage`, by model and kind (prompt or completion).",
            ["model", "kind"],
            registry=self.registry,
        )

        self.requests_waiting = Gauge(
            "gateway_requests_waiting",
            "Requests waiting in the gateway for a replica of the model to admit them (every replica at its in-flight "
            "limit, or none ready): the queue an autoscaler can scale the model on.",
            ["model"],
            registry=self.registry,
        )
        self.model_replicas = Gauge(
            "gateway_model_replicas",
            "Replicas of the model the gateway routes to (the ready pods it discovered, or the one upstream).",
            ["model"],
            registry=self.registry,
        )
        self.replica_in_flight = Gauge(
            "gateway_replica_requests_in_flight",
            "Requests the gateway has in flight on each replica of a model (replica: its address).",
            ["model", "replica"],
            registry=self.registry,
        )
        self.replica_chosen = Counter(
            "gateway_replica_chosen",
            "Requests routed to each replica of a model.",
            ["model", "replica"],
            registry=self.registry,
        )
        self.replica_prefix_hits = Counter(
            "gateway_replica_prefix_hits",
            "Requests the prefix policy routed to the replica their prompt's prefix maps to (not spilled to another "
            "for load).",
            ["model", "replica"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
