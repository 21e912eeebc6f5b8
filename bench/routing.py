"""Routing policies side by side on real llama.cpp servers: random, pinned per connection, least-loaded, and
least-loaded with prefix affinity, in one run on the same workload.

Starts --replicas llama.cpp servers on 127.0.0.1 (the binary .ci/llama-server builds; a random-weight llama
model written here, wide enough that evaluating a prompt costs time) with --slots slots each and prompt caching as
the stack runs them (one KV cache for the slots, idle slots saved to the RAM prompt cache; see serving()), and the
gateway (`python -m model_gateway`, as its image runs it) in front of them with the replicas listed in
GATEWAY_ROUTING. Each policy gets servers and a gateway of its own, so no policy inherits another's prompt caches,
each server having seen every system prompt once (as servers in service have), and the same workload, on which the
policies take turns a slice (--rounds) at a time:

  conversations  multi-turn chats (--turns turns each) sharing --system-prompts system prompts of about
                 --system-words words; each turn appends the model's answer and a new user message, as a chat
                 client does; streamed, temperature 0
  arrivals       open loop: conversations start at Poisson-distributed times, at a rate giving --load (0.8) of the
                 capacity measured first (requests per second of a closed loop as wide as all slots, least-loaded)

Reported per policy: time to first token (p50, p99), requests per second, prompt tokens the engines evaluated and
served from their cache (llama.cpp's `timings.prompt_n` / `timings.cache_n` in each answer), and the gateway's CPU
time per request. One more row, `home`, sends each conversation straight to a server of its own, every turn, with
no gateway: prefix affinity that never spills, the prompt tokens it would save on the same servers at best. The
baselines run as a gateway without admission would (the engine queues what its slots cannot take); least-loaded and
prefix admit --slots requests per replica and queue the rest in the gateway. The last line states the ratios;
--plot writes the TTFT distributions per policy as a PNG (needs matplotlib).

    python bench/routing.py --llama-dir ~/.cache/model-stack-toolchain/llama-server/0.3.36 --plot docs/routing-ttft.png

Loopback only; every phase is bounded (a few minutes in all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gateway"))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from llama_server import llama_server_command, llama_server_directory, running, write_tiny_llama  # noqa: E402
from loopback import answers, eventually, free_port  # noqa: E402

MODEL = "bench-llama"
API_KEY = "bench-key"
POLICIES = {"random": "random", "pinned": "connection", "least-loaded": "least-loaded", "prefix": "prefix"}
"""Each policy's name in the report -> the gateway's name for it."""
HOME = "home"
"""The row of prefix affinity that never spills: each conversation sent straight to a replica of its own (turn after
turn, the conversations spread evenly), no gateway, no load bound."""
_STARTUP_SECONDS = 30
_REQUEST_TIMEOUT_SECONDS = 120
# Words the prompts are made of: common English, so the tokenizer splits them as it would real text.
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word but "
    "not what all were we when your can said there use an each which she do how their if will up other about out "
    "many then them these so some her would make like him into time has look two more write go see number no way "
    "could people my than first water been call who oil its now find long down day did get come made may part "
    "cluster node pod service replica request token model cache prompt answer system user gateway engine"
).split()


@dataclass
class Turn:
    ttft: float
    prompt_n: int
    cache_n: int


@dataclass
class Outcome:
    policy: str
    turns: list[Turn] = field(default_factory=list)
    failures: int = 0
    wall_seconds: float = 0.0
    gateway_cpu_seconds: float = 0.0

    def ttft_quantile(self, q: float) -> float:
        ttfts = sorted(turn.ttft for turn in self.turns)
        return ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] if ttfts else float("nan")

    @property
    def evaluated(self) -> int:
        return sum(turn.prompt_n for turn in self.turns)

    @property
    def cached(self) -> int:
        return sum(turn.cache_n for turn in self.turns)


@dataclass
class Conversation:
    start: float
    system: str
    users: list[str]
    think: list[float]


def words(generator: random.Random, count: int) -> str:
    return " ".join(generator.choice(_WORDS) for _ in range(count))


def system_prompts(arguments: argparse.Namespace) -> list[str]:
    generator = random.Random(arguments.seed)
    return [f"System prompt {index}. " + words(generator, arguments.system_words)
            for index in range(arguments.system_prompts)]


def workload(arguments: argparse.Namespace, systems: list[str], rate: float, seed: int) -> list[Conversation]:
    """Conversations on `systems` starting as a Poisson process whose turns arrive at `rate` per second on average."""
    generator = random.Random(seed)
    conversations, start = [], 0.0
    while start < arguments.duration:
        start += generator.expovariate(rate / arguments.turns)
        conversations.append(Conversation(
            start=start,
            system=generator.choice(systems),
            users=[words(generator, arguments.user_words) for _ in range(arguments.turns)],
            think=[generator.expovariate(1 / arguments.think_seconds) for _ in range(arguments.turns)],
        ))
    return conversations


@contextmanager
def background(command: list[str], ready_url: str, environment: dict[str, str]) -> Iterator[psutil.Process]:
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, env={**os.environ, **environment}, stdout=output, stderr=subprocess.STDOUT)
        try:
            if not eventually(lambda: answers(ready_url) or process.poll() is not None, _STARTUP_SECONDS) \
                    or process.poll() is not None:
                output.seek(0)
                raise SystemExit(f"{command[0]} did not come up:\n{output.read().decode()[-4000:]}")
            yield psutil.Process(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serving(arguments: argparse.Namespace, model: Path, policy: str, work: Path,
            systems: list[str]) -> Iterator[tuple[list[str], psutil.Process | None]]:
    """Fresh llama.cpp servers, each having seen every system prompt once, and a gateway routing over them with
    `policy`; yields [the gateway's URL] and its process, or for HOME the servers' URLs and None."""
    with ExitStack() as stack:
        urls = []
        for index in range(arguments.replicas):
            port = free_port()
            # As the stack runs llama.cpp (`-np auto`): one KV cache for the slots, with which llama.cpp saves each
            # idle slot to its RAM prompt cache (--cache-ram) and clears it as the next task starts. A request then
            # finds its conversation in the slot that served its last turn, when nothing started since, or in the
            # RAM cache, which restores the longest cached start of its prompt. With a KV cache per slot (what an
            # explicit -np gives), an idle slot keeps its prompt, and a slot holding another conversation with the
            # same system prompt is taken by similarity without saving or loading anything: the affinity is lost.
            command = llama_server_command(arguments.llama_dir, model, MODEL, port, slots=arguments.slots,
                                           context_tokens=arguments.slot_context, unified_kv=True)
            command += shlex.split(arguments.llama_args)
            stack.enter_context(running(command, f"http://127.0.0.1:{port}/health",
                                        work / f"{policy}-llama-{index}.log"))
            urls.append(f"http://127.0.0.1:{port}/v1")
            # Servers in service have long seen the few system prompts (llama.cpp keeps them in its RAM prompt
            # cache), whichever policy routes to them: their first evaluation is no policy's to win or lose, and
            # in a run of seconds it would weigh as much as all the conversations' own turns.
            for system in systems:
                httpx.post(f"{urls[-1]}/chat/completions", timeout=_REQUEST_TIMEOUT_SECONDS, json={
                    "messages": [{"role": "system", "content": system}], "max_tokens": 1}).raise_for_status()
        if policy == HOME:
            yield [url.removesuffix("/v1") for url in urls], None
            return
        routing = {"policy": POLICIES[policy], "replicas": urls, "maxWaitSeconds": _REQUEST_TIMEOUT_SECONDS}
        if policy in ("least-loaded", "prefix"):
            routing["maxInFlightPerReplica"] = arguments.slots
        if policy == "prefix" and arguments.load_factor is not None:
            routing["loadFactor"] = arguments.load_factor
        port = free_port()
        gateway = stack.enter_context(background(
            [sys.executable, "-m", "model_gateway"], f"http://127.0.0.1:{port}/health",
            {"PYTHONPATH": str(ROOT / "app"), "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
             "GATEWAY_UPSTREAM_BASE_URL": urls[0], "GATEWAY_MODEL": MODEL, "GATEWAY_API_KEYS": API_KEY,
             "GATEWAY_ROUTING": json.dumps({MODEL: routing}), "GATEWAY_LOG_LEVEL": "warning"}))
        yield [f"http://127.0.0.1:{port}"], gateway


async def chat_turn(client: httpx.AsyncClient, messages: list[dict], max_tokens: int) -> tuple[Turn, str]:
    """One streamed turn: its time to the first content, llama.cpp's prompt timings, and the answer's text."""
    started = time.perf_counter()
    ttft = None
    pieces: list[str] = []
    timings: dict = {}
    body = {"model": MODEL, "messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": 0}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            timings = event.get("timings") or timings
            for choice in event.get("choices", []):
                content = (choice.get("delta") or {}).get("content")
                if content:
                    ttft = ttft if ttft is not None else time.perf_counter() - started
                    pieces.append(content)
    if ttft is None:  # an answer of no content: its first token was its end
        ttft = time.perf_counter() - started
    return Turn(ttft, int(timings.get("prompt_n", 0)), int(timings.get("cache_n", 0))), "".join(pieces)


async def converse(client: httpx.AsyncClient, conversation: Conversation, origin: float, outcome: Outcome,
                   max_tokens: int) -> None:
    """`origin` is when the conversation's start counts from."""
    await asyncio.sleep(max(0.0, origin + conversation.start - time.perf_counter()))
    messages = [{"role": "system", "content": conversation.system}]
    for user, think in zip(conversation.users, conversation.think):
        messages.append({"role": "user", "content": user})
        try:
            turn, answer = await chat_turn(client, messages, max_tokens)
        except (httpx.HTTPError, RuntimeError) as error:
            print(f"{outcome.policy}: request failed: {error}", file=sys.stderr)
            outcome.failures += 1
            return
        outcome.turns.append(turn)
        messages.append({"role": "assistant", "content": answer})
        await asyncio.sleep(think)


def client_for(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, headers={"authorization": f"Bearer {API_KEY}"},
                             timeout=_REQUEST_TIMEOUT_SECONDS, limits=httpx.Limits(max_connections=None))


async def measure_capacity(gateway_url: str, arguments: argparse.Namespace, systems: list[str]) -> float:
    """Requests per second a closed loop as wide as all the slots gets through, conversations as in the run."""
    generator = random.Random(1)
    deadline = time.perf_counter() + arguments.calibration_seconds
    done = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            [conversation] = workload(argparse.Namespace(**{**vars(arguments), "duration": 1e-9}), systems, 1.0,
                                      generator.randrange(1 << 30))
            messages = [{"role": "system", "content": conversation.system}]
            for user in conversation.users:
                messages.append({"role": "user", "content": user})
                try:
                    _, answer = await chat_turn(client, messages, arguments.max_tokens)
                except (httpx.HTTPError, RuntimeError) as error:
                    print(f"calibration request failed: {error}", file=sys.stderr)
                    break
                messages.append({"role": "assistant", "content": answer})
                done += 1
                if time.perf_counter() >= deadline:
                    return

    started = time.perf_counter()
    async with client_for(gateway_url) as client:
        await asyncio.gather(*(worker(client) for _ in range(arguments.replicas * arguments.slots)))
    return done / (time.perf_counter() - started)


async def run_round(urls: list[str], gateway: psutil.Process | None, outcome: Outcome,
                    conversations: list[tuple[int, Conversation]], offset: float, max_tokens: int) -> None:
    """Runs `conversations` (their starts counted from `offset`) through one policy's gateway, or, with several
    `urls` (HOME), each conversation straight to the server its index picks, adding their turns, time and the
    gateway's CPU time to `outcome`."""
    cpu_before = sum(gateway.cpu_times()[:2]) if gateway else 0.0
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client_for(url)) for url in urls]
        origin = time.perf_counter() - offset
        await asyncio.gather(*(converse(clients[index % len(clients)], conversation, origin, outcome, max_tokens)
                               for index, conversation in conversations))
        outcome.wall_seconds += time.perf_counter() - origin - offset
    if gateway:
        outcome.gateway_cpu_seconds += sum(gateway.cpu_times()[:2]) - cpu_before


