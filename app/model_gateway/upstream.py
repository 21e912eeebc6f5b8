"""The upstream model servers (an engine per model): relaying API calls to them, and mapping their failures to
clear HTTP errors."""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable, NamedTuple

import aiohttp
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from .errors import error_event, error_response, upstream_client_error
from .metrics import GatewayMetrics
from .routing import UPSTREAM_KEEPALIVE_SECONDS, ModelRoute, Replica
from .settings import Settings
from .usage import UsageObserver

log = logging.getLogger("model_gateway.upstream")

_HOP_BY_HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# The gateway's own server frames and dates the response it sends, and sets its own cache and buffering headers
# on streams.
_UNRELAYED_RESPONSE_HEADERS = _HOP_BY_HOP_HEADERS | {
    b"content-length",
    b"date",
    b"server",
    b"cache-control",
    b"x-accel-buffering",
}
# CORS is the gateway's to answer (GATEWAY_CORS_ALLOW_ORIGINS): an engine's own CORS headers (llama.cpp echoes
# any Origin) would contradict it, or duplicate it, which browsers reject.
_CORS_HEADER_PREFIX = b"access-control-"
_EVENT_STREAM_HEADERS = [
    # Tell caches and buffering reverse proxies (nginx ingress honours X-Accel-Buffering) to pass events through
    # as they come.
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# Only what describes the payload goes upstream: the client's credentials are for the gateway, not the model server.
_RELAYED_REQUEST_HEADERS = ("content-type", "accept")
# /ready answers a probe, which must not hang for a long model-load timeout.
_READINESS_TIMEOUT_SECONDS = 5.0
# How much of an upstream 5xx body goes into the log (the client gets a plain message instead).
_LOGGED_ERROR_BODY_BYTES = 1024
# Longest upstream 4xx body read to turn it into an OpenAI error; error bodies are a few hundred bytes.
_CLIENT_ERROR_BODY_BYTES = 64 * 1024
# Sent with a 503 whose model server named no time (llama.cpp answers 503 while it loads the model): clients
# that retry, like the OpenAI SDKs, wait this long instead of retrying at once.
_UNAVAILABLE_RETRY_AFTER_SECONDS = "5"
# Status recorded (in metrics and the request log) for a request whose client left before it was answered,
# as nginx does; the client never sees it.
CLIENT_CLOSED_REQUEST = 499
# Failures that happen before any byte of the request left: another replica can take the request safely.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class Target:
    """Where one request goes: the replica its model's route admitted it to (another, if that one refuses the
    connection), and the path on it."""

    __slots__ = ("route", "replica", "key", "path")

    def __init__(self, route: ModelRoute, replica: Replica, key: int | None, path: str) -> None:
        self.route = route
        self.replica: Replica | None = replica
        """The replica holding the request; None once released."""
        self.key = key
        self.path = path

    def retry_elsewhere(self) -> bool:
        """Moves the request to another replica after its own refused the connection; False when none admits it."""
        assert self.replica is not None
        self.replica = self.route.retry(self.replica, self.key)
        return self.replica is not None

    def release(self) -> None:
        if self.replica is not None:
            self.route.release(self.replica)
            self.replica = None


class Upstream:
    """The client of every engine: one connection pool, each call naming the replica's URL."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._auth_headers = (
            {"authorization": f"Bearer {settings.upstream_api_key}"} if settings.upstream_api_key else {}
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Opens the connection pool; aiohttp binds it to the running event loop, so this runs at startup."""
        self._session = aiohttp.ClientSession(
            # Model streams are long-lived: a pool cap would queue requests behind them invisibly; the model
            # server (or the platform's concurrency limit) is the place to bound load.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS),
            # sock_read bounds each wait for the server (headers, or the next piece of a body), not the whole
            # answer, so a long generation that keeps streaming is never cut.
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self._settings.connect_timeout_seconds,
                sock_read=self._settings.request_timeout_seconds,
            ),
            # Uncompressed bodies can be inspected for token usage while they are relayed.
            headers={"accept-encoding": "identity"},
            auto_decompress=False,
            # A cookie one model server response sets must not be sent on other clients' requests.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def relay(
        self, scope: Scope, receive: Receive, send: Send, target: Target, route: str, model: str, body: bytes,
        request_id: str, streamed: bool,
    ) -> None:
        """Sends the request to the target replica and relays the answer to the client as it arrives; the replica
        is held until the answer is complete. When the client leaves first, the upstream request is closed, so a
        model server that stops on disconnect frees its slot. `model` labels the metrics: a served model id, or
        empty when the model server chooses the model. A `streamed` request's connection is not reused."""
        client_headers = Headers(scope=scope)
        headers = {name: client_headers[name] for name in _RELAYED_REQUEST_HEADERS if name in client_headers}
        headers["x-request-id"] = request_id
        if streamed:
            # llama.cpp's server closes the connection after a streamed answer although its headers say
            # keep-alive. Pooled, the connection went to the next request for the replica (at once, to one
            # waiting for admission), which then failed with 502; asked to close, the server says so in its
            # answer and the connection is not pooled. A new connection costs far less than a stream.
            headers["connection"] = "close"
        headers.update(self._auth_headers)
        assert self._session is not None, "start() runs at startup"
        exchange = _Exchange(self._session, self._settings, self._metrics, scope, send, route, model)
        try:
            relaying = asyncio.ensure_future(exchange.run(scope["method"], target, body, headers))
            if not await _unless_client_leaves(relaying, receive, exchange):
                log.info("client left before the answer was complete", extra={"route": route})
                if not exchange.started:
                    # Recorded only: the connection is gone.
                    await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
        finally:
            target.release()

    async def readiness_problem(self, base_url: str, model: str | None) -> str | None:
        """Why the engine at `base_url` cannot serve now (unreachable, failing, or not listing `model`), or
        None."""
        assert self._session is not None, "start() runs at startup"
        timeout = aiohttp.ClientTimeout(total=min(_READINESS_TIMEOUT_SECONDS, self._settings.request_timeout_seconds))
        try:
            async with self._session.get(base_url + "/models", headers=self._auth_headers, timeout=timeout) as response:
                if response.status != 200:
                    return f"model server answered /models with HTTP {response.status}"
                if model is None:
                    return None
                listed = {entry["id"] for entry in (await response.json(content_type=None))["data"]}
        except asyncio.TimeoutError:
            return f"the model server did not answer /models within {timeout.total:g}s"
        except aiohttp.ClientError as error:
            return _classify(error, self._settings).message
        except (ValueError, KeyError, TypeError):
            return "model server's /models answer is not an OpenAI model list"
        if model not in listed:
            return f"model {model!r} is not listed by the model server"
        return None


