"""API-key authentication: `Authorization: Bearer <key>` against the keys from GATEWAY_API_KEYS."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.responses import Response

from .errors import error_response


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    def __init__(self, keys: tuple[str, ...]) -> None:
        # Comparing fixed-length digests keeps the comparison time independent of the presented key's length
        # as well as its content.
        self._digests = [_digest(key) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def rejection(self, request: Request) -> Response | None:
        """A 401 response when authentication is on and the request carries no accepted key, else None."""
        if not self.enabled:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized(
                "missing API key: send 'Authorization: Bearer <key>'", None, 'Bearer realm="model-gateway"'
            )
        presented = _digest(token.strip())
        # Every key is compared, so the time taken does not reveal whether or where a key matched.
        if not any([hmac.compare_digest(presented, digest) for digest in self._digests]):
            return _unauthorized(
                "invalid API key", "invalid_api_key", 'Bearer realm="model-gateway", error="invalid_token"'
            )
        return None


def _unauthorized(message: str, code: str | None, challenge: str) -> Response:
    # OpenAI's type and codes for a missing and a wrong key.
    return error_response(401, message, "invalid_request_error", code, headers={"www-authenticate": challenge})
