"""A Hugging Face-like model hub for the lane's stacks: a directory laid out as `<owner>/<repo>/resolve/main/<file>`,
served over HTTP on an address of this machine, remembering which paths were fetched."""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator


class ModelHub(ThreadingHTTPServer):
    fetched: list[str]
    """The path of every GET, in order."""

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(SimpleHTTPRequestHandler):
    server: ModelHub

    def do_GET(self):
        self.server.fetched.append(self.path)
        super().do_GET()


@contextmanager
def serving(directory: Path, address: str) -> Iterator[ModelHub]:
    """Serves `directory` on `address` (a free port) until the block ends."""
    hub = ModelHub((address, 0), functools.partial(_Handler, directory=str(directory)))
    hub.fetched = []
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.shutdown()
        hub.server_close()
        thread.join(timeout=10)
