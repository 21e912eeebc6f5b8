"""A real Prometheus scraping a real llama.cpp server (`--metrics`, two slots) and the gateway in front of it, all on
loopback, with the scrape jobs the stack generates (components/metrics_pipeline.py `scrape_configs`): the same
relabelling, fed by static targets that carry the pod metadata Kubernetes service discovery would, so every series
gets the `namespace`, `workload` and `pod` labels the stack's queries select on. Used by
tests/engine/test_prometheus_signals.py and bench/dashboard_panels.py.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import yaml

from harness import ROOT
from llama_server import llama_server_command, running, write_tiny_llama

sys.path.insert(0, str(ROOT))
from components.engines import ENGINES  # noqa: E402
from components.inference_signals import ServedModelRef  # noqa: E402
from components.metrics_pipeline import ScrapeTarget, scrape_configs  # noqa: E402
from stacks.metrics import ENGINE_CONTAINER, GATEWAY, GATEWAY_CONTAINER  # noqa: E402
from test_llama_cpp_gateway import API_KEY, MODEL, free_port, gateway  # noqa: E402

NAMESPACE = "serving"
WORKLOAD = "chat"
"""The runner's workload name (its pods' `app.kubernetes.io/name`)."""
SLOTS = 2
SCRAPE_INTERVAL_SECONDS = 1
_FIRST_SCRAPE_SECONDS = 30
ENGINE = "llama.cpp"
REF = ServedModelRef(NAMESPACE, WORKLOAD, MODEL, ENGINE)
# Long answers (the end-of-text token ignored) from a somewhat wider tiny model with room for them: a request holds
# its slot for a few seconds, several scrapes.
CONTEXT_TOKENS = 1024
EMBEDDING = 128
ANSWER_TOKENS = 900


def _discovered(target: ScrapeTarget, address: str) -> dict[str, Any]:
    """A static target with the labels Kubernetes' pod role gives a pod of `target`'s workload."""
    return {"targets": [address], "labels": {
        "__meta_kubernetes_namespace": NAMESPACE,
        "__meta_kubernetes_pod_name": f"{target['workload']}-0",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": target["workload"],
        "__meta_kubernetes_pod_container_name": target["container"],
        "__meta_kubernetes_pod_container_port_number": str(target["port"]),
    }}


def prometheus_config(engine_port: int, gateway_port: int) -> dict[str, Any]:
    """The stack's scrape jobs for the gateway and the runner, at a scrape interval of a second, with each job's
    Kubernetes discovery replaced by the static target it would find."""
    targets: list[ScrapeTarget] = [
        {"workload": GATEWAY, "container": GATEWAY_CONTAINER, "port": gateway_port, "path": "/metrics",
         "isolated": False},
        {"workload": WORKLOAD, "container": ENGINE_CONTAINER, "port": engine_port, "path": ENGINES[ENGINE].metrics_path,
         "isolated": True},
    ]
    jobs = scrape_configs(NAMESPACE, targets)
    for job, target in zip(jobs, targets):
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [_discovered(target, f"127.0.0.1:{target['port']}")]
    interval = f"{SCRAPE_INTERVAL_SECONDS}s"
    return {"global": {"scrape_interval": interval, "evaluation_interval": interval}, "scrape_configs": jobs}


@dataclass
class Lane:
    engine_url: str
    gateway_url: str
    prometheus_url: str

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of `expression` now; fails on any Prometheus error."""
        return _data(httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expression}, timeout=10))

    def scalar(self, expression: str) -> float | None:
        """The value of a one-element result (None when empty)."""
        result = self.query(expression)
        assert len(result) <= 1, (expression, result)
        return float(result[0]["value"][1]) if result else None

    def query_range(self, expression: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return _data(httpx.get(f"{self.prometheus_url}/api/v1/query_range",
                               params={"query": expression, "start": start, "end": end, "step": step}, timeout=30))

    def stream_chat(self, number: int, started: threading.Event | None = None) -> None:
        """One streamed chat completion of ANSWER_TOKENS tokens through the gateway, read to its end."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"question {number}"}], "stream": True,
                "max_tokens": ANSWER_TOKENS, "ignore_eos": True, "temperature": 0,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{self.gateway_url}/v1/chat/completions", json=body, timeout=60,
                          headers={"authorization": f"Bearer {API_KEY}"}) as response:
            assert response.status_code == 200, response.read()
            for _ in response.iter_bytes():
                if started is not None:
                    started.set()


def _data(response: httpx.Response) -> list[dict[str, Any]]:
    answer = response.json()
    assert response.status_code == 200 and answer["status"] == "success", answer
    return answer["data"]["result"]


@contextmanager
def lane(prometheus: str, llama_server_build: Path, directory: Path) -> Iterator[Lane]:
    """llama-server with `--metrics` and SLOTS slots serving MODEL, the gateway routing MODEL to it, and the
    Prometheus binary `prometheus` scraping both; yields once Prometheus has scraped both targets up (what the
    scrape jobs kept: a target they dropped would never be)."""
    with ExitStack() as stack:
        model = directory / f"{MODEL}.gguf"
        write_tiny_llama(model, llama_server_build, embedding=EMBEDDING, context_tokens=CONTEXT_TOKENS)
        engine_port = free_port()
        engine_url = f"http://127.0.0.1:{engine_port}"
        stack.enter_context(running([*llama_server_command(llama_server_build, model, MODEL, engine_port, slots=SLOTS,
                                                          context_tokens=CONTEXT_TOKENS),
                                     "--metrics"], f"{engine_url}/health", directory / "llama-server.log"))
        gateway_url = stack.enter_context(gateway(directory / "gateway.log", UPSTREAM_BASE_URL=f"{engine_url}/v1",
                                                  MODEL=MODEL))
        config = directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(engine_port, _port(gateway_url)), sort_keys=False))
        port = free_port()
        prometheus_url = f"http://127.0.0.1:{port}"
        command = [shutil.which(prometheus) or prometheus, f"--config.file={config}",
                   f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"]
        stack.enter_context(running(command, f"{prometheus_url}/-/ready", directory / "prometheus.log"))
        scraping = Lane(engine_url, gateway_url, prometheus_url)
        deadline = time.monotonic() + _FIRST_SCRAPE_SECONDS
        while scraping.scalar("sum(up)") != 2:
            assert time.monotonic() < deadline, scraping.query("up")
            time.sleep(SCRAPE_INTERVAL_SECONDS / 4)
        yield scraping


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
