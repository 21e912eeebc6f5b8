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
from .settings import Settings, load_settings
from .upstream import Upstream

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
    """The endpoint of a route relayed to the engine serving the requested model (or to the one model server that
    chooses the model). A plain ASGI app (a class instance, which Starlette calls as one instead of wrapping it in
    its request/response adapter), because the relay sends the response itself, piece by piece as it arrives."""

    def __init__(self, route: str, upstream_path: str, settings: Settings, api_keys: ApiKeys, upstream: Upstream):
        self._route = route
        # Each served model's upstream URL, joined once: routing a request is one dict lookup.
        self._model_urls = {model: base_url + upstream_path for model, base_url in settings.routes.items()}
        self._pass_through_url = (
            None if settings.pass_through_base_url is None else settings.pass_through_base_url + upstream_path
        )
        self._max_request_bytes = settings.max_request_bytes
        self._api_keys = api_keys
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            allowed_models = self._api_keys.allowed_models(request)
            body = await self._body(request)
            # The relayed POST routes all take a JSON body naming a model; a GET (the model list) names none.
            model = requested_model(body) if scope["method"] == "POST" else None
            url = self._upstream_url(scope, model, allowed_models)
        except Rejected as rejected:
            await rejected.response(scope, receive, send)
            return
        served_model = scope["state"].get(MODEL_STATE, "")
        await self._upstream.relay(scope, receive, send, url, self._route, served_model, body, request_id(scope))

    async def _body(self, request: Request) -> bytes:
        try:
            return await read_limited_body(request, self._max_request_bytes)
        except RequestTooLarge:
            message = f"request body exceeds the gateway's limit of {self._max_request_bytes} bytes"
            raise Rejected(error_response(413, message, "invalid_request_error")) from None

    def _upstream_url(self, scope: Scope, model: str | None, allowed_models: frozenset[str] | None) -> str:
        """The URL of the engine serving `model`; raises Rejected when the gateway does not serve it, or the key
        may not use it."""
        url = self._model_urls.get(model)
        if url is not None:
            scope["state"][MODEL_STATE] = model
        elif self._pass_through_url is not None:
            url = self._pass_through_url
        else:
            raise model_not_found(model)
        if allowed_models is not None and model not in allowed_models:
            # Answered like a model nobody serves: a limited key cannot tell which other models exist.
            raise model_not_found(model)
        return url


def create_app(settings: Settings) -> Starlette:
    metrics = GatewayMetrics()
    upstream = Upstream(settings, metrics)
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
        yield
        await upstream.aclose()

    routes = [
        Route("/", chat_page, methods=["GET"]),
        Mount("/static", StaticFiles(packages=[(__package__, "static")]), name="static"),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    routes += [
        Route(route, RelayedRoute(route, upstream_path, settings, api_keys, upstream), methods=["POST"])
        for route, upstream_path in RELAYED_ROUTES.items()
    ]
    if served_models is None:
        models_endpoint = RelayedRoute(MODELS_ROUTE, _MODELS_UPSTREAM_PATH, settings, api_keys, upstream)
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
