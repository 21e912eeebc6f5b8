"""Finding token usage in relayed bytes, however the upstream splits them into chunks."""

from __future__ import annotations

import json

import pytest

from model_gateway.usage import INSPECTION_LIMIT_BYTES, Usage, UsageObserver


def event(payload: dict | str) -> bytes:
    return b"data: " + (payload if isinstance(payload, str) else json.dumps(payload)).encode() + b"\n\n"


def observe(content_type: str, chunks: list[bytes]) -> Usage | None:
    observer = UsageObserver(content_type)
    for chunk in chunks:
        observer.feed(chunk)
    return observer.finish()


STREAM = (
    event({"model": "m", "choices": [{"delta": {"content": "hi"}}]})
    + event({"model": "m", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 9}})
    + event("[DONE]")
)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, len(STREAM)])
def test_stream_usage_is_found_whatever_the_chunk_boundaries(chunk_size):
    chunks = [STREAM[start : start + chunk_size] for start in range(0, len(STREAM), chunk_size)]

    assert observe("text/event-stream", chunks) == Usage("m", 4, 9)


def test_the_last_usage_in_a_stream_wins():
    running_totals = [
        event({"model": "m", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": count}})
        for count in (1, 2, 3)
    ]

    assert observe("text/event-stream; charset=utf-8", running_totals) == Usage("m", 4, 3)


def test_stream_without_usage_reports_none():
    assert observe("text/event-stream", [event({"usage": None, "choices": []}), event("[DONE]")]) is None


def test_json_usage_is_read_from_the_whole_body():
    body = json.dumps({"model": "m", "usage": {"prompt_tokens": 2, "completion_tokens": 5}}).encode()

    assert observe("application/json", [body[:10], body[10:]]) == Usage("m", 2, 5)


def test_malformed_counts_and_missing_model_are_tolerated():
    body = json.dumps({"usage": {"prompt_tokens": "many", "completion_tokens": -1}}).encode()

    assert observe("application/json", [body]) == Usage("unknown", 0, 0)


def test_bodies_over_the_inspection_limit_are_not_kept():
    oversized = b'{"usage": {"prompt_tokens": 1}, "padding": "' + b"x" * INSPECTION_LIMIT_BYTES + b'"}'

    assert observe("application/json", [oversized]) is None


def test_an_oversized_event_line_is_skipped_but_later_events_are_read():
    huge_line = b"data: " + b"x" * (INSPECTION_LIMIT_BYTES + 10)
    usage_event = event({"model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    assert observe("text/event-stream", [huge_line[:100], huge_line[100:], b"\n\n", usage_event]) == Usage("m", 1, 1)


def test_other_content_types_are_ignored():
    assert observe("text/plain", [b'{"usage": {"prompt_tokens": 1}}']) is None
