"""Per-request metrics, request ids and the structured request log, as one ASGI middleware.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware) so streamed responses pass through untouched and
the measured duration runs to the last byte actually sent.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import GatewayMetrics

log = logging.getLogger("model_gateway.requests")

REQUEST_ID_HEADER = "x-request-id"
MODEL_STATE = "model"
"""Key of the request state under which the app records the served model a request names, for its metrics and
log (never an unknown model's name, which a client chooses freely)."""
# A caller's request id is kept (so one id follows a call across services) when it is a sane token.
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes arrive every few seconds; logging them at info would drown the API traffic.
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
# A scrape is not counted in flight: it would always read its own request in the gauge.
_METRICS_PATH = "/metrics"
_UNMATCHED_ROUTE = "unmatched"


def request_id(scope: Scope) -> str:
    return scope["state"]["request_id"]


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        incoming_id = Headers(scope=scope).get(REQUEST_ID_HEADER)
        scope.setdefault("state", {})["request_id"] = (
            incoming_id if incoming_id and _ACCEPTED_REQUEST_ID.fullmatch(incoming_id) else uuid.uuid4().hex
        )
        status = 500  # what the client gets if the app fails before starting a response
        event_stream = False
        first_byte_seen = False

        async def send_observed(message: Message) -> None:
            nonlocal status, event_stream, first_byte_seen
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id(scope)
                event_stream = headers.get("content-type", "").startswith("text/event-stream")
            elif (
                message["type"] == "http.response.body" and event_stream and not first_byte_seen and message.get("body")
            ):
                first_byte_seen = True
                self.metrics.stream_first_byte.labels(_route(scope)).observe(time.perf_counter() - started)
            await send(message)

        counted_in_flight = scope["path"] != _METRICS_PATH
        if counted_in_flight:
            self.metrics.requests_in_flight.inc()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            if counted_in_flight:
                self.metrics.requests_in_flight.dec()
            duration = time.perf_counter() - started
            route = _route(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_duration.labels(route, scope["method"]).observe(duration)
            model = scope["state"].get(MODEL_STATE)
            if model is not None:
                self.metrics.model_requests.labels(model, str(status)).inc()
            log.log(
                logging.DEBUG if scope["path"] in _QUIET_PATHS else logging.INFO,
                "request",
                extra={
                    "request_id": request_id(scope),
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "client": scope["client"][0] if scope.get("client") else None,
                    **({"model": model} if model is not None else {}),
                    **({"usage": scope["state"]["usage"]} if "usage" in scope["state"] else {}),
                },
            )


def _route(scope: Scope) -> str:
    # The route template Starlette matched, never the raw path: raw paths would make label values unbounded.
    route = scope.get("route")
    return getattr(route, "path", None) or _UNMATCHED_ROUTE
