"""Checks of a request body the gateway can answer itself, as OpenAI does, instead of passing on a request the
model server would answer wrongly: llama.cpp answers any model name with its own model, and fails a body that
is not JSON with a 500, which SDKs retry."""

from __future__ import annotations

import json

from starlette.responses import Response

from .errors import error_response


def body_rejection(body: bytes, served_models: frozenset[str] | None) -> Response | None:
    """The error response for a body that is not a JSON object naming a served model, else None.
    `served_models` None leaves the choice of model to the model server."""
    try:
        payload = json.loads(body)
    except ValueError:
        return error_response(
            400, "the request body is not valid JSON: the API expects a JSON object", "invalid_request_error"
        )
    if not isinstance(payload, dict):
        return error_response(400, "the request body must be a JSON object", "invalid_request_error")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return error_response(400, "you must provide a model parameter", "invalid_request_error", param="model")
    if served_models is not None and model not in served_models:
        return error_response(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            code="model_not_found",
            param="model",
        )
    return None
