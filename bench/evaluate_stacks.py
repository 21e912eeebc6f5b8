"""How long the program takes to run per stack (what `pulumi preview` spends in Python before the engine works):
each Pulumi.<stack>.yaml evaluated under the test harness's mocks, timed over several runs.

The first run of each stack includes parsing Knative's release manifests (cached afterwards, as in one
`pulumi up`); the figures after it are what a stack costs once the process is warm. Prints figures, asserts
nothing.

    python bench/evaluate_stacks.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import STACKS, evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    print(f"{'stack':<8} {'resources':>9} {'objects':>8} {'first s':>8} {'median s':>9} {'max s':>7}")
    for stack in STACKS:
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            evaluation = evaluate(stack)
            timings.append(time.perf_counter() - started)
        objects = sum(1 for _ in evaluation.kubernetes_objects())
        warm = timings[1:] or timings
        print(f"{stack:<8} {len(evaluation.resources):>9} {objects:>8} {timings[0]:>8.2f} "
              f"{statistics.median(warm):>9.2f} {max(warm):>7.2f}")


if __name__ == "__main__":
    main()
