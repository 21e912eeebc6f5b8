"""Which replica of a model's engine serves each request, and how many requests each replica takes at once.

A `ModelRoute` holds a model's replicas (a fixed list, or the ready pods behind a headless Service's DNS name,
refreshed by `DnsDiscovery`), counts the requests the gateway has in flight on each, and admits a request only to
a replica below the model's in-flight limit: beyond it requests wait in the gateway, first come first served, for
a bounded time, then get 429 with Retry-After, so an engine is never pushed past its batch capacity. Which
admitted replica a request gets is the policy's choice:

- `random`: any replica, uniformly.
- `connection`: what a keep-alive connection pool through a Kubernetes Service (kube-proxy) does, the baseline to
  compare with: each pooled connection is pinned to the replica picked when it opened, and a request takes the
  most recently released idle connection (aiohttp's pool is a stack), or opens one to a random replica.
- `least-loaded`: the replica with the fewest requests in flight (ties broken at random). The counts are this
  gateway's own, exact and current, so it scans the few replicas instead of sampling two.
- `prefix`: consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018) over a hash of the
  prompt's start: requests sharing it (a conversation's turns, which repeat the system prompt and the first user
  message) go to the same replica, whose prompt cache (vLLM's prefix caching, llama.cpp's cache_prompt) holds it,
  unless that replica has more than the load factor (1.25 unless set) times the mean load; then the next replica on
  the ring takes it. A replica's load counts the requests waiting for it as well as those in flight: a request
  whose replica is at its in-flight limit but within the bound waits for that replica, whose freed places go to
  its own waiters first, since an engine busy with all its slots is the normal state under load, and each spill
  evaluates the conversation again on another replica (and its next turn, back home, the spilled turn). It spills
  only to a place that frees while nobody waits for it, which would otherwise idle. Replicas joining or leaving
  move only the prefixes next to them on the ring.

Policies are plain classes with `choose(route, key, may_wait) -> (replica or None, prefix hit)`.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import random
import socket
import sys
import time
import zlib
from collections import deque
from typing import Awaitable, Callable, Iterable, Protocol
from urllib.parse import urlsplit

from .errors import Rejected, error_response
from .metrics import GatewayMetrics

log = logging.getLogger("model_gateway.routing")

POLICIES = ("random", "connection", "least-loaded", "prefix")
# Idle upstream connections are dropped before the model server drops them (uvicorn, which vLLM runs on, closes
# idle connections after 5 s by default), so a request is not sent on a connection the server is closing.
UPSTREAM_KEEPALIVE_SECONDS = 4.0
# A replica's points on the hash ring: enough that each replica's share of the ring is within a few percent of
# 1/n for a handful of replicas.
_VIRTUAL_NODES = 100
# CHWBL's 1 + epsilon: a replica keeps its prefixes while it carries at most 25% more than the mean load
# (HAProxy's hash-balance-factor 125; Vimeo's production setting).
DEFAULT_LOAD_FACTOR = 1.25
# How much of the prompt identifies a conversation: the system prompt and the first user message, up to this many
# characters, hashed on every request.
_PREFIX_CHARS = 16384
# A replica that refused a connection is skipped this long, so the next requests do not try it first again.
_EJECT_SECONDS = 5.0
# Sent with a 503 for a model that has no ready replica: about a readiness probe period.
_NO_REPLICA_RETRY_AFTER_SECONDS = 5

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Looks up a host's IP addresses (the ready pods behind a headless Service)."""