class Failure(NamedTuple):
    status_code: int
    reason: str
    """Label of gateway_upstream_errors_total."""
    error_type: str
    message: str


_TransportError = (aiohttp.ClientError, asyncio.TimeoutError)


def _classify(error: BaseException, settings: Settings) -> Failure:
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return Failure(
            504,
            "timeout",
            "upstream_timeout",
            f"could not connect to the model server within {settings.connect_timeout_seconds:g}s",
        )
    if isinstance(error, asyncio.TimeoutError):
        return Failure(
            504,
            "timeout",
            "upstream_timeout",
            f"the model server sent nothing for {settings.request_timeout_seconds:g}s",
        )
    if isinstance(error, aiohttp.ClientConnectorError):
        return Failure(502, "unreachable", "upstream_unavailable", "cannot connect to the model server")
    return Failure(502, "connection_error", "upstream_error", "the connection to the model server failed")


async def _unless_client_leaves(work: asyncio.Task, receive: Receive, exchange: _Exchange) -> bool:
    """Awaits `work`, cancelling it when the client disconnects before the response is complete. True when the
    work ran to its end, False when the client left; a cancellation of the caller itself propagates."""

    async def client_disconnect() -> None:
        # The request body has been read, so the only message left is the disconnect (which uvicorn also
        # reports once the response is complete: hence the check of `exchange.complete`).
        while (await receive())["type"] != "http.disconnect":
            pass

    watching = asyncio.ensure_future(client_disconnect())
    watching.add_done_callback(lambda _: exchange.complete or work.cancel())
    try:
        await work
        return True
    except asyncio.CancelledError:
        if watching.done() and not watching.cancelled() and asyncio.current_task().cancelling() == 0:
            return False
        raise
    finally:
        watching.cancel()


