"""The dashboard's main panels, plotted from a real scrape: a Prometheus scraping a llama.cpp server (two slots,
`--metrics`) and the gateway in front of it with the stack's scrape jobs (tests/engine/prometheus_lane.py, the same
setup as tests/engine/test_prometheus_signals.py), under a ramp of concurrent long streamed chat completions
(1, then 6, then 2 at once). The panels are the dashboard's own PromQL for the model (components/dashboard.py),
read back with query_range and drawn with matplotlib:

    .venv/bin/python -m pip install -e '.[bench]'
    .venv/bin/python bench/dashboard_panels.py --llama-dir ~/.cache/model-stack-toolchain/llama-server/0.3.36 \\
        --prometheus ~/.cache/model-stack-toolchain/bin/prometheus --plot docs/dashboard-panels.png

Loopback only; about a minute and a half.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "engine")]

from components.dashboard import model_queries  # noqa: E402
from llama_server import llama_server_directory  # noqa: E402
from prometheus_lane import REF, SCRAPE_INTERVAL_SECONDS, SLOTS, lane  # noqa: E402

RAMP = ((1, 15), (6, 30), (2, 20))
"""(concurrent requests, seconds) per stage."""
# What stays in the window after the last stage: the last requests finish and the signal returns to 0.
TAIL_SECONDS = 15
PANELS = {
    "Requests and errors per second": ["requests"],
    "Requests waiting and running": ["waiting", "running"],
    "Time to first token (gateway, all models)": ["p50", "p95"],
    "Tokens per second": ["completion"],
}
"""The dashboard's panels and legends plotted (its error, replica and prompt-token series stay empty or flat here)."""


def run_ramp(stream_chat) -> None:
    """Keeps each stage's number of streams in flight, each worker starting its next request as one ends."""
    wanted = 0
    done = threading.Event()

    def worker(index: int) -> None:
        number = 0
        while not done.is_set():
            if index < wanted:
                stream_chat(index * 1000 + number)
                number += 1
            else:
                time.sleep(0.1)

    workers = [threading.Thread(target=worker, args=(index,)) for index in range(max(n for n, _ in RAMP))]
    for thread in workers:
        thread.start()
    try:
        for concurrency, seconds in RAMP:
            print(f"{concurrency} concurrent for {seconds}s", flush=True)
            wanted = concurrency
            time.sleep(seconds)
    finally:
        wanted = 0
        done.set()
        for thread in workers:
            thread.join(120)


def plot(series: dict[str, dict[str, list[tuple[float, float]]]], start: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(2, 2, figsize=(12, 7), sharex=True)
    for axis, (title, legends) in zip(axes.flat, series.items()):
        for legend, points in legends.items():
            axis.plot([t - start for t, _ in points], [v for _, v in points], label=legend)
        axis.set_title(title)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left")
    for axis in axes[1]:
        axis.set_xlabel("seconds")
    axes[0][1].set_ylabel("requests")
    axes[1][0].set_ylabel("seconds")
    figure.suptitle(f"model-stack dashboard, {REF.model} on llama.cpp ({SLOTS} slots): load "
                    + " → ".join(f"{n}×{s}s" for n, s in RAMP) + f"; Prometheus scraping every {SCRAPE_INTERVAL_SECONDS}s")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-dir", type=Path, help="where .ci/llama-server built llama-server (default: asks it)")
    parser.add_argument("--prometheus", default="prometheus", help="the Prometheus binary (default: on PATH)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "dashboard-panels.png")
    arguments = parser.parse_args()
    queries = model_queries(REF)
    with tempfile.TemporaryDirectory() as directory, \
            lane(arguments.prometheus, arguments.llama_dir or llama_server_directory(), Path(directory)) as running:
        start = time.time()
        run_ramp(running.stream_chat)
        time.sleep(TAIL_SECONDS)
        end = time.time()
        series = {title: {legend: [(float(t), float(v)) for result in
                                   running.query_range(queries[title][legend], start, end, SCRAPE_INTERVAL_SECONDS)
                                   for t, v in result["values"]]
                          for legend in legends}
                  for title, legends in PANELS.items()}
    for title, legends in series.items():
        # Peaks; NaN (a quantile before any observation) compares false, so it is left out.
        print(title, {legend: max((v for _, v in points if v == v), default=None) for legend, points in legends.items()})
    plot(series, start, arguments.plot)
    print(f"wrote {arguments.plot}")


if __name__ == "__main__":
    main()
