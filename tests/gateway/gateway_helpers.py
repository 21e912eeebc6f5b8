"""Constants and helpers the gateway's test modules share (conftest.py holds the fixtures)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from fake_upstream import FAKE_MODEL

APP_DIR = Path(__file__).resolve().parents[2] / "app"
API_KEY = "test-key-0123456789"
# Generous for a loopback call, short enough that a hang fails the test quickly.
CLIENT_TIMEOUT_SECONDS = 10


def chat_request(message: str = "hello there", **fields) -> dict:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": message}], **fields}


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition, 0 when it is absent."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0
