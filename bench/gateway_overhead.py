"""What the gateway costs: the same requests straight to a model server and through the gateway, in one run.

Starts the fake OpenAI-compatible server (tests/gateway/fake_upstream.py), or uses a real one given with
--upstream-url (e.g. a llama.cpp server), and the gateway (`python -m model_gateway`, as its image runs it,
authentication and request logging on) as a separate process on 127.0.0.1, then measures from this process:

  latency     sequential non-streamed chat completions, direct and through each gateway in turn: p50/p99 of
              each and the difference (the latency the gateway adds)
  throughput  the same number of requests from concurrent clients: requests per second of each, and the ratio
  CPU         the gateway process's CPU time (user + system) per request, in both of the runs above (higher in
              the sequential one, where the gateway idles between its requests and wakes up cold for each)
  first byte  chat streams: time to the first streamed byte (p50/p99) and to the end of the stream; a gateway
              that buffered would show a first byte near the end

With --baseline-app (another checkout's app/ directory, e.g. from `git archive`) and --baseline-python (an
interpreter with that checkout's requirements) a second gateway runs from that source and is measured in the
same run, request by request alternately with the first, so before/after figures share the machine's state.

It prints the figures and asserts nothing about them. Every loop is bounded.

    python bench/gateway_overhead.py [--requests 500] [--concurrency 16] [--streams 50]
    BENCH_UPSTREAM_URL=http://127.0.0.1:8080/v1 python bench/gateway_overhead.py   # a running llama.cpp server
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
FAKE_UPSTREAM = ROOT / "tests" / "gateway" / "fake_upstream.py"
sys.path.insert(0, str(FAKE_UPSTREAM.parent))  # the test suite's fake model server and loopback helpers

from loopback import answers, eventually, free_port  # noqa: E402

API_KEY = "bench-key"
_STARTUP_TIMEOUT_SECONDS = 20
_WARMUP_REQUESTS = 50
# Keeps a real model's answers short, so the engine's generation time does not drown the gateway's share.
_MAX_TOKENS = 8


@dataclass
class Target:
    name: str
    client: httpx.AsyncClient
    process: psutil.Process | None = None
    """The gateway process, whose CPU time is measured; None for the model server itself."""

    def cpu_seconds(self) -> float:
        assert self.process is not None
        times = self.process.cpu_times()
        return times.user + times.system


@contextmanager
def background_process(command: list[str], ready_url: str, **environment: str) -> Iterator[psutil.Process]:
    # Output goes to a file, not a pipe nobody reads, which would stall the process once full.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, env={**os.environ, **environment}, stdout=output, stderr=subprocess.STDOUT)
        try:
            # Stops waiting as soon as the process answers or exits.
            settled = eventually(lambda: answers(ready_url) or process.poll() is not None, _STARTUP_TIMEOUT_SECONDS)
            if not settled or process.poll() is not None:
                output.seek(0)
                raise SystemExit(f"{' '.join(command)} did not come up:\n{output.read().decode()}")
            yield psutil.Process(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=_STARTUP_TIMEOUT_SECONDS)


@contextmanager
def gateway_process(python: str, app_dir: Path, upstream_url: str, model: str) -> Iterator[tuple[str, psutil.Process]]:
    """A gateway run from the source in `app_dir`: its OpenAI base URL and its process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with background_process(
        [python, "-m", "model_gateway"],
        f"{url}/ready",
        PYTHONPATH=str(app_dir),
        GATEWAY_UPSTREAM_BASE_URL=upstream_url,
        GATEWAY_PORT=str(port),
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_MODEL=model,
        GATEWAY_API_KEYS=API_KEY,
    ) as process:
        yield f"{url}/v1", process


def chat_request(model: str, message: str, **fields) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": message}],
        "max_tokens": _MAX_TOKENS,
        **fields,
    }


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def completion(target: Target, model: str) -> None:
    response = await target.client.post("/chat/completions", json=chat_request(model, "how long does this take"))
    response.raise_for_status()


async def stream_timings(target: Target, body: dict) -> tuple[float, float]:
    """(seconds to the first body byte, seconds to the end) of one streamed chat completion."""
    started = time.perf_counter()
    async with target.client.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        chunks = response.aiter_raw()
        await anext(chunks)
        first_byte = time.perf_counter() - started
        async for _ in chunks:
            pass
    return first_byte, time.perf_counter() - started


async def throughput(target: Target, model: str, requests: int, concurrency: int) -> float:
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:  # the workers share one iterator, so exactly `requests` calls are made
            await completion(target, model)

    elapsed = await timed(lambda: asyncio.gather(*(worker() for _ in range(concurrency))))
    return requests / elapsed


