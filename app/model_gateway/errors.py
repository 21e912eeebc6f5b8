"""Errors in the OpenAI error format, so API clients and SDKs show the gateway's message as-is."""

from __future__ import annotations

import json
from typing import Mapping

from starlette.responses import JSONResponse


def error_body(message: str, error_type: str) -> dict:
    return {"error": {"message": message, "type": error_type}}


def error_response(
    status_code: int, message: str, error_type: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, error_type), status_code=status_code, headers=headers)


def error_event(message: str, error_type: str) -> bytes:
    """A server-sent event carrying an error, the way OpenAI-compatible servers end a stream that failed
    after its 200 status was sent (the OpenAI SDKs raise it as an APIError)."""
    return b"data: " + json.dumps(error_body(message, error_type)).encode() + b"\n\n"
