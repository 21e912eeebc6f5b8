"""Fixtures for the gateway's tests: the fake model server and gateways in front of it, all on loopback."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, ContextManager, Iterator

import httpx
import pytest

from fake_upstream import FAKE_MODEL, SECOND_MODEL, FakeUpstream
from gateway_helpers import API_KEY, APP_DIR, CLIENT_TIMEOUT_SECONDS
from loopback import serve

sys.path.insert(0, str(APP_DIR))  # the gateway is imported from the source tree, as the image runs it

from model_gateway.app import create_app  # noqa: E402
from model_gateway.settings import load_settings  # noqa: E402


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream().serving() as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def upstream(upstream_server: FakeUpstream) -> FakeUpstream:
    """The shared fake model server, reset for every test to default behaviour and no recorded requests."""
    upstream_server.reset()
    return upstream_server


@pytest.fixture(scope="session")
def second_upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream(model=SECOND_MODEL).serving() as upstream:
        yield upstream


@pytest.fixture
def second_upstream(second_upstream_server: FakeUpstream) -> FakeUpstream:
    """A second fake model server, another engine serving SECOND_MODEL, reset like `upstream`."""
    second_upstream_server.reset()
    return second_upstream_server


def _serve_gateway(upstream: FakeUpstream, variables: dict[str, str | None]) -> ContextManager[str]:
    environ = {"UPSTREAM_BASE_URL": upstream.base_url, "MODEL": FAKE_MODEL, "API_KEYS": API_KEY, **variables}
    settings = load_settings({f"GATEWAY_{name}": value for name, value in environ.items() if value is not None})
    return serve(create_app(settings))


@pytest.fixture(scope="session")
def gateway_url(upstream_server: FakeUpstream) -> Iterator[str]:
    """A gateway with the default test settings, shared by the tests that need nothing else (its metrics
    accumulate across tests: compare before and after)."""
    with _serve_gateway(upstream_server, {}) as url:
        yield url


@pytest.fixture
def start_gateway(upstream: FakeUpstream) -> Iterator[Callable[..., str]]:
    """Starts a gateway of its own for one test and returns its base URL. Keyword arguments are GATEWAY_*
    variables (without the prefix) over the test defaults; None removes one."""
    with contextlib.ExitStack() as running:
        yield lambda **variables: running.enter_context(_serve_gateway(upstream, variables))


@pytest.fixture
def client(gateway_url: str) -> Iterator[httpx.Client]:
    """An HTTP client for the shared gateway, sending the accepted API key."""
    with httpx.Client(
        base_url=gateway_url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=CLIENT_TIMEOUT_SECONDS
    ) as client:
        yield client