class Replica:
    """One engine serving the model, and the gateway's count of requests it has there now."""

    __slots__ = ("base_url", "label", "in_flight", "waiting", "live", "ejected", "_in_flight_gauge", "_chosen",
                 "_prefix_hits")

    def __init__(self, base_url: str, metrics: GatewayMetrics, model: str) -> None:
        self.base_url = base_url
        self.label = urlsplit(base_url).netloc
        self.in_flight = 0
        self.waiting = 0
        """Requests waiting in the gateway for this replica in particular (prefix affinity's)."""
        self.live = True
        """Still among the model's replicas; one that left finishes what it has in flight and takes nothing new."""
        self.ejected = False
        """Refused a connection moments ago: skipped until _EJECT_SECONDS have passed."""
        # The labelled children are looked up once, not on every request.
        self._in_flight_gauge = metrics.replica_in_flight.labels(model, self.label)
        self._chosen = metrics.replica_chosen.labels(model, self.label)
        self._prefix_hits = metrics.replica_prefix_hits.labels(model, self.label)

    def __repr__(self) -> str:
        return f"Replica({self.base_url!r}, in_flight={self.in_flight})"


class Policy(Protocol):
    needs_key: bool
    """Whether choose() uses the request's prefix key (otherwise the route does not compute it)."""

    def choose(self, route: ModelRoute, key: int | None, may_wait: bool) -> tuple[Replica | None, bool]:
        """The replica for the request, and whether it is the one the request's prefix maps to. It admits the
        request now, unless `may_wait` and the policy would rather the request waited for it; None when no replica
        admits it (it waits for whichever does first)."""

    def replicas_changed(self, replicas: list[Replica]) -> None: ...

    def released(self, replica: Replica) -> None: ...


class RandomPolicy:
    needs_key = False

    def choose(self, route: ModelRoute, key: int | None, may_wait: bool) -> tuple[Replica | None, bool]:
        admitted = [replica for replica in route.replicas if route.admits(replica)]
        return (random.choice(admitted) if admitted else None), False

    def replicas_changed(self, replicas: list[Replica]) -> None:
        pass

    def released(self, replica: Replica) -> None:
        pass


class ConnectionPinning(RandomPolicy):
    """Each upstream connection stays on the replica kube-proxy picked for it when it opened."""

    def __init__(self) -> None:
        self._idle: list[tuple[Replica, float]] = []
        """Idle pooled connections, each with the replica it is pinned to and when it was released; the last is
        the most recently released."""

    def choose(self, route: ModelRoute, key: int | None, may_wait: bool) -> tuple[Replica | None, bool]:
        now = time.monotonic()
        for index in range(len(self._idle) - 1, -1, -1):
            replica, since = self._idle[index]
            if not replica.live or now - since > UPSTREAM_KEEPALIVE_SECONDS:
                del self._idle[index]  # closed by the pool
            elif route.admits(replica):
                del self._idle[index]
                return replica, False
        return super().choose(route, key, may_wait)  # a new connection, to whichever replica kube-proxy picks

    def released(self, replica: Replica) -> None:
        self._idle.append((replica, time.monotonic()))


class LeastLoaded(RandomPolicy):
    def choose(self, route: ModelRoute, key: int | None, may_wait: bool) -> tuple[Replica | None, bool]:
        best = None
        ties = 0
        for replica in route.replicas:
            if not route.admits(replica):
                continue
            if best is None or replica.in_flight < best.in_flight:
                best, ties = replica, 1
            elif replica.in_flight == best.in_flight:
                ties += 1
                if random.randrange(ties) == 0:  # each of the tied replicas ends up chosen with equal chance
                    best = replica
        return best, False


