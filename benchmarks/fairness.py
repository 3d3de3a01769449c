"""Scenario F: several processes, each with its own locker, contend for one key; one is farther away.

Users run N copies of a service, each with its own locker, some farther from the server than others.
``--processes`` worker processes each run ``--tasks`` tasks that take the key, hold it ``--hold``
seconds and release it, over and over, for ``--seconds``; the last worker talks to the server through
a proxy (a process of its own) that delays every byte ``--delay`` seconds each way. Every worker
records, for each acquisition, when it asked, got and gave back the lock, on the machine's monotonic
clock (one clock for every process on Linux), so the parent computes per process: its share of the
acquisitions, its waits (p50, p99, max; a wait still going at the end counts with its length so far),
and the acquisitions that gave up; and overall: hand-offs to another task per second, the hand-off gap,
and critical sections that overlapped (which must be none).

``python -m benchmarks.fairness [--backend redis|etcd] [--adapter NAME ...]`` runs it alone and prints
JSON; ``nox -s bench`` runs it as part of the whole benchmark. The ``worker`` and ``proxy`` commands are
what it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from .adapters import Adapter, etcd_adapters, redis_adapters
from .workers import ROOT, Load, each_backend, quantile, run_tasks, run_together, spawn, started

KEY = "bench-f"
#: Scenario F's load: four processes of two tasks each, the last one far.
LOAD = Load(processes=4, tasks=2)
#: Seconds the proxy adds each way in front of the far process.
DELAY = 0.002


def _adapters(backend: str, address: str) -> list[Adapter]:
    """The adapters of ``backend``, less the polling lower bound (not a lock anyone ships)."""
    found = redis_adapters(address) if backend == "redis" else etcd_adapters(address)
    return [adapter for adapter in found if adapter.name != "raw"]


# --- a worker process ----------------------------------------------------------------------------------


async def _work(backend: str, name: str, address: str, tasks: int, seconds: float, hold: float) -> dict[str, Any]:
    [adapter] = [a for a in _adapters(backend, address) if a.name == name]
    await adapter.setup()
    # Take the lock once outside the measurement: connections, scripts and leases are ready.
    await adapter.release(await adapter.acquire(f"{KEY}-warm-up-{time.monotonic_ns()}"))
    stop = await started() + seconds
    records: list[tuple[int, float, float, float]] = []
    gave_up = 0
    waiting: dict[int, float] = {}

    async def task(me: int) -> None:
        nonlocal gave_up
        while time.monotonic() < stop:
            asked = waiting[me] = time.monotonic()
            try:
                handle = await adapter.acquire(KEY)
            except Exception:  # the peer's own "not obtained" (a budget or timeout of its own)
                gave_up += 1
                continue
            finally:
                del waiting[me]
            got = time.monotonic()
            await asyncio.sleep(hold)
            done = time.monotonic()
            await adapter.release(handle)
            records.append((me, asked, got, done))

    unfinished = await run_tasks(task, tasks, stop, waiting)
    with contextlib.suppress(Exception):
        await adapter.aclose()
    return {"records": records, "gave_up": gave_up, "unfinished_waits": unfinished}


async def _proxy(target_port: int, delay: float) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.proxy import FaultProxy

    async with FaultProxy(target_port, delay) as proxy:
        print(proxy.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until the parent ends it


# --- the parent ------------------------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    return spawn("benchmarks.fairness", *args)


def run(backend: str, name: str, address: str, load: Load = LOAD, *, delay: float = DELAY) -> dict[str, Any]:
    """Scenario F for one adapter; ``address`` is a Redis URL or an etcd ``host:port``."""
    netloc = urlsplit(address).netloc if "//" in address else address
    port = netloc.rsplit(":", 1)[1]
    proxy = _spawn("proxy", port, str(delay))
    workers: list[subprocess.Popen[str]] = []
    try:
        assert proxy.stdout is not None
        proxy_port = proxy.stdout.readline().strip()
        if not proxy_port.isdigit():
            raise RuntimeError(f"the delay proxy failed to start: {proxy_port!r}")
        far = address.replace(netloc, f"127.0.0.1:{proxy_port}")
        common = [backend, name, *load.worker_args()]
        for n in range(load.processes):
            workers.append(_spawn("worker", *common, "--address", far if n == load.processes - 1 else address))
        results = run_together(workers, load.seconds, name)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        proxy.kill()
        proxy.wait()
    return summarise(results, tasks=load.tasks, seconds=load.seconds, hold=load.hold, far=load.processes - 1)


def summarise(results: list[dict[str, Any]], *, tasks: int, seconds: float, hold: float, far: int) -> dict[str, Any]:
    """Per-process and overall figures from the workers' records (see the module docstring)."""
    sections = sorted(
        (got, done, process, me) for process, r in enumerate(results) for me, _, got, done in r["records"]
    )
    total = len(sections)
    violations, latest_end = 0, float("-inf")
    for got, done, _, _ in sections:
        violations += got < latest_end  # began before an earlier section ended
        latest_end = max(latest_end, done)
    handoffs = sum(1 for a, b in itertools.pairwise(sections) if (a[2], a[3]) != (b[2], b[3]))
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(sections)]
    per_process = []
    for process, r in enumerate(results):
        waits = [got - asked for _, asked, got, _ in r["records"]] + r["unfinished_waits"]
        per_process.append(
            {
                "far": process == far,
                "acquisitions": len(r["records"]),
                "share": len(r["records"]) / total if total else 0.0,
                "wait_p50_ms": 1000 * quantile(waits, 0.5),
                "wait_p99_ms": 1000 * quantile(waits, 0.99),
                "wait_max_ms": 1000 * max(waits, default=0.0),
                "gave_up": r["gave_up"],
            }
        )
    shares = [p["share"] for p in per_process]
    contenders = len(results) * tasks
    gap = statistics.median(gaps) if gaps else 0.0
    all_waits = [got - asked for r in results for _, asked, got, _ in r["records"]]
    all_waits += [w for r in results for w in r["unfinished_waits"]]
    return {
        "acquisitions": total,
        "handoffs_per_s": handoffs / seconds,
        "gap_p50_ms": 1000 * gap,
        "violations": violations,
        "min_over_max": min(shares) / max(shares) if max(shares, default=0) else 0.0,
        "far_share_vs_fair": per_process[far]["share"] * len(results) if per_process else 0.0,
        "wait_p99_ms": 1000 * quantile(all_waits, 0.99),
        "wait_max_ms": 1000 * max(all_waits, default=0.0),
        "ideal_wait_ms": 1000 * (contenders - 1) * (hold + gap),
        "gave_up": sum(p["gave_up"] for p in per_process),
        "per_process": per_process,
    }