def percentile(samples: list[float], percent: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[percent - 1]


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def measure(targets: list[Target], model: str, arguments: argparse.Namespace) -> None:
    direct, gateways = targets[0], targets[1:]
    for target in targets:
        for _ in range(_WARMUP_REQUESTS):
            await completion(target, model)

    # Taking the paths in turn, request by request, spreads any drift of the machine over all of them alike.
    # A gateway is idle while the others are measured, so its CPU time over the loop is its own requests'.
    latencies: dict[str, list[float]] = {target.name: [] for target in targets}
    cpu_before = {gateway.name: gateway.cpu_seconds() for gateway in gateways}
    for _ in range(arguments.requests):
        for target in targets:
            latencies[target.name].append(await timed(partial(completion, target, model)))
    sequential_cpu = {
        gateway.name: (gateway.cpu_seconds() - cpu_before[gateway.name]) / arguments.requests for gateway in gateways
    }

    rates: dict[str, float] = {}
    concurrent_cpu: dict[str, float] = {}
    for target in targets:
        before = target.cpu_seconds() if target.process else 0.0
        rates[target.name] = await throughput(target, model, arguments.requests, arguments.concurrency)
        if target.process:
            concurrent_cpu[target.name] = (target.cpu_seconds() - before) / arguments.requests

    stream_body = chat_request(
        model,
        " ".join(f"word{index}" for index in range(arguments.stream_words)),
        stream=True,
        max_tokens=arguments.stream_words,
    )
    streams: dict[str, list[tuple[float, float]]] = {target.name: [] for target in targets}
    for _ in range(arguments.streams):
        for target in targets:
            streams[target.name].append(await stream_timings(target, stream_body))

    print(f"Gateway overhead on loopback: {arguments.requests} requests per path, {arguments.concurrency} concurrent")

    def added(samples: dict[str, list[float]], gateway: Target, percent: int) -> str:
        return milliseconds(percentile(samples[gateway.name], percent) - percentile(samples[direct.name], percent))

    print_table(
        "non-streamed chat completions, sequential",
        ["p50", "p99", "gateway CPU"],
        [
            (
                target.name,
                [milliseconds(percentile(latencies[target.name], p)) for p in (50, 99)]
                + [milliseconds(sequential_cpu[target.name]) if target.process else "-"],
            )
            for target in targets
        ]
        + [
            (f"added by {gateway.name}", [added(latencies, gateway, p) for p in (50, 99)] + [""])
            for gateway in gateways
        ],
    )
    print_table(
        f"throughput, {arguments.concurrency} concurrent clients",
        ["requests/s", f"/ {direct.name}", "gateway CPU"],
        [
            (
                target.name,
                [
                    f"{rates[target.name]:.0f}",
                    f"{rates[target.name] / rates[direct.name]:.2f}",
                    milliseconds(concurrent_cpu[target.name]) if target.process else "-",
                ],
            )
            for target in targets
        ],
    )
    first_bytes = {name: [first for first, _ in timings] for name, timings in streams.items()}
    print_table(
        f"streams of up to {arguments.stream_words} tokens, sequential",
        ["first byte p50", "first byte p99", "stream end p50"],
        [
            (
                target.name,
                [milliseconds(percentile(first_bytes[target.name], p)) for p in (50, 99)]
                + [milliseconds(percentile([total for _, total in streams[target.name]], 50))],
            )
            for target in targets
        ]
        + [
            (f"added by {gateway.name}", [added(first_bytes, gateway, p) for p in (50, 99)] + [""])
            for gateway in gateways
        ],
    )
    print(
        "\ngateway CPU: the gateway process's user + system CPU time per request. Sequentially the gateway idles"
        "\nbetween its requests (as at low load in front of a real engine) and pays a cold wake-up for each;"
        "\nunder concurrent load it stays busy and each request costs less."
    )


def print_table(title: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> None:
    print(f"\n{title}")
    print(" " * 30 + "".join(f"{column:>16}" for column in columns))
    for label, values in rows:
        print(f"  {label:<28}" + "".join(f"{value:>16}" for value in values))


def served_model(upstream_url: str) -> str:
    """The first model the model server lists (a llama.cpp server lists exactly one)."""
    response = httpx.get(f"{upstream_url}/models", timeout=10)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


async def run(upstream_url: str, gateway_urls: dict[str, tuple[str, psutil.Process]], arguments) -> None:
    limits = httpx.Limits(max_connections=arguments.concurrency)
    with_key = {"authorization": f"Bearer {API_KEY}"}
    targets = [Target("direct", httpx.AsyncClient(base_url=upstream_url, limits=limits, timeout=60))] + [
        Target(name, httpx.AsyncClient(base_url=url, limits=limits, timeout=60, headers=with_key), process)
        for name, (url, process) in gateway_urls.items()
    ]
    try:
        await measure(targets, served_model(upstream_url), arguments)
    finally:
        for target in targets:
            await target.client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="requests per path for latency and throughput")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients for the throughput run")
    parser.add_argument("--streams", type=int, default=50, help="streamed requests per path")
    parser.add_argument("--stream-words", type=int, default=10, help="words (tokens) in each streamed answer")
    parser.add_argument(
        "--event-delay", type=float, default=0.005, help="seconds between the fake server's streamed events"
    )
    parser.add_argument(
        "--upstream-url",
        default=os.environ.get("BENCH_UPSTREAM_URL"),
        help="OpenAI base URL of a running model server (e.g. llama.cpp's http://127.0.0.1:8080/v1) instead of "
        "the fake one; also BENCH_UPSTREAM_URL",
    )
    parser.add_argument("--baseline-app", type=Path, help="app/ directory of another checkout to measure too")
    parser.add_argument(
        "--baseline-python", default=sys.executable, help="interpreter with the baseline's requirements installed"
    )
    arguments = parser.parse_args()

    with ExitStack() as running:
        upstream_url = arguments.upstream_url
        if upstream_url is None:
            upstream_port = free_port()
            upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
            fake_command = [sys.executable, str(FAKE_UPSTREAM), "--port", str(upstream_port)]
            running.enter_context(
                background_process(
                    fake_command + ["--event-delay", str(arguments.event_delay)], f"{upstream_url}/models"
                )
            )
        model = served_model(upstream_url)
        sources = {"gateway": (sys.executable, ROOT / "app")}
        if arguments.baseline_app:
            sources["baseline gateway"] = (arguments.baseline_python, arguments.baseline_app)
        gateway_urls = {
            name: running.enter_context(gateway_process(python, app_dir, upstream_url, model))
            for name, (python, app_dir) in sources.items()
        }
        asyncio.run(run(upstream_url, gateway_urls, arguments))


if __name__ == "__main__":
    main()
