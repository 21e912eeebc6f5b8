"""Servers on 127.0.0.1 for the tests and the bench: serving an ASGI app with a real uvicorn server in a
background thread, finding free ports, and waiting for servers and their effects."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Callable, Iterator

import httpx
import uvicorn

_STARTUP_TIMEOUT_SECONDS = 10


def free_port() -> int:
    """A loopback port nothing listens on right now (the kernel's pick for an ephemeral bind)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    """Whether a GET of `url` is answered with 200 right now."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def eventually(condition: Callable[[], bool], timeout: float = 5, interval: float = 0.005) -> bool:
    """Whether `condition`, asked every `interval` seconds, becomes true within `timeout` seconds (for effects that
    land in another thread or process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


@contextlib.contextmanager
def serve(app, host: str = "127.0.0.1", port: int = 0, **config) -> Iterator[str]:
    """Yields the base URL (http://HOST:PORT) of `app` served until the block ends, on a free port unless one is
    given (replicas of a model on several loopback addresses share one, as pods behind a Service do); `config`
    adds uvicorn.Config options."""
    listener = socket.socket()
    listener.bind((host, port))  # bound before the thread starts, so the port is known and never raced for
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start serving {app!r} on {host}:{port}")
        time.sleep(0.005)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(_STARTUP_TIMEOUT_SECONDS)
        listener.close()
