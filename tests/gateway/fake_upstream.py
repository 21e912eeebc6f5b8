"""A fake OpenAI-compatible model server, for the gateway's tests and bench.

It answers deterministically: the assistant echoes the last message ("Echo: <message>"), one word per streamed
event (a word counts as a token), and reports `usage` the way OpenAI does (always in a JSON answer; in a final
event of a stream only when the request asks for `stream_options.include_usage`). `behaviour` has knobs to make
it fail, stall, hold or break a stream; `requests` records what it received.

Where the gateway has to make up for an engine, it behaves like llama.cpp's server: it answers whatever model
is named (or none) with its own, fails a body that is not JSON with a 500, answers 503 `{"message": "Loading
model"}` while loading, refuses a prompt over its context size with llama.cpp's error, and echoes the request's
Origin (empty without one) in a mixed-case `Access-Control-Allow-Origin` header.

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
SECOND_MODEL = "fake-model-b"
"""What a second instance serves in the tests of a gateway with an engine per model."""
CONTEXT_SIZE = 64
"""Tokens (words) a prompt may have, as llama.cpp's n_ctx."""
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
    """Answer every /v1 call with this status and `failure_body`."""
    failure_headers: dict[str, str] = field(default_factory=dict)
    failure_body: dict | str | None = None
    """The body of the injected failure (a string is sent as is); an OpenAI error body when None."""
    response_delay_seconds: float = 0.0
    """Wait this long before answering a /v1 call (headers included)."""
    event_delay_seconds: float = 0.0
    """Wait this long between streamed events."""
    stream_gate: threading.Event | None = None
    """When set, a stream sends its first event, then waits for the gate to open."""
    break_after_first_chunk: bool = False
    """Drop the connection right after the first event of a stream, or the first half of a JSON answer."""
    loading: bool = False
    """Answer every /v1 call with llama.cpp's 503 while it loads the model."""


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeUpstream:
    def __init__(self, behaviour: Behaviour | None = None, model: str = FAKE_MODEL) -> None:
        self.model = model
        """The model it serves unless `behaviour` says otherwise (and again after reset())."""
        self.behaviour = behaviour or Behaviour(models=(model,))
        self.requests: list[RecordedRequest] = []
        self.finished_streams = 0
        self.abandoned = 0
        """Streams and delayed answers left unfinished because the client went away."""
        self.app = _EngineHeaders(
            Starlette(
                routes=[
                    Route("/v1/models", self._models, methods=["GET"]),
                    Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                    Route("/v1/completions", self._completions, methods=["POST"]),
                    Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                ]
            )
        )

    @contextlib.contextmanager
    def serving(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[FakeUpstream]:
        """Serves on loopback (`host`, on a free port unless `port` is given) until the block ends; `base_url` is
        the OpenAI base URL meanwhile."""
        # h11 sends header names in the case the app gave (httptools lowercases them), as llama.cpp's mixed-case
        # headers reach the gateway.
        with serve(self.app, host=host, port=port, http="h11") as url:
            self.base_url = f"{url}/v1"
            yield self

    def reset(self) -> None:
        self.behaviour = Behaviour(models=(self.model,))
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

    async def _embeddings(self, request: Request) -> Response:
        """One vector per input, as llama.cpp's embedding mode answers: usage without completion tokens."""
        payload = json.loads(await self._record(request))
        inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        tokens = sum(len(text.split()) for text in inputs)
        return JSONResponse({
            "object": "list",
            "model": self.behaviour.models[0],
            "data": [{"object": "embedding", "index": index, "embedding": [float(len(text)), 0.5, -0.5]}
                     for index, text in enumerate(inputs)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    async def _complete(self, request: Request, chat: bool) -> Response:
        body = await self._record(request)
        failure = await self._injected_failure(request)
        if failure is not None:
            return failure
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(500, "[json.exception.parse_error.101] parse error: syntax error", "server_error")
        try:
            prompt = payload["messages"][-1]["content"] if chat else payload["prompt"]
            context = " ".join(message["content"] for message in payload["messages"]) if chat else prompt
        except (KeyError, IndexError, TypeError):
            return _error(400, "invalid request body", "invalid_request_error")
        if len(context.split()) > CONTEXT_SIZE:
            return _context_overflow(len(context.split()))
        model = self.behaviour.models[0]  # whatever the request named

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
        behaviour = self.behaviour
        if behaviour.loading:
            return JSONResponse({"message": "Loading model"}, status_code=503)
        if behaviour.failure_status is None:
            return None
        if isinstance(behaviour.failure_body, str):
            return Response(behaviour.failure_body, behaviour.failure_status, headers=behaviour.failure_headers)
        if behaviour.failure_body is not None:
            return JSONResponse(behaviour.failure_body, behaviour.failure_status, headers=behaviour.failure_headers)
        return _error(behaviour.failure_status, "injected failure", "server_error", headers=behaviour.failure_headers)


def _error(status_code: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"message": message, "type": error_type}}, status_code=status_code, headers=headers)


def _context_overflow(prompt_tokens: int) -> Response:
    return JSONResponse(
        {
            "error": {
                "code": 400,
                "message": f"the request exceeds the available context size, try increasing it "
                f"(n_prompt_tokens={prompt_tokens}, n_ctx={CONTEXT_SIZE})",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": prompt_tokens,
                "n_ctx": CONTEXT_SIZE,
            }
        },
        status_code=400,
    )


class _EngineHeaders:
    """Adds the response headers engines add on their own, in their own case: llama.cpp's echo of the Origin in
    Access-Control-Allow-Origin, and on event streams X-Accel-Buffering, which streaming servers commonly send."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        origin = dict(scope.get("headers", [])).get(b"origin", b"")

        async def send_with_engine_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"Access-Control-Allow-Origin", origin))
                if any(name == b"content-type" and value.startswith(b"text/event-stream") for name, value in headers):
                    headers.append((b"X-Accel-Buffering", b"no"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_engine_headers)


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
