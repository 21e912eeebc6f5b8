"""Container health check: `python -m model_gateway.healthcheck` exits 0 when this container's gateway
answers /health. Uses only the standard library, since slim images have no curl."""

from __future__ import annotations

import os
import sys
import urllib.request

from .settings import DEFAULT_PORT

_TIMEOUT_SECONDS = 2


def main() -> int:
    port = os.environ.get("GATEWAY_PORT", "").strip() or DEFAULT_PORT
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=_TIMEOUT_SECONDS) as response:
            return 0 if response.status == 200 else 1
    except (OSError, ValueError) as error:
        print(f"gateway health check failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
