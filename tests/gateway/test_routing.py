"""Routing a model's requests across its replicas: replicas found in DNS (a headless Service) joining and leaving
under load without a request lost, load-aware and prefix-affine choice, retrying elsewhere only what no replica
has seen, and admission (a bounded FIFO wait, then 429 with Retry-After; 503 while no replica is ready).

The replicas are fake engines on 127.0.0.2-4 sharing one port, as pods behind a Service share theirs; a stand-in
for DNS says which of them the Service's name resolves to."""

from __future__ import annotations

import asyncio
import contextlib
import socketserver
import json
import sys
import threading
import time
from typing import Callable, Iterator

import httpx
import pytest

from fake_upstream import FAKE_MODEL, FakeUpstream
from gateway_helpers import API_KEY, APP_DIR, CLIENT_TIMEOUT_SECONDS, chat_request, metric_value
from loopback import eventually, serve

sys.path.insert(0, str(APP_DIR))

from model_gateway.app import create_app  # noqa: E402
from model_gateway.metrics import GatewayMetrics  # noqa: E402
from model_gateway.routing import ModelRoute, prefix_key  # noqa: E402
from model_gateway.settings import load_settings  # noqa: E402

REPLICA_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
NOBODY = "127.0.0.5"
"""A loopback address where nothing listens: connections to it are refused."""
SERVICE_HOST = "model-runner-replicas.models.svc.cluster.local."
HEADERS = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def replica_servers() -> Iterator[list[FakeUpstream]]:
    with contextlib.ExitStack() as running:
        first = running.enter_context(FakeUpstream().serving(REPLICA_HOSTS[0]))
        port = int(first.base_url.rsplit(":", 1)[1].split("/")[0])
        yield [first, *(running.enter_context(FakeUpstream().serving(host, port)) for host in REPLICA_HOSTS[1:])]


@pytest.fixture
def replicas(replica_servers: list[FakeUpstream]) -> list[FakeUpstream]:
    for replica in replica_servers:
        replica.reset()
    return replica_servers