class _Exchange:
    """One relayed call: the upstream request, and its response relayed chunk by chunk as it arrives, never
    buffered whole. The upstream response is closed however this ends (done, client gone, server shutting
    down), which closes the upstream connection mid-answer, so a model server can stop generating."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        metrics: GatewayMetrics,
        scope: Scope,
        send: Send,
        route: str,
        model: str,
    ) -> None:
        self._session = session
        self._settings = settings
        self._metrics = metrics
        self._scope = scope
        self._send = send
        self._route = route
        self._model = model
        self.started = False
        """Whether the response status has been sent to the client."""
        self.complete = False
        """Whether the whole response has been sent to the client."""

    async def run(self, method: str, target: Target, body: bytes, headers: dict[str, str]) -> None:
        try:
            while True:
                assert target.replica is not None
                try:
                    response = await self._session.request(
                        method, target.replica.base_url + target.path, data=body, headers=headers)
                    break
                except _NOT_SENT as error:
                    failed = target.replica.label
                    if not target.retry_elsewhere():
                        raise
                    log.warning("replica refused the connection; trying another", extra={
                        "route": self._route, "model": self._model, "replica": failed, "error": repr(error)})
        except _TransportError as error:
            failure = _classify(error, self._settings)
            self._metrics.upstream_errors.labels(self._route, self._model, failure.reason).inc()
            log.warning(
                "upstream request failed",
                extra={"route": self._route, "model": self._model, "reason": failure.reason, "error": repr(error)},
            )
            await self._answer(error_response(failure.status_code, failure.message, failure.error_type))
            return
        try:
            if response.status >= 500:
                await self._answer(await self._server_error(response))
            elif response.status >= 400:
                await self._answer(await self._client_error(response))
            else:
                await self._relay(response)
        finally:
            # release() keeps a connection whose answer was read to its end, and closes any other.
            response.release()

    async def _answer(self, response: Response) -> None:
        await response(self._scope, _no_receive, self._sending)

    async def _sending(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif not message.get("more_body", False):
            self.complete = True
        await self._send(message)

    async def _relay(self, response: aiohttp.ClientResponse) -> None:
        content_type = response.headers.get("content-type", "")
        is_event_stream = content_type.startswith("text/event-stream")
        headers = relayed_headers(response.raw_headers)
        if is_event_stream:
            headers += _EVENT_STREAM_HEADERS
        await self._sending({"type": "http.response.start", "status": response.status, "headers": headers})
        usage = UsageObserver(content_type)
        try:
            async for chunk in response.content.iter_any():
                # Read before it is sent: the engine spent the tokens whether or not the client stays for the end.
                usage.feed(chunk)
                # The last piece carries the end of the response, which saves the client a separate write.
                await self._sending(
                    {"type": "http.response.body", "body": chunk, "more_body": not response.content.at_eof()}
                )
        except _TransportError as error:
            failure = _classify(error, self._settings)
            self._metrics.upstream_errors.labels(self._route, self._model, "interrupted").inc()
            log.warning(
                "upstream failed while relaying a response",
                extra={"route": self._route, "model": self._model, "reason": failure.reason, "error": repr(error)},
            )
            if not is_event_stream:
                raise  # aborts the connection: a truncated body must not look complete
            await self._sending(
                {"type": "http.response.body", "body": error_event(failure.message, failure.error_type)}
            )
        else:
            if not self.complete:
                await self._sending({"type": "http.response.body", "body": b""})
        finally:
            # Also when a send fails because the client left after the last piece.
            self._record_usage(usage)

    def _record_usage(self, observer: UsageObserver) -> None:
        usage = observer.finish()
        if usage is None:
            return
        tokens = self._metrics.tokens
        # The routed model, not the `model` the answer names: an engine (or a client, through it) could otherwise
        # add label values at will.
        tokens.labels(self._model, "prompt").inc(usage.prompt_tokens)
        tokens.labels(self._model, "completion").inc(usage.completion_tokens)
        self._scope.setdefault("state", {})["usage"] = usage._asdict()

    async def _client_error(self, response: aiohttp.ClientResponse) -> Response:
        """The model server's 4xx answer with its status and message, in OpenAI's error format."""
        try:
            body = await _body_start(response, _CLIENT_ERROR_BODY_BYTES)
        except _TransportError:
            body = b""  # the status alone still tells the client what kind of error it made
        return JSONResponse(upstream_client_error(response.status, body), status_code=response.status)

    async def _server_error(self, response: aiohttp.ClientResponse) -> Response:
        status = response.status
        try:
            excerpt = await _body_start(response, _LOGGED_ERROR_BODY_BYTES)
        except _TransportError:
            excerpt = b""  # the status alone says what the client needs; the excerpt is a courtesy for the log
        self._metrics.upstream_errors.labels(self._route, self._model, "server_error").inc()
        log.warning(
            "upstream server error",
            extra={
                "route": self._route,
                "model": self._model,
                "upstream_status": status,
                "upstream_body": excerpt.decode(errors="replace"),
            },
        )
        # 503 (overloaded, model loading) and 504 keep their meaning for clients that retry; any other 5xx is
        # the gateway's upstream failing: 502.
        retry_after = response.headers.get("retry-after") or (
            _UNAVAILABLE_RETRY_AFTER_SECONDS if status == 503 else None
        )
        return error_response(
            status if status in (503, 504) else 502,
            f"the model server failed with HTTP {status}",
            "upstream_error",
            headers={"retry-after": retry_after} if retry_after else None,
        )


async def _body_start(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The first `limit` bytes of the response body (all of it when shorter)."""
    start = bytearray()
    async for chunk in response.content.iter_any():
        start += chunk
        if len(start) >= limit:
            break
    return bytes(start[:limit])


def relayed_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream response headers the client gets: names lowercased (ASGI's form, in which the middleware
    recognises and replaces a header instead of adding a second one), each once (repeats joined), without
    hop-by-hop headers (including those the Connection header names), CORS headers or what the gateway sets
    itself."""
    lowered = [(name.lower(), value) for name, value in raw_headers]
    connection_options = {
        option.strip().lower().encode("latin-1")
        for name, value in lowered
        if name == b"connection"
        for option in value.decode("latin-1").split(",")
    }
    relayed: dict[bytes, bytes] = {}
    for name, value in lowered:
        if name in _UNRELAYED_RESPONSE_HEADERS or name in connection_options or name.startswith(_CORS_HEADER_PREFIX):
            continue
        # A repeated header means the same as one with the values joined by commas (RFC 9110, section 5.3).
        relayed[name] = relayed[name] + b", " + value if name in relayed else value
    return list(relayed.items())


async def _no_receive() -> Message:
    raise RuntimeError("the request body has been read already")

