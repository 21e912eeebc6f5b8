"""The gateway's ASGI application: routes, authentication, limits and middleware."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import time
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from .auth import ApiKeys
from .errors import Rejected, error_response
from .logs import configure_logging
from .metrics import GatewayMetrics
from .observability import MODEL_STATE, REQUEST_ID_HEADER, ObservabilityMiddleware, request_id
from .request_checks import model_not_found, requested_model
from .routing import DnsDiscovery, ModelRoute, Replica, Resolver, prefix_key, resolve_host
from .settings import Routing, Settings, load_settings
from .upstream import CLIENT_CLOSED_REQUEST, Target, Upstream

log = logging.getLogger("model_gateway")

# Gateway route -> path appended to the base URL of the engine serving the model. Both take a JSON body naming a
# model.
RELAYED_ROUTES = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    # Embedding models (llama.cpp with --embeddings, vLLM's pooling models, Ollama) answer here.
    "/v1/embeddings": "/embeddings",
}
MODELS_ROUTE = "/v1/models"
_MODELS_UPSTREAM_PATH = "/models"
# The chat page loads only its own script and style and talks only to this origin.
_PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
_MODEL_PLACEHOLDER = "{{GATEWAY_MODEL}}"


class RequestTooLarge(Exception):
    pass


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (RequestTooLarge) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge
    return bytes(body)


class RelayedRoute:
    """The endpoint of a route relayed to a replica of the engine serving the requested model (or to the one model
    server that chooses the model). A plain ASGI app (a class instance, which Starlette calls as one instead of
    wrapping it in its request/response adapter), because the relay sends the response itself, piece by piece as
    it arrives."""

    def __init__(
        self,
        route: str,
        upstream_path: str,
        model_routes: dict[str, ModelRoute],
        pass_through: ModelRoute | None,
        max_request_bytes: int,
        api_keys: ApiKeys,
        upstream: Upstream,
    ):
        self._route = route
        self._upstream_path = upstream_path
        self._model_routes = model_routes
        self._pass_through = pass_through
        self._max_request_bytes = max_request_bytes
        self._api_keys = api_keys
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            allowed_models = self._api_keys.allowed_models(request)
            body = await self._body(request)
            # The relayed POST routes all take a JSON body naming a model; a GET (the model list) names none.
            model, payload = requested_model(body) if scope["method"] == "POST" else (None, None)
            target = self._model_route(scope, model, allowed_models)
            # The prompt's prefix comes from the body parsed above, not from a second parse.
            key = prefix_key(payload) if payload is not None and target.needs_key else None
            replica = target.try_acquire(key) or await _wait_unless_client_leaves(target, key, receive)
        except Rejected as rejected:
            await rejected.response(scope, receive, send)
            return
        if replica is None:
            log.info("client left while its request waited for a replica", extra={"route": self._route})
            # Recorded only: the connection is gone.
            await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
            return
        served_model = scope["state"].get(MODEL_STATE, "")
        await self._upstream.relay(
            scope, receive, send, Target(target, replica, key, self._upstream_path), self._route, served_model, body,
            request_id(scope), streamed=payload is not None and payload.get("stream") is True,
        )

    async def _body(self, request: Request) -> bytes:
        try:
            return await read_limited_body(request, self._max_request_bytes)
        except RequestTooLarge:
            message = f"request body exceeds the gateway's limit of {self._max_request_bytes} bytes"
            raise Rejected(error_response(413, message, "invalid_request_error")) from None

    def _model_route(self, scope: Scope, model: str | None, allowed_models: frozenset[str] | None) -> ModelRoute:
        """The replicas serving `model`; raises Rejected when the gateway does not serve it, or the key may not use
        it."""
        target = self._model_routes.get(model)
        if target is not None:
            scope["state"][MODEL_STATE] = model
        elif self._pass_through is not None:
            target = self._pass_through
        else:
            raise model_not_found(model)
        if allowed_models is not None and model not in allowed_models:
            # Answered like a model nobody serves: a limited key cannot tell which other models exist.
            raise model_not_found(model)
        return target


async def _wait_unless_client_leaves(target: ModelRoute, key: int | None, receive: Receive) -> Replica | None:
    """A replica for a request that has to wait for one; None when its client leaves first, so the request gives
    up its place instead of reaching an engine nobody awaits an answer from."""
    async def disconnect() -> None:
        # The body has been read: what the client can send now is its disconnect.
        while (await receive())["type"] != "http.disconnect":
            pass

    waiting = asyncio.ensure_future(target.wait(key))
    leaving = asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait((waiting, leaving), return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()  # uvicorn reports a disconnect again, to the relay's own watch
        if not waiting.done():
            waiting.cancel()  # the client left (or the server stops): the place in the queue goes
            await asyncio.gather(waiting, return_exceptions=True)
    return None if waiting.cancelled() else waiting.result()


def model_routes(
    settings: Settings, metrics: GatewayMetrics, resolve: Resolver
) -> tuple[dict[str, ModelRoute], list[DnsDiscovery]]:
    """Each served model's replicas and admission, and the DNS lookups that keep discovered replicas current."""
    routes: dict[str, ModelRoute] = {}
    discoveries: list[DnsDiscovery] = []
    for model, base_url in settings.routes.items():
        routing = settings.routing.get(model, Routing())
        routes[model] = ModelRoute(
            model,
            routing.policy,
            metrics,
            routing.max_in_flight_per_replica,
            routing.max_wait_seconds,
            routing.hold_seconds,
            # Knative runners and the Docker runtime have one upstream, which spreads over replicas itself.
            replicas=routing.replicas or ([] if routing.replicas_host else [base_url]),
            load_factor=routing.load_factor,
        )
        if routing.replicas_host:
            discoveries.append(DnsDiscovery(routes[model], base_url, routing.replicas_host, resolve))
    return routes, discoveries