def run_backend(backend: str, address: str, load: Load = LOAD, names: list[str] | None = None) -> dict[str, Any]:
    out = {}
    for adapter in _adapters(backend, address):
        if adapter.unavailable or (names and adapter.name not in names):
            continue
        out[adapter.name] = result = run(backend, adapter.name, address, load)
        print(
            f"{backend} F {adapter.name}: shares "
            + " ".join(f"{p['share']:.2f}{'*' if p['far'] else ''}" for p in result["per_process"])
            + f", far {result['far_share_vs_fair']:.2f}x fair, wait p99 {result['wait_p99_ms']:.0f} ms "
            f"(ideal {result['ideal_wait_ms']:.0f}), max {result['wait_max_ms']:.0f} ms, "
            f"hand-offs {result['handoffs_per_s']:.0f}/s, gave up {result['gave_up']}, "
            f"overlaps {result['violations']}",
            file=sys.stderr,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fairness", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker")
    worker.add_argument("backend")
    worker.add_argument("adapter")
    worker.add_argument("--address", required=True)
    Load.add_worker_options(worker)
    proxy = sub.add_parser("proxy")
    proxy.add_argument("port", type=int)
    proxy.add_argument("delay", type=float)
    parser.add_argument("--backend", choices=["redis", "etcd"], action="append")
    parser.add_argument("--adapter", action="append", help="only these adapters (by name)")
    parser.add_argument("--processes", type=int, default=LOAD.processes)
    parser.add_argument("--tasks", type=int, default=LOAD.tasks)
    parser.add_argument("--seconds", type=float, default=LOAD.seconds)
    args = parser.parse_args()
    if args.command == "worker":
        out = asyncio.run(_work(args.backend, args.adapter, args.address, args.tasks, args.seconds, args.hold))
        print(json.dumps(out))
        return
    if args.command == "proxy":
        asyncio.run(_proxy(args.port, args.delay))
        return
    load = Load(args.processes, args.tasks, args.seconds)
    results = each_backend(args.backend, lambda backend, address: run_backend(backend, address, load, args.adapter))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