def prefix_hit_share(gateway_url: str) -> float:
    """The share of requests the gateway sent to the replica their prefix maps to (not spilled for load)."""
    totals = {"gateway_replica_prefix_hits_total": 0.0, "gateway_replica_chosen_total": 0.0}
    for line in httpx.get(f"{gateway_url}/metrics").text.splitlines():
        name, _, value = line.partition("{")
        if name in totals:
            totals[name] += float(value.rsplit(" ", 1)[1])
    return totals["gateway_replica_prefix_hits_total"] / max(totals["gateway_replica_chosen_total"], 1)


def report(outcomes: dict[str, Outcome], rate: float, capacity: float, hit_share: float) -> None:
    """The table (HOME's gateway CPU is none: it has no gateway), then the ratios, the issue's line last."""
    print(f"\noffered load {rate:.2f} req/s = {rate / capacity:.0%} of the measured capacity {capacity:.2f} req/s\n")
    print("| policy | TTFT p50 (ms) | TTFT p99 (ms) | req/s | prompt tokens evaluated | served from cache | "
          "gateway CPU per request (ms) | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, outcome in outcomes.items():
        requests = len(outcome.turns)
        total = outcome.evaluated + outcome.cached
        print(f"| {name} | {outcome.ttft_quantile(0.5) * 1000:.0f} | {outcome.ttft_quantile(0.99) * 1000:.0f} | "
              f"{requests / outcome.wall_seconds:.2f} | {outcome.evaluated} | "
              f"{outcome.cached} ({outcome.cached / total if total else 0:.0%}) | "
              f"{'-' if name == HOME else f'{outcome.gateway_cpu_seconds / max(requests, 1) * 1000:.2f}'} | "
              f"{outcome.failures} |")
    print(f"\nprefix affinity sent {hit_share:.0%} of the requests to the replica their prefix maps to")
    prefix, baseline, pinned = outcomes["prefix"], outcomes["random"], outcomes["pinned"]
    if not baseline.evaluated:
        raise SystemExit("llama.cpp reported no prompt timings: no ratio to state")
    print(f"\nevery turn at home (affinity that never spills): prompt tokens evaluated home/random "
          f"{outcomes[HOME].evaluated / baseline.evaluated:.2f}")
    print(f"\nrouting: prompt tokens evaluated prefix/random {prefix.evaluated / baseline.evaluated:.2f}; "
          f"p99 TTFT prefix/random {prefix.ttft_quantile(0.99) / baseline.ttft_quantile(0.99):.2f}, "
          f"prefix/pinned {prefix.ttft_quantile(0.99) / pinned.ttft_quantile(0.99):.2f}")


def plot(outcomes: dict[str, Outcome], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4))
    for name in POLICIES:  # not HOME, whose requests skip the gateway and its admission
        ttfts = sorted(turn.ttft * 1000 for turn in outcomes[name].turns)
        axes.step(ttfts, [(index + 1) / len(ttfts) for index in range(len(ttfts))], where="post", label=name)
    axes.set_xscale("log")
    axes.set_xlabel("time to first token (ms, log scale)")
    axes.set_ylabel("fraction of requests")
    axes.set_title(title, fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-dir", type=Path, help="where .ci/llama-server put llama-server (default: ask it)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--slots", type=int, default=2, help="llama.cpp --parallel per replica")
    parser.add_argument("--slot-context", type=int, default=2048, help="context tokens per slot")
    parser.add_argument("--embedding", type=int, default=128, help="the model's width (prompt cost grows with it)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--system-prompts", type=int, default=4)
    parser.add_argument("--system-words", type=int, default=600)
    parser.add_argument("--user-words", type=int, default=40)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--think-seconds", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--load", type=float, default=0.8, help="offered load as a fraction of the capacity")
    parser.add_argument("--load-factor", type=float, help="prefix affinity's bound (loadFactor; default: the gateway's)")
    parser.add_argument("--duration", type=float, default=30, help="seconds over which conversations start")
    parser.add_argument("--rounds", type=int, default=3, help="slices of the conversations the policies take turns on")
    parser.add_argument("--calibration-seconds", type=float, default=15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--llama-args", default="", help="more llama-server arguments, for every server alike "
                                                         "(e.g. '--slot-prompt-similarity 0')")
    parser.add_argument("--plot", type=Path, help="write the TTFT distributions to this PNG")
    arguments = parser.parse_args()
    arguments.llama_dir = arguments.llama_dir or llama_server_directory()

    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        model = work / "bench-llama.gguf"
        write_tiny_llama(model, arguments.llama_dir, embedding=arguments.embedding, layers=arguments.layers,
                         context_tokens=arguments.slot_context)
        systems = system_prompts(arguments)
        with serving(arguments, model, "least-loaded", work, systems) as ([gateway_url], _):
            capacity = asyncio.run(measure_capacity(gateway_url, arguments, systems))
        rate = arguments.load * capacity
        conversations = workload(arguments, systems, rate, arguments.seed)
        print(f"capacity {capacity:.2f} req/s; {len(conversations)} conversations of {arguments.turns} turns at "
              f"{rate:.2f} req/s", flush=True)
        rows = [*POLICIES, HOME]
        outcomes = {policy: Outcome(policy) for policy in rows}
        with ExitStack() as stack:
            gateways = {policy: stack.enter_context(serving(arguments, model, policy, work, systems))
                        for policy in rows}
            # The policies take turns, a slice of the conversations at a time, each policy first in turn: work
            # starting and stopping on a shared machine then weighs on every policy alike, where one policy after
            # another left whichever ran during a busy spell with its figures.
            span = arguments.duration / arguments.rounds
            for round_index in range(arguments.rounds):
                batch = [(index, conversation) for index, conversation in enumerate(conversations)
                         if min(int(conversation.start // span), arguments.rounds - 1) == round_index]
                order = rows[round_index % len(rows):] + rows[:round_index % len(rows)]
                for policy in order:
                    urls, gateway = gateways[policy]
                    asyncio.run(run_round(urls, gateway, outcomes[policy], batch, round_index * span,
                                          arguments.max_tokens))
                    print(f"round {round_index + 1}, {policy}: {len(batch)} conversations, load average "
                          f"{os.getloadavg()[0]:.1f}", flush=True)
            hit_share = prefix_hit_share(gateways["prefix"][0][0])
    report(outcomes, rate, capacity, hit_share)
    if arguments.plot:
        plot(outcomes, arguments.plot, f"{arguments.replicas} llama.cpp replicas x {arguments.slots} slots, "
                                       f"{arguments.load:.0%} load, {arguments.turns}-turn chats, "
                                       f"{arguments.system_prompts} system prompts")


if __name__ == "__main__":
    main()
