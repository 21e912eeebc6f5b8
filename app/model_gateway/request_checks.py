"""Checks of a request body the gateway can answer itself, as OpenAI does, instead of passing on a request the
model server would answer wrongly: llama.cpp answers any model name with its own model, and fails a body that
is not JSON with a 500, which SDKs retry."""

from __future__ import annotations

import json

from .errors import Rejected, error_response


def requested_model(body: bytes) -> tuple[str, dict]:
    """The model a request body names, and the whole body parsed (parsed once: routing reads the prompt from it);
    raises Rejected when the body is not a JSON object naming a model."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise Rejected(
            error_response(
                400, "the request body is not valid JSON: the API expects a JSON object", "invalid_request_error"
            )
        ) from None
    if not isinstance(payload, dict):
        raise Rejected(error_response(400, "the request body must be a JSON object", "invalid_request_error"))
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise Rejected(
            error_response(400, "you must provide a model parameter", "invalid_request_error", param="model")
        )
    return model, payload


def model_not_found(model: str) -> Rejected:
    return Rejected(
        error_response(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            code="model_not_found",
            param="model",
        )
    )
