"""Errors in the OpenAI error format, so API clients and SDKs show the gateway's message as-is and can tell
errors apart by `type` and `code` as they do with OpenAI's."""

from __future__ import annotations

import json
from typing import Mapping

from starlette.responses import JSONResponse, Response

# Fields of OpenAI's error object; any other field an engine sends along (llama.cpp's n_ctx, ...) is kept.
_OPENAI_ERROR_FIELDS = ("message", "type", "param", "code")


class Rejected(Exception):
    """Raised by a check of a request with the error response the client gets instead of an answer."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status_code: int,
    message: str,
    error_type: str,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, error_type, code, param), status_code=status_code, headers=headers)


def error_event(message: str, error_type: str) -> bytes:
    """A server-sent event carrying an error, the way OpenAI-compatible servers end a stream that failed
    after its 200 status was sent (the OpenAI SDKs raise it as an APIError)."""
    return b"data: " + json.dumps(error_body(message, error_type)).encode() + b"\n\n"


def upstream_client_error(status_code: int, body: bytes) -> dict:
    """The body of a model server's 4xx answer in OpenAI's error format, whichever format the engine used:
    OpenAI's (`{"error": {...}}`, vLLM and llama.cpp, the latter with a numeric `code`), older vLLM's error
    object at the top level, or Ollama's `{"error": "<message>"}`."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, str):
        error = {"message": error}
    elif not isinstance(error, dict):
        error = document if isinstance(document, dict) and "message" in document else {}
    message = error.get("message")
    code = error.get("code")
    param = error.get("param")
    normalized = error_body(
        message if isinstance(message, str) else f"the model server answered HTTP {status_code}",
        # OpenAI answers every client error it does not name otherwise with this type.
        "invalid_request_error",
        "context_length_exceeded" if _is_context_overflow(error) else code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )
    extra = {name: value for name, value in error.items() if name not in _OPENAI_ERROR_FIELDS and name != "object"}
    normalized["error"].update(extra)
    return normalized


def _is_context_overflow(error: dict) -> bool:
    message = error.get("message")
    return (
        error.get("code") == "context_length_exceeded"
        # llama.cpp's server
        or error.get("type") == "exceed_context_size_error"
        # vLLM: "This model's maximum context length is N tokens. However, you requested M tokens ..."
        or (isinstance(message, str) and "maximum context length" in message)
    )
