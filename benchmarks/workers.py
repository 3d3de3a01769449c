"""What the multi-process scenarios share: starting worker processes together, and quantiles.

A worker prints ``ready`` once warmed up, then reads a start time (the machine's monotonic clock, one
clock for every process on Linux) from stdin, works until start + seconds, and prints its records as
one JSON document.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

__all__ = ["quantile", "run_together"]


def run_together(workers: list[subprocess.Popen[str]], seconds: float, what: str) -> list[dict[str, Any]]:
    """Wait until every worker is ready, start them all at once, and return their outputs, in order.
    Whatever happens, no worker outlives the call."""
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a worker of {what} failed to start: {line!r}")
        start = time.monotonic() + 0.2
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"{start}\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=seconds + 60)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    return [json.loads(output) for output in outputs]


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
