"""``python -m benchmarks`` (``nox -s bench``): every scenario, every adapter, one run, one machine.

It starts its own servers on free loopback ports, interleaves the adapters in rounds (rotating their
order, so none always runs first or last), and reports per scenario the median over rounds of each
adapter's ratio to the raw lower bound measured in the same round. Results go to
``benchmarks/results/latest.json``, the table between the markers of ``docs/benchmarks.md`` and the
chart ``docs/img/benchmarks.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from distlock_async.testing.servers import EtcdServer, RedisServer

from . import coordination, fairness, report
from .adapters import Adapter, etcd_adapters, redis_adapters
from .scenarios import contended, etcd_wire_cost, redis_wire_cost, revoke_unused_leases, uncontended

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _machine(redis_url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(terse=True),
        "redis": redis_version,
        "packages": {
            dist: _version(dist)
            for dist in (
                "distlock_async",
                "redis",
                "hiredis",
                "python-redis-lock",
                "pottery",
                "aioredlock",
                "aetcd",
                "grpcio",
            )
        },
    }


def _etcd_version(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/version")
        return str(json.loads(conn.getresponse().read())["etcdserver"])
    finally:
        conn.close()


def _rotated(items: list[Adapter], round_no: int) -> list[Adapter]:
    k = round_no % len(items)
    return items[k:] + items[:k]


def _median_ratio(per_round: dict[str, list[float]], name: str, raw: str = "raw") -> float:
    return statistics.median(a / b for a, b in zip(per_round[name], per_round[raw], strict=True))


async def _common(
    backend: str,
    adapters: list[Adapter],
    args: argparse.Namespace,
    between: Callable[[], Awaitable[int]] | None = None,
) -> dict[str, Any]:
    """Scenarios A, B and C, the same for every backend; ``between`` runs before each adapter's round
    (etcd: an operator's lease cleanup) and says how many things it cleaned."""
    out: dict[str, Any] = {}
    cleaned = 0
    for label, tasks in (("A", 1), ("B", 64)):
        rates: dict[str, list[float]] = defaultdict(list)
        cpu: dict[str, list[float]] = defaultdict(list)
        for r in range(args.rounds):
            for adapter in _rotated(adapters, r):
                if between is not None:
                    cleaned += await between()
                result = await uncontended(adapter, tasks=tasks, seconds=args.seconds)
                rates[adapter.name].append(result.per_second)
                cpu[adapter.name].append(result.cpu_us_per_cycle)
            print(f"{backend} {label} round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f}/s" for n, v in rates.items()))
        out[label] = {
            name: {
                "cycles_per_s": statistics.median(rates[name]),
                "cpu_us_per_cycle": statistics.median(cpu[name]),
                "ratio_to_raw": _median_ratio(rates, name),
                "rounds": rates[name],
            }
            for name in rates
        }
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in range(args.contended_rounds):
        for adapter in _rotated(adapters, r):
            if between is not None:
                cleaned += await between()
            runs[adapter.name].append((await contended(adapter, seconds=args.contended_seconds)).summary())
        handoffs = ", ".join(f"{n} {v[-1]['handoffs_per_s']:.0f}" for n, v in runs.items())
        print(f"{backend} C round {r + 1}, hand-offs/s: {handoffs}")
    out["C"] = {name: _median_contention(results) for name, results in runs.items()}
    if between is not None:
        out["cleaned_between_rounds"] = cleaned
        print(f"{backend}: {cleaned} cleaned between rounds")
    return out