class PrefixAffinity(LeastLoaded):
    """Consistent hashing with bounded loads over the prompt's leading messages; least-loaded for requests
    without a prompt (embeddings)."""

    needs_key = True

    def __init__(self, load_factor: float | None = None) -> None:
        self._load_factor = DEFAULT_LOAD_FACTOR if load_factor is None else load_factor
        self._points: list[int] = []
        self._owners: list[Replica] = []

    def replicas_changed(self, replicas: list[Replica]) -> None:
        ring = sorted(
            (zlib.crc32(f"{replica.base_url}#{index}".encode()), replica.base_url, replica)
            for replica in replicas
            for index in range(_VIRTUAL_NODES)
        )
        self._points = [point for point, _, _ in ring]
        self._owners = [replica for _, _, replica in ring]

    def choose(self, route: ModelRoute, key: int | None, may_wait: bool) -> tuple[Replica | None, bool]:
        replicas = route.replicas
        if key is None or not replicas:
            return super().choose(route, key, may_wait)
        load = sum(replica.in_flight + replica.waiting for replica in replicas)
        bound = math.ceil(self._load_factor * (load + 1) / len(replicas))
        points, owners = self._points, self._owners
        start = bisect.bisect_left(points, key)
        seen: list[Replica] = []
        for step in range(len(points)):
            replica = owners[(start + step) % len(points)]
            if replica in seen:
                continue
            if replica.in_flight + replica.waiting < bound and (
                    route.admits(replica) if not may_wait else not replica.ejected):
                return replica, not seen
            seen.append(replica)
            if len(seen) == len(replicas):
                break
        # No replica within the bound takes the request: the least loaded admitting one, if any.
        replica, _ = super().choose(route, key, may_wait)
        return replica, False


def make_policy(name: str, load_factor: float | None = None) -> Policy:
    """`load_factor`: prefix affinity's bound (DEFAULT_LOAD_FACTOR when None)."""
    if name == "prefix":
        return PrefixAffinity(load_factor)
    return {"random": RandomPolicy, "connection": ConnectionPinning, "least-loaded": LeastLoaded}[name]()


def prefix_key(payload: dict) -> int | None:
    """A hash of what identifies the request's conversation: a chat's messages up to the first user message
    (system prompts included), or a completion's prompt, up to _PREFIX_CHARS characters; None without a prompt.
    Stable across processes (CRC-32, not Python's salted hash), so every gateway replica maps a prefix alike."""
    remaining = _PREFIX_CHARS
    key = 0
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                break
            content = message.get("content")
            if isinstance(content, list):  # content parts: the text ones
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict)
                                  and isinstance(part.get("text"), str))
            if isinstance(content, str):
                key = zlib.crc32(content[:remaining].encode(), key)
                remaining -= len(content)
            if message.get("role") == "user" or remaining <= 0:
                return key
        return key if messages else None
    prompt = payload.get("prompt")
    if isinstance(prompt, str) and prompt:
        return zlib.crc32(prompt[:remaining].encode())
    return None


class _Waiter:
    """A request waiting for a replica: the one the policy has it wait for (counted in that replica's load), or any
    (None)."""

    __slots__ = ("future", "key", "replica", "hit")

    def __init__(self, future: asyncio.Future, key: int | None) -> None:
        self.future = future
        self.key = key
        self.replica: Replica | None = None
        self.hit = False

    def wait_for(self, replica: Replica | None, hit: bool) -> None:
        if self.replica is not None:
            self.replica.waiting -= 1
        if replica is not None:
            replica.waiting += 1
        self.replica, self.hit = replica, hit


