"""The upstream model server: relaying API calls to it, and mapping its failures to clear HTTP errors."""

from __future__ import annotations

import logging
from typing import NamedTuple

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import error_event, error_response
from .metrics import GatewayMetrics
from .settings import Settings
from .usage import UsageObserver

log = logging.getLogger("model_gateway.upstream")

_HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The gateway's own server frames and dates the response it sends.
_UNRELAYED_RESPONSE_HEADERS = _HOP_BY_HOP_HEADERS | {"content-length", "date", "server"}
# Only what describes the payload goes upstream: the client's credentials are for the gateway, not the model server.
_RELAYED_REQUEST_HEADERS = ("content-type", "accept")
# /ready answers a probe, which must not hang for a long model-load timeout.
_READINESS_TIMEOUT_SECONDS = 5.0
# How much of an upstream 5xx body goes into the log (the client gets a plain message instead).
_LOGGED_ERROR_BODY_BYTES = 1024
# Status recorded (in metrics and the request log) for a request whose client left before it was answered,
# as nginx does; the client never sees it.
_CLIENT_CLOSED_REQUEST = 499


class Upstream:
    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._auth_headers = (
            {"authorization": f"Bearer {settings.upstream_api_key}"} if settings.upstream_api_key else {}
        )
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.request_timeout_seconds, connect=settings.connect_timeout_seconds),
            # Model streams are long-lived: a pool cap would queue requests behind them invisibly; the model
            # server (or the platform's concurrency limit) is the place to bound load.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            # Uncompressed bodies can be inspected for token usage while they are relayed.
            headers={"accept-encoding": "identity"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _url(self, path: str) -> str:
        return self._settings.upstream_base_url + path

    async def relay(self, request: Request, path: str, route: str, body: bytes, request_id: str) -> Response:
        headers = {name: request.headers[name] for name in _RELAYED_REQUEST_HEADERS if name in request.headers}
        headers["x-request-id"] = request_id
        headers.update(self._auth_headers)
        upstream_request = self._client.build_request(request.method, self._url(path), content=body, headers=headers)
        outcome = await self._send_while_client_waits(request, upstream_request)
        if outcome is None:
            log.info("client left before the model server answered", extra={"route": route})
            return Response(status_code=_CLIENT_CLOSED_REQUEST)
        if isinstance(outcome, httpx.TransportError):
            failure = _classify(outcome, self._settings)
            self._metrics.upstream_errors.labels(route, failure.reason).inc()
            log.warning(
                "upstream request failed", extra={"route": route, "reason": failure.reason, "error": repr(outcome)}
            )
            return error_response(failure.status_code, failure.message, failure.error_type)
        upstream_response = outcome
        if upstream_response.status_code >= 500:
            return await self._server_error(route, upstream_response)
        return RelayedResponse(upstream_response, route, self._metrics, self._settings)

    async def _send_while_client_waits(
        self, request: Request, upstream_request: httpx.Request
    ) -> httpx.Response | httpx.TransportError | None:
        """The upstream response once its headers arrive (or the error that prevented it), or None when the client
        disconnected first. A non-streamed answer can take minutes to generate: when nobody will read it, the
        upstream request is cancelled, which closes its connection and lets the model server stop."""
        outcome: httpx.Response | httpx.TransportError | None = None
        async with anyio.create_task_group() as waiting:

            async def send() -> None:
                nonlocal outcome
                try:
                    outcome = await self._client.send(upstream_request, stream=True)
                except httpx.TransportError as error:
                    outcome = error
                waiting.cancel_scope.cancel()

            async def watch_client() -> None:
                # The body has been read, so the only message left to receive is the disconnect.
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                waiting.cancel_scope.cancel()

            waiting.start_soon(send)
            waiting.start_soon(watch_client)
        return outcome

    async def readiness_problem(self, model: str | None) -> str | None:
        """Why the upstream cannot serve now (unreachable, failing, or not listing `model`), or None."""
        timeout = min(_READINESS_TIMEOUT_SECONDS, self._settings.request_timeout_seconds)
        try:
            response = await self._client.get(self._url("/models"), headers=self._auth_headers, timeout=timeout)
        except httpx.TransportError as error:
            return f"model server unreachable ({type(error).__name__})"
        if response.status_code != 200:
            return f"model server answered /models with HTTP {response.status_code}"
        if model is None:
            return None
        try:
            listed = {entry["id"] for entry in response.json()["data"]}
        except (ValueError, KeyError, TypeError):
            return "model server's /models answer is not an OpenAI model list"
        if model not in listed:
            return f"model {model!r} is not listed by the model server"
        return None

    async def _server_error(self, route: str, upstream_response: httpx.Response) -> Response:
        status = upstream_response.status_code
        excerpt = bytearray()
        try:
            async for chunk in upstream_response.aiter_raw():
                excerpt += chunk
                if len(excerpt) >= _LOGGED_ERROR_BODY_BYTES:
                    break
        except httpx.TransportError:
            pass  # the status alone says what the client needs; the excerpt is a courtesy for the log
        finally:
            await upstream_response.aclose()
        self._metrics.upstream_errors.labels(route, "server_error").inc()
        log.warning(
            "upstream server error",
            extra={
                "route": route,
                "upstream_status": status,
                "upstream_body": excerpt[:_LOGGED_ERROR_BODY_BYTES].decode(errors="replace"),
            },
        )
        # 503 (overloaded, model loading) and 504 keep their meaning for clients that retry; any other 5xx is
        # the gateway's upstream failing: 502.
        retry_after = upstream_response.headers.get("retry-after")
        return error_response(
            status if status in (503, 504) else 502,
            f"the model server failed with HTTP {status}",
            "upstream_error",
            headers={"retry-after": retry_after} if retry_after else None,
        )


class Failure(NamedTuple):
    status_code: int
    reason: str
    """Label of gateway_upstream_errors_total."""
    error_type: str
    message: str


def _classify(error: httpx.TransportError, settings: Settings) -> Failure:
    if isinstance(error, httpx.ConnectTimeout):
        return Failure(
            504,
            "timeout",
            "upstream_timeout",
            f"could not connect to the model server within {settings.connect_timeout_seconds:g}s",
        )
    if isinstance(error, httpx.TimeoutException):
        return Failure(
            504,
            "timeout",
            "upstream_timeout",
            f"the model server sent nothing for {settings.request_timeout_seconds:g}s",
        )
    if isinstance(error, httpx.ConnectError):
        return Failure(502, "unreachable", "upstream_unavailable", "cannot connect to the model server")
    return Failure(502, "connection_error", "upstream_error", "the connection to the model server failed")


class RelayedResponse(StreamingResponse):
    """An upstream response relayed chunk by chunk as it arrives, never buffered whole.

    The upstream response is closed however this ends (done, client gone, server shutting down), which closes
    the upstream connection mid-stream, so a model server stops generating for a client that left.
    """

    def __init__(
        self, upstream_response: httpx.Response, route: str, metrics: GatewayMetrics, settings: Settings
    ) -> None:
        content_type = upstream_response.headers.get("content-type", "")
        self._upstream_response = upstream_response
        self._route = route
        self._metrics = metrics
        self._settings = settings
        self._is_event_stream = content_type.startswith("text/event-stream")
        self._usage = UsageObserver(content_type)
        super().__init__(self._relay(), status_code=upstream_response.status_code)
        self.raw_headers = [
            (name, value)
            for name, value in upstream_response.headers.raw
            if name.lower().decode("latin-1") not in _UNRELAYED_RESPONSE_HEADERS
        ]
        if self._is_event_stream:
            # Tell caches and buffering reverse proxies (nginx ingress honours X-Accel-Buffering) to pass
            # events through as they come.
            self.raw_headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: when the server cancels this task on shutdown, the upstream must still be closed.
            with anyio.CancelScope(shield=True):
                await self._upstream_response.aclose()
            self._record_usage(scope)

    async def _relay(self):
        try:
            async for chunk in self._upstream_response.aiter_raw():
                yield chunk
                self._usage.feed(chunk)
        except httpx.TransportError as error:
            failure = _classify(error, self._settings)
            self._metrics.upstream_errors.labels(self._route, "interrupted").inc()
            log.warning(
                "upstream failed while relaying a response",
                extra={"route": self._route, "reason": failure.reason, "error": repr(error)},
            )
            if not self._is_event_stream:
                raise  # aborts the connection: a truncated body must not look complete
            yield error_event(failure.message, failure.error_type)

    def _record_usage(self, scope: Scope) -> None:
        usage = self._usage.finish()
        if usage is None:
            return
        tokens = self._metrics.tokens
        tokens.labels(usage.model, "prompt").inc(usage.prompt_tokens)
        tokens.labels(usage.model, "completion").inc(usage.completion_tokens)
        scope.setdefault("state", {})["usage"] = usage._asdict()
