"""The stack's PromQL against a real Prometheus (from its Go module, built by .ci/toolchain.py) scraping a real
llama.cpp server with two slots and the gateway in front of it, with the stack's own scrape jobs
(tests/engine/prometheus_lane.py): under a load of five long streamed requests, the autoscaling signal of the
engine and of the gateway, the ScaledObjects' trigger queries and every query of the dashboard return what the load
implies."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from components.dashboard import dashboard, queries_of
from components.inference_signals import ServedModelRef, held_query, load_query, running_query, waiting_query
from prometheus_lane import MODEL, REF, SCRAPE_INTERVAL_SECONDS, SLOTS, Lane, lane
from test_llama_cpp_gateway import metric_value

CONCURRENCY = 5
# The same model read through the gateway's per-model gauges, as the stack reads an engine without metrics (Ollama).
GATEWAY_REF = ServedModelRef(REF.namespace, REF.workload, REF.model, "ollama")
# Prometheus has seen a change after one scrape interval, plus the scrape itself; two intervals and a margin.
SETTLE_SECONDS = 3 * SCRAPE_INTERVAL_SECONDS


@pytest.fixture(scope="module")
def signals_lane(toolchain, llama_server_build: Path, tmp_path_factory) -> Iterator[Lane]:
    with lane("prometheus", llama_server_build, tmp_path_factory.mktemp("prometheus-lane")) as running:
        yield running


def expected_under_load() -> dict[str, float]:
    return {
        running_query(REF): min(CONCURRENCY, SLOTS),
        waiting_query(REF): CONCURRENCY - SLOTS,
        load_query(REF): CONCURRENCY,
        # The gateway relays every request at once (no per-replica limit here): all are in flight, none held.
        running_query(GATEWAY_REF): CONCURRENCY,
        waiting_query(GATEWAY_REF): 0,
        load_query(GATEWAY_REF): CONCURRENCY,
        held_query(REF): 0,
    }


def values(running: Lane, expressions) -> dict[str, float | None]:
    return {expression: running.scalar(expression) for expression in expressions}


def settles_to(running: Lane, expected: dict[str, float], seconds: float = SETTLE_SECONDS) -> dict[str, float | None]:
    """The queries' values once they equal `expected`, or as they were at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        seen = values(running, expected)
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(SCRAPE_INTERVAL_SECONDS / 4)


def gateway_in_flight(running: Lane) -> float:
    scraped = httpx.get(f"{running.gateway_url}/metrics").text
    return metric_value(scraped, "gateway_replica_requests_in_flight", model=MODEL,
                        replica=running.engine_url.removeprefix("http://"))


def engine_signal(running: Lane) -> tuple[float, float]:
    """What llama.cpp itself reports (processing, deferred), read from it directly."""
    scraped = httpx.get(f"{running.engine_url}/metrics").text
    return metric_value(scraped, "llamacpp:requests_processing"), metric_value(scraped, "llamacpp:requests_deferred")


def test_the_signals_and_every_query_return_what_the_load_implies(signals_lane):
    running = signals_lane
    load = [threading.Thread(target=running.stream_chat, args=(number,)) for number in range(CONCURRENCY)]
    for thread in load:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while engine_signal(running) != (SLOTS, CONCURRENCY - SLOTS):
            assert time.monotonic() < deadline, engine_signal(running)
            time.sleep(0.05)
        assert gateway_in_flight(running) == CONCURRENCY
        under_load = settles_to(running, expected_under_load())
        # Still the same load when Prometheus agreed: the requests outlast the scrapes.
        assert engine_signal(running) == (SLOTS, CONCURRENCY - SLOTS)
    finally:
        for thread in load:
            thread.join(60)
    assert under_load == expected_under_load()

    idle = {expression: 0 for expression in expected_under_load()}
    assert settles_to(running, idle) == idle

    # Every dashboard query and trigger query is valid PromQL over what is scraped. Those the load feeds have
    # values; kube-state-metrics does not run here, so the replica panels are empty (not an error), as are the
    # error panels of a load without errors.
    document = dashboard("engine lane", [REF, GATEWAY_REF])
    expressions = set(queries_of(document))
    empty = {expression for expression in expressions
             if "kube_deployment_" in expression or 'status=~"5.."' in expression or "upstream_errors" in expression}
    fed = expressions - empty
    deadline = time.monotonic() + SETTLE_SECONDS
    while not all(running.query(expression) for expression in fed) and time.monotonic() < deadline:
        time.sleep(SCRAPE_INTERVAL_SECONDS / 4)
    results = {expression: running.query(expression) for expression in expressions}
    assert {expression for expression in fed if not results[expression]} == set()
    assert {expression: results[expression] for expression in empty} == {expression: [] for expression in empty}
    positive = {expression: running.scalar(expression) for expression in fed
                if "rate(" in expression or "histogram_quantile" in expression}
    assert all(value > 0 for value in positive.values()), positive
