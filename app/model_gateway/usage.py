"""Finds the token `usage` an OpenAI-compatible server reports, in the bytes the gateway relays.

The observer only reads copies of the chunks after they are passed on, so relaying never waits for it.
A JSON body reports usage at its top level; an event stream reports it in a `data:` event (OpenAI sends it
in the last event when the request asked for `stream_options.include_usage`; some servers repeat a running
total in every event), so the last usage seen wins.
"""

from __future__ import annotations

import json
from typing import NamedTuple

# Bodies and event lines larger than this are relayed but not inspected, to bound the memory kept per request.
INSPECTION_LIMIT_BYTES = 4 * 1024 * 1024


class Usage(NamedTuple):
    model: str
    prompt_tokens: int
    completion_tokens: int


class UsageObserver:
    def __init__(self, content_type: str) -> None:
        self._event_stream = content_type.startswith("text/event-stream")
        self._json = content_type.startswith("application/json")
        self._pending = bytearray()
        self._over_limit = False
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        if self._event_stream:
            self._feed_event_stream(chunk)
        elif self._json and not self._over_limit:
            self._pending += chunk
            self._over_limit = len(self._pending) > INSPECTION_LIMIT_BYTES

    def finish(self) -> Usage | None:
        """The usage reported by the whole response, once it has been relayed."""
        if self._json and not self._over_limit:
            self._record(bytes(self._pending))
        return self.usage

    def _feed_event_stream(self, chunk: bytes) -> None:
        if not self._pending and chunk.endswith(b"\n") and b'"usage"' not in chunk:
            # Whole lines, none reporting usage: the common event, passed over without splitting it into lines.
            self._over_limit = False
            return
        *complete_lines, partial_line = chunk.split(b"\n")
        if complete_lines:
            if not self._over_limit:
                self._inspect_event_line(bytes(self._pending) + complete_lines[0])
            for line in complete_lines[1:]:
                self._inspect_event_line(line)
            self._pending.clear()
            self._over_limit = False
        if not self._over_limit:
            self._pending += partial_line
            if len(self._pending) > INSPECTION_LIMIT_BYTES:
                self._pending.clear()
                self._over_limit = True

    def _inspect_event_line(self, line: bytes) -> None:
        # Parsing only lines that mention usage keeps the per-event cost to a substring search.
        if line.startswith(b"data:") and b'"usage"' in line:
            self._record(line[len(b"data:") :])

    def _record(self, document: bytes) -> None:
        try:
            payload = json.loads(document)
        except ValueError:
            return
        if not isinstance(payload, dict) or not isinstance(payload.get("usage"), dict):
            return
        usage = payload["usage"]
        self.usage = Usage(
            model=str(payload.get("model") or "unknown"),
            prompt_tokens=_token_count(usage.get("prompt_tokens")),
            completion_tokens=_token_count(usage.get("completion_tokens")),
        )


def _token_count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
