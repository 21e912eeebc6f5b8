"""API-key authentication: `Authorization: Bearer <key>` against the keys from GATEWAY_API_KEYS, or from the file
GATEWAY_API_KEYS_FILE names (read again when it changes)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time

from starlette.requests import Request
from starlette.responses import Response

from .errors import error_response
from .settings import read_api_keys_file

log = logging.getLogger(__name__)
# How often the keys file is checked for a change: rotation takes effect within this (plus the kubelet's own
# Secret refresh, about a minute), and a request costs at most one stat() per interval.
KEYS_FILE_CHECK_SECONDS = 1.0


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    def __init__(self, keys: tuple[str, ...], keys_file: str | None = None) -> None:
        self._keys_file = keys_file
        self._file_state: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._digests: list[bytes] = []
        self._use(keys)
        self._reload_if_changed()

    def _use(self, keys: tuple[str, ...]) -> None:
        # Comparing fixed-length digests keeps the comparison time independent of the presented key's length
        # as well as its content.
        self._digests = [_digest(key) for key in keys]

    def _reload_if_changed(self) -> None:
        if self._keys_file is None or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + KEYS_FILE_CHECK_SECONDS
        try:
            stat = os.stat(self._keys_file)  # follows the symlinks a mounted Secret swaps atomically
        except OSError as error:
            log.error("cannot read the API keys file %s (%s): keeping the keys read before", self._keys_file, error)
            return
        state = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if state == self._file_state:
            return
        try:
            self._use(read_api_keys_file(self._keys_file))
        except ValueError:
            log.error("the API keys file %s holds no valid keys: keeping the keys read before", self._keys_file)
            return
        if self._file_state is not None:
            log.info("API keys reloaded from %s", self._keys_file)
        self._file_state = state

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def rejection(self, request: Request) -> Response | None:
        """A 401 response when authentication is on and the request carries no accepted key, else None."""
        self._reload_if_changed()
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
