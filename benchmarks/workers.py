"""What the multi-process scenarios share: their load, starting worker processes together, a worker's
tasks, a server of each backend for a scenario run alone, and quantiles.

A worker prints ``ready`` once warmed up, then reads a start time (the machine's monotonic clock, one
clock for every process on Linux) from stdin, works until start + seconds, and prints its records as
one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distlock_async.testing.servers import EtcdServer, RedisServer

__all__ = ["Load", "each_backend", "quantile", "run_tasks", "run_together", "spawn", "started"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Load:
    """What a multi-process scenario asks of its workers: ``processes`` worker processes each run
    ``tasks`` tasks that take the lock (or a permit), hold it ``hold`` seconds and give it back, over
    and over, for ``seconds``."""

    processes: int
    tasks: int
    seconds: float = 5.0
    hold: float = 0.001

    def worker_args(self) -> list[str]:
        """What each worker is told of it: the options :meth:`add_worker_options` declares."""
        return ["--tasks", str(self.tasks), "--seconds", str(self.seconds), "--hold", str(self.hold)]

    @staticmethod
    def add_worker_options(parser: argparse.ArgumentParser) -> None:
        """A worker's side of :meth:`worker_args`."""
        parser.add_argument("--tasks", type=int, required=True)
        parser.add_argument("--seconds", type=float, required=True)
        parser.add_argument("--hold", type=float, required=True)


def spawn(module: str, *args: str) -> subprocess.Popen[str]:
    """``python -m module args`` from the repository's root, with its stdin and stdout as text pipes."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


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


async def started() -> float:
    """A worker's side of :func:`run_together`, once warmed up: say ``ready``, read the start time and
    sleep until then; the start time."""
    print("ready", flush=True)
    start = float(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    return start


async def run_tasks(
    task: Callable[[int], Awaitable[None]], tasks: int, stop: float, waiting: dict[int, float]
) -> list[float]:
    """Run ``task(0)`` to ``task(tasks - 1)`` until ``stop``, then cancel them; how long each wait still
    going at the end had lasted (``waiting``: when each waiting task asked)."""
    runners = [asyncio.ensure_future(task(n)) for n in range(tasks)]
    await asyncio.sleep(max(0.0, stop - time.monotonic()))
    # Tasks still waiting at the end are stopped; their waits so far count.
    ended = time.monotonic()
    unfinished = [ended - asked for asked in waiting.values()]
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    return unfinished


def each_backend(backends: list[str] | None, run: Callable[[str, str], dict[str, Any]]) -> dict[str, Any]:
    """``run(backend, address)`` against a server of its own for each of ``backends`` (default: both),
    ``address`` a Redis URL or an etcd ``host:port``; the results by backend."""
    results: dict[str, Any] = {}
    for backend in backends or ["redis", "etcd"]:
        server: RedisServer | EtcdServer = RedisServer() if backend == "redis" else EtcdServer(fast=False)
        server.start()
        try:
            address = server.url if isinstance(server, RedisServer) else server.endpoint
            results[backend] = run(backend, address)
        finally:
            server.cleanup()
    return results


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
