"""The process as the image runs it: `python -m model_gateway`, its JSON logs, and the health-check module."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import httpx

from gateway_helpers import APP_DIR
from loopback import answers, eventually, free_port
from model_gateway import healthcheck
from model_gateway.logs import JsonFormatter

_STARTUP_TIMEOUT_SECONDS = 15


def gateway_environment(**variables: str) -> dict[str, str]:
    environ = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    # Loopback only: a test gateway is no one else's business.
    return {**environ, "PYTHONPATH": str(APP_DIR), "GATEWAY_HOST": "127.0.0.1",
            **{f"GATEWAY_{name}": value for name, value in variables.items()}}


def test_invalid_settings_stop_the_process_with_one_message_per_variable():
    result = subprocess.run(
        [sys.executable, "-m", "model_gateway"],
        env=gateway_environment(PORT="http", LOG_LEVEL="loud"),
        capture_output=True,
        text=True,
        timeout=_STARTUP_TIMEOUT_SECONDS,
    )

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "model-gateway: GATEWAY_UPSTREAM_BASE_URL is required (or GATEWAY_MODELS, for an engine per model): "
        "expected an http(s) URL with the API version path and no credentials, query or fragment, e.g. "
        "http://vllm:8000/v1 or "
        "http://model-runner.models.svc.cluster.local/engines/v1",
        "model-gateway: GATEWAY_LOG_LEVEL='loud' is invalid: expected one of debug, info, warning, error, critical",
        "model-gateway: GATEWAY_PORT='http' is invalid: expected a port number from 1 to 65535",
        "model-gateway: not starting; the settings are described in app/README.md",
    ]


def test_the_process_serves_on_the_configured_port_and_logs_json_lines(upstream):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "model_gateway"],
        env=gateway_environment(UPSTREAM_BASE_URL=upstream.base_url, PORT=str(port), API_KEY="typo"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        assert eventually(lambda: answers(f"{base_url}/health") or process.poll() is not None, _STARTUP_TIMEOUT_SECONDS)
        assert process.poll() is None, "the gateway exited at startup"
        models = httpx.get(f"{base_url}/v1/models", headers={"x-request-id": "entrypoint-test"})
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=_STARTUP_TIMEOUT_SECONDS)

    assert models.status_code == 200
    # uvicorn shuts down gracefully on SIGTERM, then ends by the same signal so supervisors see why it stopped.
    assert process.returncode == -signal.SIGTERM, output
    entries = [json.loads(line) for line in output.splitlines()]  # every line is a JSON object
    messages = [entry["message"] for entry in entries]
    assert "ignoring unknown setting GATEWAY_API_KEY (a typo?)" in messages
    assert "Application shutdown complete." in messages
    assert any("authentication is disabled" in message for message in messages)
    [request_log] = [entry for entry in entries if entry.get("request_id") == "entrypoint-test"]
    assert request_log | {"time": None, "duration_ms": None} == {
        "time": None,
        "level": "info",
        "logger": "model_gateway.requests",
        "message": "request",
        "request_id": "entrypoint-test",
        "method": "GET",
        "path": "/v1/models",
        "status": 200,
        "duration_ms": None,
        "client": "127.0.0.1",
    }
    # Probes are logged at debug only, so they don't drown the API traffic at the default level.
    assert not any(entry.get("path") == "/health" for entry in entries)


def test_healthcheck_succeeds_against_a_running_gateway(gateway_url, monkeypatch):
    monkeypatch.setenv("GATEWAY_PORT", gateway_url.rsplit(":", 1)[1])

    assert healthcheck.main() == 0


def test_healthcheck_fails_when_nothing_answers(monkeypatch, capsys):
    monkeypatch.setenv("GATEWAY_PORT", str(free_port()))

    assert healthcheck.main() == 1
    assert "gateway health check failed" in capsys.readouterr().err


def test_json_formatter_keeps_extra_fields_and_exceptions():
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "failed %s", ("twice",), sys.exc_info())
    record.route = "/v1/models"

    entry = json.loads(JsonFormatter().format(record))

    assert entry["message"] == "failed twice"
    assert entry["level"] == "error"
    assert entry["route"] == "/v1/models"
    assert entry["exception"].splitlines()[-1] == "ValueError: broken"
