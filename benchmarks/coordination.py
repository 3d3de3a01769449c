"""Scenarios S and L: a semaphore and an election, each across processes with a locker of their own.

S (semaphore): ``--processes`` worker processes each run ``--tasks`` tasks that take a permit of one
semaphore of ``--limit`` permits, hold it ``--hold`` seconds and give it back, over and over, for
``--seconds``. Every worker records when each task asked, got and gave back its permit, on the machine's
monotonic clock (one clock for every process on Linux), so the parent computes: permits per second,
the most permits held at one instant (must be at most ``limit``), each process's share, waits (p50, p99,
max). The raw bound is what the same server allows for that hold: ``limit / (hold + 2 round trips)``,
with the round trip measured in the same run (a ``PING`` on Redis, a ``Put`` on etcd, whose writes wait
for the disk): an acquire and a release cost one round trip each at the least.

L (election failover): a leader process campaigns and leads; two candidates wait; an observer process
follows the election. The parent kills the leader (``SIGKILL``: it resigns nothing) and the observer
reports when it first sees another leader. Repeated ``--runs`` times: the median and the maximum of
the time from the kill to the observer's report, with the TTL it is bounded by.

``python -m benchmarks.coordination [--backend redis|etcd]`` prints JSON; ``nox -s bench`` runs both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from distlock_async import Options, from_url

from .workers import Load, each_backend, quantile, run_tasks, run_together, spawn, started

NAME = "bench-s"
#: Scenario S's load: four processes of four tasks each.
LOAD = Load(processes=4, tasks=4)
_runs = itertools.count()


def _url(backend: str, address: str) -> str:
    return address if backend == "redis" else f"etcd://{address}"


def _spawn(*args: str) -> subprocess.Popen[str]:
    return spawn("benchmarks.coordination", *args)


# --- S: a semaphore --------------------------------------------------------------------------------------


async def _permit_worker(url: str, name: str, tasks: int, limit: int, seconds: float, hold: float) -> dict[str, Any]:
    locker = from_url(url, Options(ttl=10, retry_delay=float(os.environ.get("BENCH_RETRY_DELAY", "0.1"))))
    async with locker:
        # Once outside the measurement: connections, scripts and leases are ready.
        await (await locker.obtain_permit(f"{NAME}-warm-up-{os.getpid()}", limit)).release()
        stop = await started() + seconds
        records: list[tuple[float, float, float]] = []
        waiting: dict[int, float] = {}

        async def task(me: int) -> None:
            while time.monotonic() < stop:
                asked = waiting[me] = time.monotonic()
                permit = await locker.obtain_permit(name, limit, timeout=float("inf"))
                del waiting[me]
                got = time.monotonic()
                try:
                    await asyncio.sleep(hold)
                finally:  # also when the run ends during the hold: the next run starts with every permit free
                    done = time.monotonic()
                    await permit.release()
                records.append((asked, got, done))

        unfinished = await run_tasks(task, tasks, stop, waiting)
    return {"records": records, "unfinished_waits": unfinished}


async def _round_trip(url: str) -> float:
    """The median of 200 round trips of the cheapest request of an acquire's kind to the server."""
    samples = []
    if url.startswith("etcd://"):
        import aetcd

        host, port = url.removeprefix("etcd://").split(",")[0].rsplit(":", 1)
        client = aetcd.Client(host=host, port=int(port))
        try:
            for _ in range(200):
                started = time.perf_counter()
                await client.put(b"bench-round-trip", b"")  # a write, as acquire and release are
                samples.append(time.perf_counter() - started)
        finally:
            await client.close()
    else:
        import redis.asyncio

        redis_client = redis.asyncio.Redis.from_url(url)
        try:
            for _ in range(200):
                started = time.perf_counter()
                await redis_client.ping()
                samples.append(time.perf_counter() - started)
        finally:
            await redis_client.aclose()
    return statistics.median(samples)


def semaphore(backend: str, address: str, load: Load = LOAD, *, limit: int = 4) -> dict[str, Any]:
    url = _url(backend, address)
    name = f"{NAME}-{os.getpid()}-{next(_runs)}"  # a semaphore of its own per run
    common = ["--limit", str(limit), *load.worker_args()]
    workers = [_spawn("permits", url, name, *common) for _ in range(load.processes)]
    results = run_together(workers, load.seconds, "the semaphore")
    round_trip = asyncio.run(_round_trip(url))
    return summarise_permits(results, limit=limit, seconds=load.seconds, hold=load.hold, round_trip=round_trip)


