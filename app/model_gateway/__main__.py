"""Entry point: `python -m model_gateway` validates the GATEWAY_* settings, then serves on GATEWAY_HOST:GATEWAY_PORT."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from .app import create_app
from .logs import configure_logging
from .settings import SettingsError, load_settings, unrecognized_variables

log = logging.getLogger("model_gateway")

# Seconds open requests (streams included) get to finish after SIGTERM before they are cut.
GRACEFUL_SHUTDOWN_SECONDS = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_gateway", description=__doc__)
    parser.add_argument(
        "--reload", action="store_true", help="restart when the package's source changes (development only)"
    )
    arguments = parser.parse_args(argv)

    try:
        settings = load_settings(os.environ)
    except SettingsError as error:
        for problem in error.problems:
            print(f"model-gateway: {problem}", file=sys.stderr)
        print("model-gateway: not starting; the settings are described in app/README.md", file=sys.stderr)
        return 2

    configure_logging(settings.log_level)
    for name in unrecognized_variables(os.environ):
        log.warning("ignoring unknown setting %s (a typo?)", name, extra={"variable": name})

    common = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the JSON logging configured above
        access_log=False,  # the gateway logs each request itself, with its request id and status
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    if arguments.reload:
        uvicorn.run(
            "model_gateway.app:app_from_environment",
            factory=True,
            reload=True,
            reload_dirs=[str(Path(__file__).parent)],
            **common,
        )
    else:
        uvicorn.run(create_app(settings), **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
