"""A fake OpenAI-compatible model server, for the gateway's tests and bench.

It answers deterministically: the assistant echoes the last message ("Echo: <message>"), one word per streamed
event, and reports `usage` the way OpenAI does (always in a JSON answer; in a final event of a stream only when
the request asks for `stream_options.include_usage`). `behaviour` has knobs to make it fail, stall, hold or
break a stream; `requests` records what it received.

Run on its own (for the bench): python fake_upstream.py --port PORT [--event-delay SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from loopback import serve

REPLY_PREFIX = "Echo:"
FAKE_MODEL = "fake-model"
# How long a held stream waits for its gate before giving up, so a broken test cannot hang the server.
_GATE_TIMEOUT_SECONDS = 10


def reply_pieces(message: str) -> list[str]:
    """The streamed pieces of the answer to `message`: its words, each after a space."""
    return [REPLY_PREFIX] + [" " + word for word in message.split()]


class InjectedBreak(ConnectionAbortedError):
    """Raised inside a response body: the server drops the connection with the body incomplete."""


@dataclass
class Behaviour:
    models: tuple[str, ...] = (FAKE_MODEL,)
    failure_status: int | None = None
    """Answer every /v1 call with this status and an OpenAI error body."""
    failure_headers: dict[str, str] = field(default_factory=dict)
    response_delay_seconds: float = 0.0
    """Wait this long before answering a /v1 call (headers included)."""
    event_delay_seconds: float = 0.0
    """Wait this long between streamed events."""
    stream_gate: threading.Event | None = None
    """When set, a stream sends its first event, then waits for the gate to open."""
    break_after_first_chunk: bool = False
    """Drop the connection right after the first event of a stream, or the first half of a JSON answer."""


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeUpstream:
    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.requests: list[RecordedRequest] = []
        self.finished_streams = 0
        self.abandoned = 0
        """Streams and delayed answers left unfinished because the client went away."""
        self.app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
            ]
        )

    @contextlib.contextmanager
    def serving(self) -> Iterator[FakeUpstream]:
        """Serves on loopback until the block ends; `base_url` is the OpenAI base URL meanwhile."""
        with serve(self.app) as url:
            self.base_url = f"{url}/v1"
            yield self

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.requests.clear()
        self.finished_streams = 0
        self.abandoned = 0

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        failure = await self._injected_failure(request)
        if failure is not None:
            return failure
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "fake"}
                    for model in self.behaviour.models
                ],
            }
        )

    async def _chat_completions(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def _completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool) -> Response:
        body = await self._record(request)
        failure = await self._injected_failure(request)
        if failure is not None:
            return failure
        try:
            payload = json.loads(body)
            model = payload["model"]
            prompt = payload["messages"][-1]["content"] if chat else payload["prompt"]
            context = " ".join(message["content"] for message in payload["messages"]) if chat else prompt
        except (ValueError, KeyError, IndexError, TypeError):
            return _error(400, "invalid request body", "invalid_request_error")
        if model not in self.behaviour.models:
            return _error(404, f"The model `{model}` does not exist.", "invalid_request_error")

        pieces = reply_pieces(prompt)
        usage = {
            "prompt_tokens": len(context.split()),
            "completion_tokens": len(pieces),
            "total_tokens": len(context.split()) + len(pieces),
        }
        kind = "chat.completion" if chat else "text_completion"
        envelope = {"id": "fake-1", "created": int(time.time()), "model": model}
        if not payload.get("stream"):
            answer = "".join(pieces)
            choice = {"message": {"role": "assistant", "content": answer}} if chat else {"text": answer}
            document = {**envelope, "object": kind, "choices": [{"index": 0, **choice, "finish_reason": "stop"}]}
            answer_body = json.dumps({**document, "usage": usage}).encode()
            if self.behaviour.break_after_first_chunk:
                return StreamingResponse(_broken(answer_body[: len(answer_body) // 2]), media_type="application/json")
            return Response(answer_body, media_type="application/json")

        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        events = [
            {
                **envelope,
                "object": chunk_kind,
                "choices": [
                    {"index": 0, **({"delta": {"content": piece}} if chat else {"text": piece}), "finish_reason": None}
                ],
            }
            for piece in pieces
        ]
        events[-1]["choices"][0]["finish_reason"] = "stop"
        if (payload.get("stream_options") or {}).get("include_usage"):
            events.append({**envelope, "object": chunk_kind, "choices": [], "usage": usage})
        return StreamingResponse(self._stream(events), media_type="text/event-stream")

    async def _stream(self, events: list[dict]):
        behaviour = self.behaviour
        finished = False
        try:
            for index, event in enumerate(events):
                if index:
                    await asyncio.sleep(behaviour.event_delay_seconds)
                yield f"data: {json.dumps(event)}\n\n"
                if index == 0 and behaviour.break_after_first_chunk:
                    raise InjectedBreak
                if index == 0 and behaviour.stream_gate is not None:
                    await _wait_for(behaviour.stream_gate)
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if finished:
                self.finished_streams += 1
            else:
                self.abandoned += 1

    async def _record(self, request: Request) -> bytes:
        body = await request.body()
        self.requests.append(RecordedRequest(request.method, request.url.path, dict(request.headers), body))
        return body

    async def _injected_failure(self, request: Request) -> Response | None:
        deadline = time.monotonic() + self.behaviour.response_delay_seconds
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                self.abandoned += 1
                return Response(status_code=499)  # nobody reads it
            await asyncio.sleep(0.005)
        if self.behaviour.failure_status is None:
            return None
        return _error(
            self.behaviour.failure_status,
            "injected failure",
            "server_error",
            headers=self.behaviour.failure_headers,
        )


def _error(status_code: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"message": message, "type": error_type}}, status_code=status_code, headers=headers)


async def _broken(first_chunk: bytes):
    yield first_chunk
    raise InjectedBreak


async def _wait_for(gate: threading.Event) -> None:
    deadline = time.monotonic() + _GATE_TIMEOUT_SECONDS
    while not gate.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("stream gate never opened")
        await asyncio.sleep(0.002)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the fake OpenAI-compatible model server on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--event-delay", type=float, default=0.0, help="seconds between streamed events")
    arguments = parser.parse_args()
    upstream = FakeUpstream(Behaviour(event_delay_seconds=arguments.event_delay))
    uvicorn.run(upstream.app, host="127.0.0.1", port=arguments.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
