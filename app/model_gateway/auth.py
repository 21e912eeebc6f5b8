"""API-key authentication: `Authorization: Bearer <key>` against the keys from GATEWAY_API_KEYS, or from the file
GATEWAY_API_KEYS_FILE names (read again when it changes), each key with the models it may use."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time

from starlette.requests import Request

from .errors import Rejected, error_response
from .settings import KeyScopes, check_key_scopes, read_api_keys_file

log = logging.getLogger(__name__)
# How often the keys file is checked for a change: rotation takes effect within this (plus the kubelet's own
# Secret refresh, about a minute), and a request costs at most one stat() per interval.
KEYS_FILE_CHECK_SECONDS = 1.0


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    def __init__(
        self, keys: KeyScopes, keys_file: str | None = None, served_models: frozenset[str] | None = None
    ) -> None:
        self._keys_file = keys_file
        self._served_models = served_models
        """What a reloaded keys file may limit keys to, as at startup."""
        self._file_state: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._scoped_digests: list[tuple[bytes, frozenset[str] | None]] = []
        self._use(keys)
        self._reload_if_changed()

    def _use(self, keys: KeyScopes) -> None:
        # Comparing fixed-length digests keeps the comparison time independent of the presented key's length
        # as well as its content.
        self._scoped_digests = [(_digest(key), scope) for key, scope in keys.items()]

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
            keys = read_api_keys_file(self._keys_file)
            check_key_scopes(keys, self._served_models)
        except ValueError as error:
            # The message never quotes a key.
            log.error("the API keys file %s is invalid (%s): keeping the keys read before", self._keys_file, error)
            return
        self._use(keys)
        if self._file_state is not None:
            log.info("API keys reloaded from %s", self._keys_file)
        self._file_state = state

    @property
    def enabled(self) -> bool:
        return bool(self._scoped_digests)

    def allowed_models(self, request: Request) -> frozenset[str] | None:
        """The models the request's key may use, None for every model (also when authentication is off). Raises
        Rejected with a 401 when authentication is on and the request carries no accepted key."""
        self._reload_if_changed()
        if not self.enabled:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized(
                "missing API key: send 'Authorization: Bearer <key>'", None, 'Bearer realm="model-gateway"'
            )
        presented = _digest(token.strip())
        # Every key is compared before the match is looked up, so the time taken does not reveal whether or where
        # a key matched.
        matches = [hmac.compare_digest(presented, digest) for digest, _ in self._scoped_digests]
        if True not in matches:
            raise _unauthorized(
                "invalid API key", "invalid_api_key", 'Bearer realm="model-gateway", error="invalid_token"'
            )
        return self._scoped_digests[matches.index(True)][1]


def _unauthorized(message: str, code: str | None, challenge: str) -> Rejected:
    # OpenAI's type and codes for a missing and a wrong key.
    return Rejected(
        error_response(401, message, "invalid_request_error", code, headers={"www-authenticate": challenge})
    )