async def _with(adapters: list[Adapter], body: Callable[[list[Adapter]], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    skipped = {a.name: a.unavailable for a in adapters if a.unavailable}
    adapters = [a for a in adapters if not a.unavailable]
    for adapter in adapters:
        await adapter.setup()
    try:
        out = await body(adapters)
    finally:
        for adapter in adapters:
            await adapter.aclose()
    out["skipped"] = skipped
    return out


async def _redis(url: str, args: argparse.Namespace) -> dict[str, Any]:
    async def body(adapters: list[Adapter]) -> dict[str, Any]:
        # D first, on a quiet server: nothing of the other scenarios is still expiring.
        wire = {adapter.name: await redis_wire_cost(adapter, url) for adapter in adapters}
        return {**await _common("redis", adapters, args), "D": wire}

    return await _with(redis_adapters(url), body)


async def _etcd(server: EtcdServer, args: argparse.Namespace) -> dict[str, Any]:
    async def body(adapters: list[Adapter]) -> dict[str, Any]:
        # D first, on a quiet server: a peer's leases left to expire would be raft proposals in its window.
        wire = {adapter.name: await etcd_wire_cost(adapter, server.endpoint, server.port) for adapter in adapters}
        # Before each round, leases that back no key are revoked, as an operator cleaning leaked ones would:
        # the peers' leaked leases, and our lockers' kept ones, which their next obtains find gone.
        cleanup = partial(revoke_unused_leases, server.endpoint)
        return {**await _common("etcd", adapters, args, cleanup), "D": wire}

    return await _with(etcd_adapters(server.endpoint), body)


def _median_contention(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in results[0].items() if isinstance(v, int | float)]
    merged: dict[str, Any] = {k: statistics.median(r[k] for r in results) for k in keys}
    merged["violations"] = sum(r["violations"] for r in results)
    merged["per_task"] = [r["per_task"] for r in results]
    return merged


def _scale(url: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.scale", url, "--waiters", str(args.waiters), "--keys", str(args.keys)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout)
    print(f"E on {url.split(':', 1)[0]}: {result}")
    return result


def _coordination_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Scenarios S and L: as long as F per adapter; 10 failovers (3 in a smoke run)."""
    return {"seconds": args.fairness_seconds, "runs": 3 if args.quick else 10}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of scenarios A and B (default 5)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per adapter per round in A and B")
    parser.add_argument("--contended-rounds", type=int, default=3, help="rounds of scenario C (default 3)")
    parser.add_argument("--contended-seconds", type=float, default=3.0, help="seconds per adapter per round in C")
    parser.add_argument("--fairness-seconds", type=float, default=5.0, help="seconds per adapter in F")
    parser.add_argument("--waiters", type=int, default=10_000, help="scenario E's waiting tasks")
    parser.add_argument("--keys", type=int, default=1_000, help="scenario E's keys")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: one short round of everything, written to results/quick.json only (not the docs)",
    )
    parser.add_argument("--no-docs", action="store_true", help="write the JSON only, not the docs page and chart")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.contended_rounds, args.contended_seconds = 1, 0.3, 1, 0.5
        args.waiters, args.keys, args.fairness_seconds = 1_000, 100, 1.0
    fairness_load = replace(fairness.LOAD, seconds=args.fairness_seconds)

    server = RedisServer()
    server.start()
    try:
        results: dict[str, Any] = {"machine": _machine(server.url), "settings": vars(args)}
        results["redis"] = asyncio.run(_redis(server.url, args))
        results["redis"]["E"] = _scale(server.url, args)
        results["redis"]["F"] = fairness.run_backend("redis", server.url, fairness_load)
        results["redis"].update(coordination.run_backend("redis", server.url, **_coordination_settings(args)))
    finally:
        server.cleanup()
    # etcd as in production: default raft timers, fsync on every commit.
    etcd = EtcdServer(fast=False)
    etcd.start()
    try:
        results["machine"]["etcd"] = _etcd_version(etcd.port)
        results["etcd"] = asyncio.run(_etcd(etcd, args))
        results["etcd"]["E"] = _scale(f"etcd://{etcd.endpoint}", args)
        results["etcd"]["F"] = fairness.run_backend("etcd", etcd.endpoint, fairness_load)
        results["etcd"].update(coordination.run_backend("etcd", etcd.endpoint, **_coordination_settings(args)))
    finally:
        etcd.cleanup()

    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    # A smoke run must not replace the figures the docs page shows.
    (out_dir / ("quick.json" if args.quick else "latest.json")).write_text(json.dumps(results, indent=2) + "\n")
    print(report.markdown(results))
    if not (args.no_docs or args.quick):
        report.write_docs(results, ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "img" / "benchmarks.png")


if __name__ == "__main__":
    main()