class ModelRoute:
    """A model's replicas, their admission and the requests waiting for one."""

    def __init__(
        self,
        model: str,
        policy: str,
        metrics: GatewayMetrics,
        max_in_flight_per_replica: int | None = None,
        max_wait_seconds: float = 0.0,
        hold_seconds: float | None = None,
        replicas: Iterable[str] = (),
        load_factor: float | None = None,
    ) -> None:
        self.model = model
        self.policy = make_policy(policy, load_factor)
        self._metrics = metrics
        self._limit = max_in_flight_per_replica or sys.maxsize
        self._max_wait_seconds = max_wait_seconds
        self._hold_seconds = max_wait_seconds if hold_seconds is None else hold_seconds
        self._waiters: deque[_Waiter] = deque()
        self._waiting = metrics.requests_waiting.labels(model)
        self._replica_count = metrics.model_replicas.labels(model)
        self.replicas: list[Replica] = []
        """The live replicas, in a stable order."""
        self._by_url: dict[str, Replica] = {}
        self.set_replicas(replicas)

    @property
    def needs_key(self) -> bool:
        return self.policy.needs_key

    def admits(self, replica: Replica) -> bool:
        return replica.in_flight < self._limit and not replica.ejected

    def set_replicas(self, base_urls: Iterable[str]) -> None:
        """Makes `base_urls` the model's replicas. A replica that leaves keeps its requests in flight to the end and
        takes no new ones; one that joins takes the requests waiting."""
        urls = sorted(set(base_urls))
        if urls == [replica.base_url for replica in self.replicas]:
            return
        wanted = set(urls)
        for replica in self.replicas:
            if replica.base_url not in wanted:
                replica.live = False
                del self._by_url[replica.base_url]
                if replica.in_flight == 0:
                    self._forget(replica)
        for url in urls:
            if url not in self._by_url:
                self._by_url[url] = Replica(url, self._metrics, self.model)
        self.replicas = [self._by_url[url] for url in urls]
        self._replica_count.set(len(self.replicas))
        self.policy.replicas_changed(self.replicas)
        log.info("replicas changed", extra={"model": self.model, "replicas": urls})
        self._dispatch()

    def try_acquire(self, key: int | None) -> Replica | None:
        """A replica admitting the request now; None when the request has to wait. Requests already waiting for a
        replica never lose their place to it: a freed place goes to them at once."""
        replica, hit = self.policy.choose(self, key, self._max_wait_seconds > 0)
        if replica is None or not self.admits(replica):
            return None
        self._acquire(replica, hit)
        return replica

    async def wait(self, key: int | None) -> Replica:
        """A replica admitting the request once one does (the one the policy has it wait for, if any), after the
        requests waiting for it before; raises Rejected (429, or 503 while the model has no replica) when none
        does within the wait bound."""
        bound = self._max_wait_seconds if self.replicas else self._hold_seconds
        if bound <= 0:
            raise self._refusal()
        replica, hit = self.policy.choose(self, key, True)
        if replica is not None and self.admits(replica):  # a place freed since try_acquire
            self._acquire(replica, hit)
            return replica
        waiter = _Waiter(asyncio.get_running_loop().create_future(), key)
        waiter.wait_for(replica, hit)
        self._waiters.append(waiter)
        self._waiting.inc()
        try:
            return await asyncio.wait_for(waiter.future, bound)
        except (asyncio.TimeoutError, asyncio.CancelledError) as ended:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())  # handed a replica just as the wait ended: give its place back
            if isinstance(ended, asyncio.TimeoutError):
                raise self._refusal() from None
            raise
        finally:
            self._waiting.dec()
            if not waiter.future.done() or waiter.future.cancelled():
                waiter.wait_for(None, False)
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    def release(self, replica: Replica) -> None:
        """Ends a request on `replica`; the replica's freed place goes to the request waiting longest for it."""
        self._end(replica)
        self.policy.released(replica)
        self._dispatch()

    def retry(self, failed: Replica, key: int | None) -> Replica | None:
        """Another replica for a request `failed` refused before anything was sent (connection refused or timed
        out), without waiting; None when no other admits it. `failed` is skipped for a while meanwhile."""
        self._end(failed)
        if not any(replica is not failed for replica in self.replicas):
            self._dispatch()
            return None
        if not failed.ejected:
            failed.ejected = True
            asyncio.get_running_loop().call_later(_EJECT_SECONDS, self._readmit, failed)
        replica, hit = self.policy.choose(self, key, False)
        if replica is not None:
            self._acquire(replica, hit)
        return replica

    def _readmit(self, replica: Replica) -> None:
        replica.ejected = False
        self._dispatch()

    def _acquire(self, replica: Replica, hit: bool) -> None:
        replica.in_flight += 1
        replica._in_flight_gauge.inc()
        replica._chosen.inc()
        if hit:
            replica._prefix_hits.inc()

    def _end(self, replica: Replica) -> None:
        replica.in_flight -= 1
        replica._in_flight_gauge.dec()
        if not replica.live and replica.in_flight == 0:
            self._forget(replica)

    def _forget(self, replica: Replica) -> None:
        """Drops a departed replica's metrics, so pod churn does not grow the label set without end."""
        for metric in (self._metrics.replica_in_flight, self._metrics.replica_chosen, self._metrics.replica_prefix_hits):
            try:
                metric.remove(self.model, replica.label)
            except KeyError:
                pass

    def _dispatch(self) -> None:
        """Hands freed places to the waiting requests, oldest first: first each to a request waiting for that
        replica (chosen again when the one it waited for left or refused a connection) or for any; then a place
        nobody waits for to the oldest request waiting for another replica, which takes it rather than let it
        idle while it waits (a replica's waiters can outlast its bound when the load falls)."""
        for any_replica in (False, True):
            for waiter in list(self._waiters):
                if not any(self.admits(replica) for replica in self.replicas):
                    return
                if waiter.future.done():  # timed out or cancelled, and about to remove itself
                    continue
                if waiter.replica is None or not waiter.replica.live or waiter.replica.ejected:
                    waiter.wait_for(None, False)  # out of the count of loads the policy compares
                    waiter.wait_for(*self.policy.choose(self, waiter.key, True))
                if waiter.replica is not None and self.admits(waiter.replica):
                    replica, hit = waiter.replica, waiter.hit
                elif any_replica:
                    replica, hit = self.policy.choose(self, waiter.key, False)
                    if replica is None:
                        continue
                else:
                    continue
                waiter.wait_for(None, False)
                self._waiters.remove(waiter)
                self._acquire(replica, hit)
                waiter.future.set_result(replica)

    def _refusal(self) -> Rejected:
        if not self.replicas:
            return Rejected(error_response(
                503, f"no replica of model `{self.model}` is ready; try again shortly", "server_error",
                code="model_unavailable", headers={"retry-after": str(_NO_REPLICA_RETRY_AFTER_SECONDS)}))
        return Rejected(error_response(
            429, f"model `{self.model}` is at capacity: every replica has its limit of requests in flight; try "
                 "again shortly", "rate_limit_error", code="model_at_capacity",
            headers={"retry-after": str(max(1, math.ceil(self._max_wait_seconds)))}))