def summarise_permits(
    results: list[dict[str, Any]], *, limit: int, seconds: float, hold: float, round_trip: float
) -> dict[str, Any]:
    # The most permits held at one instant: sweep the sections' starts and ends in time order.
    events = sorted(
        [(got, 1) for r in results for _, got, _ in r["records"]]
        + [(done, -1) for r in results for _, _, done in r["records"]]
    )
    held = most = 0
    for _, change in events:
        held += change
        most = max(most, held)
    total = sum(len(r["records"]) for r in results)
    waits = [got - asked for r in results for asked, got, _ in r["records"]]
    waits += [w for r in results for w in r["unfinished_waits"]]
    shares = [len(r["records"]) / total if total else 0.0 for r in results]
    bound = limit / (hold + 2 * round_trip)
    return {
        "permits_per_s": total / seconds,
        "raw_bound_per_s": bound,
        "of_bound": total / seconds / bound,
        "round_trip_ms": 1000 * round_trip,
        "most_held_at_once": most,
        "limit": limit,
        "min_over_max": min(shares) / max(shares) if max(shares, default=0) else 0.0,
        "shares": shares,
        "wait_p50_ms": 1000 * quantile(waits, 0.5),
        "wait_p99_ms": 1000 * quantile(waits, 0.99),
        "wait_max_ms": 1000 * max(waits, default=0.0),
    }


# --- L: election failover --------------------------------------------------------------------------------


async def _candidate(url: str, name: str, value: str, ttl: float) -> None:
    async with from_url(url) as locker, locker.election(name).campaign(value, ttl=ttl):
        print("leading", flush=True)
        await asyncio.Event().wait()  # leads until killed


async def _observer(url: str, name: str) -> None:
    async with from_url(url) as locker, locker.election(name).observe() as leaders:
        async for leader in leaders:
            print(json.dumps({"at": time.monotonic(), "value": None if leader is None else leader.value}), flush=True)


async def _until_sigterm(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends or SIGTERM comes (the parent ends its observer and candidates so: they
    resign and close on the way out)."""
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _read_until(proc: subprocess.Popen[str], wanted: Any, deadline: float) -> dict[str, Any]:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the observer ended")
        event: dict[str, Any] = json.loads(line)
        if wanted(event):
            return event
    raise RuntimeError("the observer did not see what was expected in time")


def failover(backend: str, address: str, *, runs: int = 10, ttl: float = 2.0) -> dict[str, Any]:
    url = _url(backend, address)
    times: list[float] = []
    for run in range(runs):
        name = f"bench-l-{os.getpid()}-{run}"
        observer = _spawn("observe", url, name)
        candidates: list[subprocess.Popen[str]] = []
        try:
            deadline = time.monotonic() + 30
            _read_until(observer, lambda e: e["value"] is None, deadline)
            leader = _spawn("campaign", url, name, "leader", str(ttl))
            candidates.append(leader)
            _read_until(observer, lambda e: e["value"] == "leader", deadline)
            candidates += [_spawn("campaign", url, name, f"candidate-{n}", str(ttl)) for n in range(2)]
            time.sleep(0.5)  # the candidates queue behind the leader
            killed = time.monotonic()
            os.kill(leader.pid, signal.SIGKILL)
            seen = _read_until(observer, lambda e: e["value"] not in ("leader", None), killed + 30)
            times.append(seen["at"] - killed)
        finally:
            for proc in [observer, *candidates]:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in [observer, *candidates]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                if proc.poll() is None:
                    proc.kill()
    return {
        "runs": runs,
        "ttl_s": ttl,
        "failover_median_s": statistics.median(times),
        "failover_max_s": max(times),
        "failover_min_s": min(times),
    }


def run_backend(backend: str, address: str, *, seconds: float = 5.0, runs: int = 10) -> dict[str, Any]:
    s = semaphore(backend, address, replace(LOAD, seconds=seconds))
    print(
        f"{backend} S: {s['permits_per_s']:.0f} permits/s ({s['of_bound']:.2f} of the raw bound "
        f"{s['raw_bound_per_s']:.0f}/s), most held at once {s['most_held_at_once']} of {s['limit']}, "
        f"shares min/max {s['min_over_max']:.2f}, wait p99 {s['wait_p99_ms']:.1f} ms",
        file=sys.stderr,
    )
    failed_over = failover(backend, address, runs=runs)
    print(
        f"{backend} L: failover median {failed_over['failover_median_s']:.2f} s, max "
        f"{failed_over['failover_max_s']:.2f} s (TTL {failed_over['ttl_s']:g} s, {runs} runs)",
        file=sys.stderr,
    )
    return {"S": s, "L": failed_over}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coordination", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    permits = sub.add_parser("permits")
    permits.add_argument("url")
    permits.add_argument("name")
    permits.add_argument("--limit", type=int, required=True)
    Load.add_worker_options(permits)
    campaign = sub.add_parser("campaign")
    campaign.add_argument("url")
    campaign.add_argument("name")
    campaign.add_argument("value")
    campaign.add_argument("ttl", type=float)
    observe = sub.add_parser("observe")
    observe.add_argument("url")
    observe.add_argument("name")
    parser.add_argument("--backend", choices=["redis", "etcd"], action="append")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if args.command == "permits":
        out = asyncio.run(_permit_worker(args.url, args.name, args.tasks, args.limit, args.seconds, args.hold))
        print(json.dumps(out))
        return
    if args.command in ("campaign", "observe"):
        work = (
            _candidate(args.url, args.name, args.value, args.ttl)
            if args.command == "campaign"
            else _observer(args.url, args.name)
        )
        asyncio.run(_until_sigterm(work))
        return
    results = each_backend(
        args.backend, lambda backend, address: run_backend(backend, address, seconds=args.seconds, runs=args.runs)
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
