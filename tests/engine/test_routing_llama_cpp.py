"""The gateway routing one model over two real llama.cpp servers (replicas with two slots each, the same weights):
concurrent requests spread by load, and a conversation's next turn sent to the replica whose prompt cache holds
its start, which llama.cpp confirms by the tokens it reports served from cache."""

from __future__ import annotations

import json
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import ContextManager, Iterator

import httpx
import pytest

from test_llama_cpp_gateway import API_KEY, CLIENT_TIMEOUT_SECONDS, MODEL, gateway, llama_server, metric_value

SLOTS = 2


@pytest.fixture(scope="module")
def replica_urls(llama_server_build: Path, tmp_path_factory) -> Iterator[list[str]]:
    with ExitStack() as running:
        yield [running.enter_context(llama_server(llama_server_build, tmp_path_factory.mktemp(f"replica-{index}"), MODEL,
                                                  seed=0, slots=SLOTS))
               for index in range(2)]


def routed_gateway(replica_urls: list[str], log: Path, **routing) -> ContextManager[str]:
    return gateway(log, UPSTREAM_BASE_URL=f"{replica_urls[0]}/v1", MODEL=MODEL, ROUTING=json.dumps(
        {MODEL: {"replicas": [f"{url}/v1" for url in replica_urls], "maxInFlightPerReplica": SLOTS, **routing}}))


def chat(gateway_url: str, messages: list[dict], **fields) -> dict:
    response = httpx.post(f"{gateway_url}/v1/chat/completions", headers={"authorization": f"Bearer {API_KEY}"},
                          json={"model": MODEL, "messages": messages, "temperature": 0, **fields},
                          timeout=CLIENT_TIMEOUT_SECONDS)
    assert response.status_code == 200, response.text
    return response.json()


def per_replica(gateway_url: str, replica_urls: list[str], metric: str) -> list[float]:
    scraped = httpx.get(f"{gateway_url}/metrics").text
    return [metric_value(scraped, metric, model=MODEL, replica=url.removeprefix("http://")) for url in replica_urls]


def test_concurrent_requests_are_spread_over_the_replicas_by_load(replica_urls, tmp_path):
    with routed_gateway(replica_urls, tmp_path / "gateway.log", policy="least-loaded") as gateway_url:
        start = threading.Barrier(4)

        def ask(number: int) -> None:
            start.wait(CLIENT_TIMEOUT_SECONDS)
            # A long answer (the end-of-text token ignored), so all four are in flight together.
            chat(gateway_url, [{"role": "user", "content": f"question {number}"}], max_tokens=200, ignore_eos=True)

        threads = [threading.Thread(target=ask, args=(number,)) for number in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_SECONDS)

        assert per_replica(gateway_url, replica_urls, "gateway_replica_chosen_total") == [2, 2]


def test_a_conversations_next_turn_is_served_from_the_prompt_cache_of_its_replica(replica_urls, tmp_path):
    system = {"role": "system", "content": "You are the stack's helpful assistant; answer in one short line. " * 6}
    with routed_gateway(replica_urls, tmp_path / "gateway.log", policy="prefix") as gateway_url:
        messages = [system, {"role": "user", "content": "What does the gateway do?"}]
        first = chat(gateway_url, messages, max_tokens=8)
        messages += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                     {"role": "user", "content": "And the runner?"}]
        second = chat(gateway_url, messages, max_tokens=8)
        chosen = per_replica(gateway_url, replica_urls, "gateway_replica_chosen_total")
        hits = per_replica(gateway_url, replica_urls, "gateway_replica_prefix_hits_total")

    assert sorted(chosen) == [0, 2] and hits == chosen  # both turns on one replica, the one their prefix maps to
    # The second turn's prompt starts with the whole first one, which the replica evaluated already.
    assert second["timings"]["cache_n"] >= first["timings"]["prompt_n"] > 0