async def resolve_host(host: str, port: int) -> list[str]:
    """The IP addresses DNS gives for `host` (a headless Service: one per ready pod)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


# getaddrinfo's answers for a name with no address: a headless Service with no ready pod is NXDOMAIN in CoreDNS.
_NO_ADDRESS = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None)) if code is not None)


class DnsDiscovery:
    """Keeps a route's replicas in step with the addresses of a headless Service, which lists the ready pods of a
    Deployment (not-ready ones are left out by Kubernetes). Reading DNS needs no API access: no ServiceAccount
    token, RBAC rule or watch, where EndpointSlices would need all three in a pod that holds the API keys."""

    def __init__(self, route: ModelRoute, base_url: str, host: str, resolve: Resolver = resolve_host) -> None:
        parts = urlsplit(base_url)
        self._route = route
        self._host = host
        self._scheme = parts.scheme
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = parts.path
        self._resolve = resolve

    async def refresh(self) -> None:
        try:
            addresses = await self._resolve(self._host, self._port)
        except socket.gaierror as error:
            if error.errno not in _NO_ADDRESS:
                # A passing DNS failure keeps the replicas known: dropping them would refuse every request.
                log.warning("cannot look up replicas", extra={"model": self._route.model, "host": self._host,
                                                             "error": repr(error)})
                return
            addresses = []
        self._route.set_replicas(
            f"{self._scheme}://{f'[{address}]' if ':' in address else address}:{self._port}{self._path}"
            for address in addresses)

    async def run(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.refresh()
            except Exception:  # never let discovery die: the replicas known keep serving
                log.exception("replica discovery failed", extra={"model": self._route.model})