class Dns:
    """What the headless Service's name resolves to: the addresses of the replicas that are ready."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = list(addresses)

    async def resolve(self, host: str, port: int) -> list[str]:
        assert host == SERVICE_HOST
        return list(self.addresses)


@pytest.fixture
def start_routed_gateway(replicas) -> Iterator[Callable[..., tuple[str, Dns]]]:
    """Starts a gateway whose model's replicas are the addresses `Dns` gives (all three fake replicas unless
    `addresses` says otherwise), routed as `routing` says; returns its base URL and the DNS stand-in."""
    port = replicas[0].base_url.rsplit(":", 1)[1].split("/")[0]
    with contextlib.ExitStack() as running:

        def start(addresses: list[str] = list(REPLICA_HOSTS), **routing) -> tuple[str, Dns]:
            dns = Dns(addresses)
            settings = load_settings({
                "GATEWAY_UPSTREAM_BASE_URL": f"http://model-runner.models.svc.cluster.local:{port}/v1",
                "GATEWAY_MODEL": FAKE_MODEL,
                "GATEWAY_API_KEYS": API_KEY,
                "GATEWAY_ROUTING": json.dumps({FAKE_MODEL: {"replicasHost": SERVICE_HOST, **routing}}),
                "GATEWAY_DISCOVERY_INTERVAL_SECONDS": "0.05",
            })
            return running.enter_context(serve(create_app(settings, resolve=dns.resolve))), dns

        yield start


def chat(gateway_url: str, message: str = "hello there", **fields) -> httpx.Response:
    return httpx.post(f"{gateway_url}/v1/chat/completions", json=chat_request(message, **fields), headers=HEADERS,
                      timeout=CLIENT_TIMEOUT_SECONDS)


def scrape(gateway_url: str, name: str, **labels: str) -> float:
    return metric_value(httpx.get(f"{gateway_url}/metrics").text, name, **labels)


def received(replica: FakeUpstream) -> list[str]:
    """The last user message of each chat the replica got, in order of arrival."""
    return [json.loads(request.body)["messages"][-1]["content"] for request in replica.requests
            if request.path == "/v1/chat/completions"]


class HeldStream:
    """A streamed chat that the replica serving it holds open after its first event, until the gates open: the
    replica has one request in flight meanwhile."""

    def __init__(self, gateway_url: str, replicas: list[FakeUpstream], message: str = "held stream") -> None:
        self.gate = threading.Event()
        for replica in replicas:
            replica.behaviour.stream_gate = self.gate
        self.started = threading.Event()
        self.events: list[str] = []
        self.status: int | None = None
        self._thread = threading.Thread(target=self._run, args=(gateway_url, message), daemon=True)
        self._thread.start()
        assert self.started.wait(CLIENT_TIMEOUT_SECONDS), "the held stream never started"

    def _run(self, gateway_url: str, message: str) -> None:
        with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", headers=HEADERS,
                          json=chat_request(message, stream=True), timeout=CLIENT_TIMEOUT_SECONDS) as response:
            self.status = response.status_code
            for line in response.iter_lines():
                if line:
                    self.events.append(line)
                    self.started.set()

    def finish(self) -> None:
        self.gate.set()
        self._thread.join(CLIENT_TIMEOUT_SECONDS)


def in_background(call: Callable[[], httpx.Response]) -> Callable[[], httpx.Response]:
    """Starts `call` in a thread; returns a function that waits for its answer."""
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()

    def answer() -> httpx.Response:
        thread.join(CLIENT_TIMEOUT_SECONDS)
        return answers[0]

    return answer


# --- discovery ---------------------------------------------------------------------------------------------------


def test_replicas_joining_and_leaving_under_load_lose_no_request(start_routed_gateway, replicas):
    first, second, _ = replicas
    gateway_url, dns = start_routed_gateway(addresses=[REPLICA_HOSTS[0]], policy="least-loaded")
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(chat(gateway_url, "under load").status_code)

    workers = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        assert eventually(lambda: len(received(first)) >= 5)
        dns.addresses.append(REPLICA_HOSTS[1])  # a pod becomes ready
        assert eventually(lambda: len(received(second)) >= 5), "the new replica took no requests"
        held = HeldStream(gateway_url, [first, second])
        holder = first if "held stream" in received(first) else second
        dns.addresses.remove(holder.base_url.split("//")[1].split(":")[0])  # its pod leaves the Service
        assert eventually(lambda: scrape(gateway_url, "gateway_model_replicas", model=FAKE_MODEL) == 1)
        time.sleep(0.1)  # let requests routed before the change finish
        left_with = len(received(holder))
        other = second if holder is first else first
        assert eventually(lambda: len(received(other)) >= left_with + 10)
        assert len(received(holder)) == left_with, "a replica that left still got new requests"
        held.finish()
    finally:
        stop.set()
        for worker in workers:
            worker.join(CLIENT_TIMEOUT_SECONDS)
    # The stream in flight on the replica that left ran to its end.
    assert held.status == 200 and held.events[-1] == "data: [DONE]"
    assert statuses and set(statuses) == {200}


def test_a_model_without_a_ready_replica_holds_requests_until_one_is(start_routed_gateway, replicas):
    gateway_url, dns = start_routed_gateway(addresses=[], holdSeconds=5)

    answer = in_background(lambda: chat(gateway_url))
    assert eventually(lambda: scrape(gateway_url, "gateway_requests_waiting", model=FAKE_MODEL) == 1)
    dns.addresses.append(REPLICA_HOSTS[2])  # the first pod becomes ready

    assert answer().status_code == 200
    assert len(received(replicas[2])) == 1


def test_a_model_without_a_ready_replica_answers_503_after_the_hold(start_routed_gateway, replicas):
    gateway_url, _ = start_routed_gateway(addresses=[], holdSeconds=0.2)

    started = time.monotonic()
    response = chat(gateway_url)

    assert time.monotonic() - started >= 0.2
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "model_unavailable"


# --- choice ------------------------------------------------------------------------------------------------------


def test_least_loaded_sends_requests_past_a_replica_that_is_busy(start_routed_gateway, replicas):
    gateway_url, _ = start_routed_gateway(addresses=list(REPLICA_HOSTS[:2]), policy="least-loaded")
    held = HeldStream(gateway_url, replicas)  # one replica is slow: it has a request it does not finish
    busy = next(replica for replica in replicas[:2] if received(replica))
    idle = replicas[1] if busy is replicas[0] else replicas[0]

    for turn in range(10):
        assert chat(gateway_url, f"request {turn}").status_code == 200
    held.finish()

    assert received(busy) == ["held stream"]
    assert received(idle) == [f"request {turn}" for turn in range(10)]


def test_prefix_affinity_keeps_each_conversation_on_one_replica(start_routed_gateway, replicas):
    gateway_url, _ = start_routed_gateway(policy="prefix")
    system = {"role": "system", "content": "You answer questions about the stack. " * 5}
    conversations = 12
    for turn in range(3):
        for conversation in range(conversations):
            messages = [system, {"role": "user", "content": f"conversation {conversation} starts"}]
            for earlier in range(turn):
                messages += [{"role": "assistant", "content": "an answer"},
                             {"role": "user", "content": f"conversation {conversation} turn {earlier + 1}"}]
            response = httpx.post(f"{gateway_url}/v1/chat/completions", headers=HEADERS,
                                  json={"model": FAKE_MODEL, "messages": messages})
            assert response.status_code == 200

    homes = {}
    for index, replica in enumerate(replicas):
        for message in received(replica):
            homes.setdefault(message.split()[1], set()).add(index)
    assert len(homes) == conversations
    assert all(len(home) == 1 for home in homes.values()), homes
    assert len(set().union(*homes.values())) > 1, "every conversation went to one replica"
    scraped = httpx.get(f"{gateway_url}/metrics").text
    hits = sum(metric_value(scraped, "gateway_replica_prefix_hits_total", model=FAKE_MODEL, replica=replica.base_url
                            .split("//")[1].removesuffix("/v1")) for replica in replicas)
    assert hits == 3 * conversations


# --- failures ----------------------------------------------------------------------------------------------------


def test_a_replica_refusing_connections_is_skipped_for_another(start_routed_gateway, replicas):
    gateway_url, _ = start_routed_gateway(addresses=[REPLICA_HOSTS[0], NOBODY], policy="random")

    statuses = [chat(gateway_url, f"request {turn}").status_code for turn in range(10)]

    assert statuses == [200] * 10
    assert received(replicas[0]) == [f"request {turn}" for turn in range(10)]


def test_a_replica_failing_after_the_request_was_sent_is_not_retried_elsewhere(start_routed_gateway, replicas):
    gateway_url, _ = start_routed_gateway(addresses=list(REPLICA_HOSTS[:2]), policy="random", maxInFlightPerReplica=1,
                                          maxWaitSeconds=0)
    held = HeldStream(gateway_url, replicas)  # one replica is full, so the next request can only go to the other
    full = next(replica for replica in replicas[:2] if received(replica))
    failing = replicas[1] if full is replicas[0] else replicas[0]
    failing.behaviour.failure_status = 500

    response = chat(gateway_url, "fails upstream")
    held.finish()

    assert response.status_code == 502
    assert received(failing) == ["fails upstream"]
    assert received(full) == ["held stream"]  # the engine may have acted on it: nobody else gets it


# --- admission ---------------------------------------------------------------------------------------------------


def test_requests_over_the_limit_wait_and_are_served_first_come_first_served(start_routed_gateway, replicas):
    gateway_url, _ = start_routed_gateway(addresses=[REPLICA_HOSTS[0]], maxInFlightPerReplica=1, maxWaitSeconds=10)
    held = HeldStream(gateway_url, replicas)
    answers = []
    for index in range(5):
        answers.append(in_background(lambda index=index: chat(gateway_url, f"waiting {index}")))
        # The next is sent only once this one waits, so the order of arrival is known.
        assert eventually(lambda: scrape(gateway_url, "gateway_requests_waiting", model=FAKE_MODEL) == index + 1)
    held.finish()

    assert [answer().status_code for answer in answers] == [200] * 5
    assert received(replicas[0]) == ["held stream", *(f"waiting {index}" for index in range(5))]
    assert scrape(gateway_url, "gateway_requests_waiting", model=FAKE_MODEL) == 0


def test_a_request_that_waits_too_long_gets_429_with_retry_after(start_routed_gateway, replicas):
    gateway_url, _ = start_routed_gateway(addresses=[REPLICA_HOSTS[0]], maxInFlightPerReplica=1, maxWaitSeconds=0.3)
    held = HeldStream(gateway_url, replicas)

    started = time.monotonic()
    response = chat(gateway_url, "too many")
    waited = time.monotonic() - started
    held.finish()

    assert response.status_code == 429 and waited >= 0.3
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "model_at_capacity"
    assert received(replicas[0]) == ["held stream"]
    assert scrape(gateway_url, "gateway_requests_waiting", model=FAKE_MODEL) == 0
    assert scrape(gateway_url, "gateway_model_requests_total", model=FAKE_MODEL, status="429") == 1


def test_a_waiting_request_whose_client_leaves_gives_up_its_place(start_routed_gateway, replicas):
    gateway_url, _ = start_routed_gateway(addresses=[REPLICA_HOSTS[0]], maxInFlightPerReplica=1, maxWaitSeconds=10)
    held = HeldStream(gateway_url, replicas)

    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(f"{gateway_url}/v1/chat/completions", json=chat_request("gone"), headers=HEADERS, timeout=0.5)
    left = eventually(lambda: scrape(gateway_url, "gateway_requests_waiting", model=FAKE_MODEL) == 0)
    held.finish()
    served = chat(gateway_url, "next")

    assert left, "the request of a client that left kept its place in the queue"
    assert served.status_code == 200
    assert received(replicas[0]) == ["held stream", "next"]
    assert scrape(gateway_url, "gateway_model_requests_total", model=FAKE_MODEL, status="499") == 1


def test_in_flight_and_chosen_are_counted_per_replica(start_routed_gateway, replicas):
    gateway_url, _ = start_routed_gateway(addresses=[REPLICA_HOSTS[0]])
    replica = replicas[0].base_url.split("//")[1].removesuffix("/v1")
    held = HeldStream(gateway_url, replicas)

    during = scrape(gateway_url, "gateway_replica_requests_in_flight", model=FAKE_MODEL, replica=replica)
    held.finish()

    assert during == 1
    assert eventually(
        lambda: scrape(gateway_url, "gateway_replica_requests_in_flight", model=FAKE_MODEL, replica=replica) == 0)
    assert scrape(gateway_url, "gateway_replica_chosen_total", model=FAKE_MODEL, replica=replica) == 1


# --- the policies on their own -----------------------------------------------------------------------------------


def route_of(policy: str, count: int = 3, **admission) -> ModelRoute:
    return ModelRoute("m", policy, GatewayMetrics(), replicas=[f"http://10.0.0.{n}:8000/v1" for n in range(1, count + 1)],
                      **admission)


def test_a_conversations_turns_share_a_prefix_key_and_other_conversations_do_not():
    system = {"role": "system", "content": "Be brief."}
    first_turn = {"messages": [system, {"role": "user", "content": "What is a pod?"}]}
    later_turn = {"messages": [*first_turn["messages"], {"role": "assistant", "content": "A group of containers."},
                               {"role": "user", "content": "And a node?"}]}
    other = {"messages": [system, {"role": "user", "content": "What is a node?"}]}
    other_system = {"messages": [{"role": "system", "content": "Be verbose."}, first_turn["messages"][1]]}
    parts = {"messages": [system, {"role": "user", "content": [{"type": "text", "text": "What is a pod?"}]}]}

    assert prefix_key(first_turn) == prefix_key(later_turn) == prefix_key(parts)
    assert len({prefix_key(first_turn), prefix_key(other), prefix_key(other_system)}) == 3
    assert prefix_key({"prompt": "Once upon"}) != prefix_key({"prompt": "Once upon a time"})
    assert prefix_key({"input": "embed me"}) is None


def test_prefix_affinity_spills_to_the_next_replica_beyond_the_load_bound():
    route = route_of("prefix")
    key = prefix_key({"prompt": "a shared system prompt"})
    home, hit = route.policy.choose(route, key, False)
    assert hit

    home.in_flight = 3  # others idle: the mean with this request is 4/3, the bound ceil(1.25 * 4/3) = 2
    spilled, hit = route.policy.choose(route, key, False)

    assert spilled is not home and not hit
    home.in_flight = spilled.in_flight = 1  # the bound is ceil(1.25 * 3/3) = 2: within it again
    assert route.policy.choose(route, key, False) == (home, True)


def test_a_higher_load_factor_keeps_requests_on_a_busier_replica():
    key = prefix_key({"prompt": "a shared system prompt"})
    for load_factor, stays in ((None, False), (2, True)):
        route = route_of("prefix", load_factor=load_factor)
        home, _ = route.policy.choose(route, key, False)
        busy = next(replica for replica in route.replicas if replica is not home)
        home.in_flight = busy.in_flight = 3  # the bound is ceil(factor * 7/3): 3 by default, 5 at 2

        assert (route.policy.choose(route, key, False) == (home, True)) is stays


def test_requests_wait_for_their_replica_within_the_bound_and_take_a_place_nobody_waits_for():
    async def scenario() -> None:
        route = route_of("prefix", max_in_flight_per_replica=1, max_wait_seconds=10)
        key = prefix_key({"prompt": "a conversation's start"})
        home = route.try_acquire(key)
        for replica in route.replicas:
            replica.in_flight = 1
        # Every place taken. The first waiter comes with a load of 3: the bound is ceil(1.25 * 4/3) = 2, home's
        # load 1; the second with 4 (one waiting for home): the bound is 3, home's load 2; the third with 5: the
        # bound is 3, home's load 3, so it waits for the next replica on the ring.
        first, second, third = (asyncio.ensure_future(route.wait(key)) for _ in range(3))
        await asyncio.sleep(0)
        assert home.waiting == 2
        [next_replica] = [replica for replica in route.replicas if replica.waiting == 1]
        [last_replica] = [replica for replica in route.replicas if replica not in (home, next_replica)]

        route.release(next_replica)  # goes to the request waiting for it, not to the two older ones waiting for home
        route.release(home)
        assert await third is next_replica and await first is home
        route.release(last_replica)  # nobody waits for it: the oldest waiting request takes it rather than idle it
        assert await second is last_replica
        hits = route._metrics.replica_prefix_hits.labels("m", home.label)._value.get()
        assert hits == 2 and sum(replica.waiting for replica in route.replicas) == 0

    # Not asyncio.run, which leaves the thread without an event loop: the Pulumi mocks of tests run after this one
    # in the same worker process ask for the thread's loop.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


def test_a_route_that_cannot_hold_requests_spills_instead_of_refusing():
    route = route_of("prefix", max_in_flight_per_replica=1)  # maxWaitSeconds 0: a request waits for nothing
    key = prefix_key({"prompt": "a conversation's start"})
    home = route.try_acquire(key)
    elsewhere = route.try_acquire(key)

    assert elsewhere is not None and elsewhere is not home


def test_replicas_leaving_move_only_their_own_prefixes():
    route = route_of("prefix", count=4)
    keys = [prefix_key({"prompt": f"conversation {n}"}) for n in range(2000)]
    before = {key: route.policy.choose(route, key, False)[0].base_url for key in keys}

    route.set_replicas([url for url in sorted(set(before.values()))[:3]])
    after = {key: route.policy.choose(route, key, False)[0].base_url for key in keys}

    gone = sorted(set(before.values()))[3]
    assert all(after[key] == before[key] for key in keys if before[key] != gone)
    # Each replica's share of the ring is near a quarter.
    shares = [list(before.values()).count(url) / len(keys) for url in set(before.values())]
    assert all(0.15 < share < 0.35 for share in shares), shares


def test_least_loaded_picks_the_replica_with_the_fewest_in_flight_and_respects_the_limit():
    route = route_of("least-loaded", max_in_flight_per_replica=2)
    for replica, load in zip(route.replicas, (2, 1, 2)):
        replica.in_flight = load
    assert route.policy.choose(route, None, False)[0] is route.replicas[1]

    route.replicas[1].in_flight = 2
    assert route.policy.choose(route, None, False) == (None, False)  # every replica at its limit: the request waits


# --- engines that close a connection after a stream ----------------------------------------------------------------


class _OneStreamPerConnection(socketserver.StreamRequestHandler):
    """llama.cpp's server as measured here (build 0.3.36): each connection carries one streamed answer, sent with
    `Keep-Alive: timeout=5, max=100` (or `Connection: close` when the request asks for it), and is then closed by
    the server. A request sent on it again is never answered: the worst case of the race the real server's close
    runs against a request reusing the connection."""

    def handle(self) -> None:
        length, connection = 0, b"Keep-Alive: timeout=5, max=100"
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                connection = b"Connection: close"
        self.rfile.read(length)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n%s\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" % connection)
        for event in (b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n', b"data: [DONE]\n\n"):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.rfile.readline()  # the next request on this connection, if one comes: closed unanswered


def test_a_connection_that_carried_a_stream_is_not_reused(tmp_path):
    """With admission, a request waiting for the replica is sent the moment a stream there ends, on the connection
    that stream just gave back to the pool; llama.cpp closes it, so reusing it failed the request with 502."""
    engine = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _OneStreamPerConnection)
    engine.daemon_threads = True
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    settings = load_settings({
        "GATEWAY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{engine.server_address[1]}/v1",
        "GATEWAY_MODEL": FAKE_MODEL,
        "GATEWAY_API_KEYS": API_KEY,
        "GATEWAY_ROUTING": json.dumps({FAKE_MODEL: {
            "policy": "least-loaded", "replicas": [f"http://127.0.0.1:{engine.server_address[1]}/v1"],
            "maxInFlightPerReplica": 1}}),
    })
    try:
        with serve(create_app(settings)) as gateway_url:
            answers = [chat(gateway_url, f"turn {index}", stream=True) for index in range(3)]
    finally:
        engine.shutdown()
        engine.server_close()

    assert [answer.status_code for answer in answers] == [200] * 3
    assert all("[DONE]" in answer.text for answer in answers)
