"""What the gateway costs: the same requests straight to a fake model server and through the gateway, in one run.

Starts the fake OpenAI-compatible server (tests/gateway/fake_upstream.py) and the gateway (`python -m
model_gateway`, as its image runs it, authentication and request logging on) as separate processes on
127.0.0.1, then measures from this process:

  latency     sequential non-streamed chat completions, direct and through the gateway alternately:
              p50/p99 of each and the difference (the latency the gateway adds)
  throughput  the same number of requests from concurrent clients: requests per second of each, and the ratio
  first byte  chat streams whose events the fake server spaces out: time to the first streamed byte (p50/p99)
              and to the end of the stream; a gateway that buffered would show a first byte near the end

It prints the figures and asserts nothing about them. Every address is on loopback and every loop is bounded.

    python bench/gateway_overhead.py [--requests 500] [--concurrency 16] [--streams 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import httpx

ROOT = Path(__file__).resolve().parents[1]
FAKE_UPSTREAM = ROOT / "tests" / "gateway" / "fake_upstream.py"
sys.path.insert(0, str(FAKE_UPSTREAM.parent))  # the test suite's fake model server and loopback helpers

from fake_upstream import FAKE_MODEL  # noqa: E402
from gateway_helpers import chat_request  # noqa: E402
from loopback import answers, eventually, free_port  # noqa: E402

API_KEY = "bench-key"
_STARTUP_TIMEOUT_SECONDS = 20
_WARMUP_REQUESTS = 50


@contextmanager
def background_process(command: list[str], ready_url: str, **environment: str) -> Iterator[None]:
    # Output goes to a file, not a pipe nobody reads, which would stall the process once full.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, env={**os.environ, **environment}, stdout=output, stderr=subprocess.STDOUT)
        try:
            # Stops waiting as soon as the process answers or exits.
            settled = eventually(lambda: answers(ready_url) or process.poll() is not None, _STARTUP_TIMEOUT_SECONDS)
            if not settled or process.poll() is not None:
                output.seek(0)
                raise SystemExit(f"{' '.join(command)} did not come up:\n{output.read().decode()}")
            yield
        finally:
            process.terminate()
            process.wait(timeout=_STARTUP_TIMEOUT_SECONDS)


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def completion(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_request("how long does this take"))
    response.raise_for_status()


async def stream_timings(client: httpx.AsyncClient, message: str) -> tuple[float, float]:
    """(seconds to the first body byte, seconds to the end) of one streamed chat completion."""
    started = time.perf_counter()
    async with client.stream("POST", "/chat/completions", json=chat_request(message, stream=True)) as response:
        response.raise_for_status()
        chunks = response.aiter_raw()
        await anext(chunks)
        first_byte = time.perf_counter() - started
        async for _ in chunks:
            pass
    return first_byte, time.perf_counter() - started


async def throughput(client: httpx.AsyncClient, requests: int, concurrency: int) -> float:
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:  # the workers share one iterator, so exactly `requests` calls are made
            await completion(client)

    elapsed = await timed(lambda: asyncio.gather(*(worker() for _ in range(concurrency))))
    return requests / elapsed


def percentile(samples: list[float], percent: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[percent - 1]


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def measure(direct_url: str, gateway_url: str, arguments: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=arguments.concurrency)
    direct = httpx.AsyncClient(base_url=direct_url, limits=limits, timeout=30)
    gateway = httpx.AsyncClient(
        base_url=gateway_url, limits=limits, timeout=30, headers={"authorization": f"Bearer {API_KEY}"}
    )
    async with direct, gateway:
        for client in (direct, gateway):
            for _ in range(_WARMUP_REQUESTS):
                await completion(client)

        # Alternating the two paths request by request spreads any drift of the machine over both alike.
        latencies: dict[str, list[float]] = {"direct": [], "gateway": []}
        for _ in range(arguments.requests):
            latencies["direct"].append(await timed(lambda: completion(direct)))
            latencies["gateway"].append(await timed(lambda: completion(gateway)))

        rates = {
            "direct": await throughput(direct, arguments.requests, arguments.concurrency),
            "gateway": await throughput(gateway, arguments.requests, arguments.concurrency),
        }

        stream_message = " ".join(f"word{index}" for index in range(arguments.stream_words))
        streams: dict[str, list[tuple[float, float]]] = {"direct": [], "gateway": []}
        for _ in range(arguments.streams):
            streams["direct"].append(await stream_timings(direct, stream_message))
            streams["gateway"].append(await stream_timings(gateway, stream_message))

    print(f"Gateway overhead on loopback: {arguments.requests} requests per path, {arguments.concurrency} concurrent")
    added = {p: percentile(latencies["gateway"], p) - percentile(latencies["direct"], p) for p in (50, 99)}
    print_table(
        "non-streamed chat completions, sequential",
        ["p50", "p99"],
        [(path, [milliseconds(percentile(samples, p)) for p in (50, 99)]) for path, samples in latencies.items()]
        + [("added by the gateway", [milliseconds(added[50]), milliseconds(added[99])])],
    )
    print_table(
        f"throughput, {arguments.concurrency} concurrent clients",
        ["requests/s"],
        [(path, [f"{rate:.0f}"]) for path, rate in rates.items()]
        + [("gateway / direct", [f"{rates['gateway'] / rates['direct']:.2f}"])],
    )
    print_table(
        f"streams of {arguments.stream_words + 1} events {arguments.event_delay * 1000:g} ms apart, sequential",
        ["first byte p50", "first byte p99", "stream end p50"],
        [
            (
                path,
                [milliseconds(percentile([first for first, _ in timings], p)) for p in (50, 99)]
                + [milliseconds(percentile([total for _, total in timings], 50))],
            )
            for path, timings in streams.items()
        ],
    )


def print_table(title: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> None:
    print(f"\n{title}")
    print(" " * 24 + "".join(f"{column:>16}" for column in columns))
    for label, values in rows:
        print(f"  {label:<22}" + "".join(f"{value:>16}" for value in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="requests per path for latency and throughput")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients for the throughput run")
    parser.add_argument("--streams", type=int, default=50, help="streamed requests per path")
    parser.add_argument("--stream-words", type=int, default=10, help="words in each streamed answer")
    parser.add_argument("--event-delay", type=float, default=0.005, help="seconds between streamed events")
    arguments = parser.parse_args()

    upstream_port, gateway_port = free_port(), free_port()
    direct_url = f"http://127.0.0.1:{upstream_port}/v1"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    upstream_command = [sys.executable, str(FAKE_UPSTREAM), "--port", str(upstream_port)]
    with (
        background_process(upstream_command + ["--event-delay", str(arguments.event_delay)], f"{direct_url}/models"),
        background_process(
            [sys.executable, "-m", "model_gateway"],
            f"{gateway_url}/ready",
            PYTHONPATH=str(ROOT / "app"),
            GATEWAY_UPSTREAM_BASE_URL=direct_url,
            GATEWAY_PORT=str(gateway_port),
            GATEWAY_MODEL=FAKE_MODEL,
            GATEWAY_API_KEYS=API_KEY,
        ),
    ):
        asyncio.run(measure(direct_url, f"{gateway_url}/v1", arguments))


if __name__ == "__main__":
    main()