def create_app(settings: Settings, resolve: Resolver = resolve_host) -> Starlette:
    """`resolve` looks up the addresses of a headless Service's name (tests stand in for DNS)."""
    metrics = GatewayMetrics()
    upstream = Upstream(settings, metrics)
    routes_by_model, discoveries = model_routes(settings, metrics, resolve)
    pass_through = (
        None if settings.pass_through_base_url is None
        else ModelRoute("", "least-loaded", metrics, replicas=[settings.pass_through_base_url])
    )
    served_models = settings.served_models
    api_keys = ApiKeys(settings.api_keys, settings.api_keys_file, served_models)
    if not api_keys.enabled:
        log.warning("GATEWAY_API_KEYS is not set: authentication is disabled and anyone who reaches the API can use it")
    chat_page_html = (
        resources.files(__package__)
        .joinpath("static/index.html")
        .read_text(encoding="utf-8")
        # The page selects the first model configured.
        .replace(_MODEL_PLACEHOLDER, html.escape(next(iter(settings.routes), "")))
    )
    # What /ready checks: each served model on its engine, or the one model server that chooses the model.
    readiness_checks = list(settings.routes.items()) or [(None, settings.pass_through_base_url)]

    started = int(time.time())

    async def served_model_list(request: Request) -> Response:
        # The models the gateway accepts, from its settings, so the list and the check of requests agree (and
        # listing needs no model server awake).
        try:
            allowed_models = api_keys.allowed_models(request)
        except Rejected as rejected:
            return rejected.response
        models = sorted(served_models if allowed_models is None else served_models & allowed_models)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": started, "owned_by": "model-gateway"}
                    for model in models
                ],
            }
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        # Ready while any model can answer: the others get 502 or 503 meanwhile, like a single engine that is down.
        problems = await asyncio.gather(
            *(upstream.readiness_problem(base_url, model) for model, base_url in readiness_checks)
        )
        models = {}
        for (model, _), problem in zip(readiness_checks, problems):
            if model is not None:
                metrics.model_ready.labels(model).set(problem is None)
                models[model] = {"ready": True} if problem is None else {"ready": False, "reason": problem}
        if None in problems:
            return JSONResponse({"status": "ready", "models": models})
        reason = problems[0] if len(problems) == 1 else "none of the served models can answer"
        return JSONResponse({"status": "unavailable", "reason": reason, "models": models}, status_code=503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    async def chat_page(request: Request) -> Response:
        return HTMLResponse(chat_page_html, headers=_PAGE_HEADERS)

    async def http_error(request: Request, error: HTTPException) -> Response:
        return error_response(error.status_code, error.detail, "invalid_request_error", headers=error.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await upstream.start()
        # The first lookup before serving, so the first requests find the replicas already there.
        await asyncio.gather(*(discovery.refresh() for discovery in discoveries))
        refreshing = [asyncio.ensure_future(discovery.run(settings.discovery_interval_seconds))
                      for discovery in discoveries]
        yield
        for task in refreshing:
            task.cancel()
        await upstream.aclose()

    routes = [
        Route("/", chat_page, methods=["GET"]),
        Mount("/static", StaticFiles(packages=[(__package__, "static")]), name="static"),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    def relayed(route: str, upstream_path: str) -> RelayedRoute:
        return RelayedRoute(
            route, upstream_path, routes_by_model, pass_through, settings.max_request_bytes, api_keys, upstream)

    routes += [
        Route(route, relayed(route, upstream_path), methods=["POST"]) for route, upstream_path in RELAYED_ROUTES.items()
    ]
    if served_models is None:
        models_endpoint = relayed(MODELS_ROUTE, _MODELS_UPSTREAM_PATH)
    else:
        models_endpoint = served_model_list
    routes.append(Route(MODELS_ROUTE, models_endpoint, methods=["GET"]))
    middleware = [Middleware(ObservabilityMiddleware, metrics=metrics)]
    if settings.cors_allow_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_allow_origins),
                allow_methods=["GET", "POST"],
                # Whatever request headers a browser client asks for (the OpenAI SDK sends x-stainless-* on every
                # call, and other clients their own): the gateway relays none of them but the payload's, and
                # only the origins above get an answer at all.
                allow_headers=["*"],
                expose_headers=[REQUEST_ID_HEADER],
                max_age=600,
            )
        )
    return Starlette(
        routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )


def app_from_environment() -> Starlette:
    """Factory for uvicorn's reload mode, which builds the app afresh in a new worker process (the settings were
    validated by the parent process already)."""
    settings = load_settings(os.environ)
    configure_logging(settings.log_level)
    return create_app(settings)
