"""Scenario E, in a process of its own so that its peak memory is its own.

``python -m benchmarks.scale URL`` starts ``--waiters`` tasks over ``--keys`` keys on one locker, each
obtaining its key once, holding it briefly and releasing it; it prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

import redis

from distlock_async import Options, from_url
from distlock_async.testing.servers import etcd_metrics

from .scenarios import etcd_leases


class _RedisProbe:
    """Connections while it runs; subscriptions and lock keys left afterwards."""

    def __init__(self, url: str) -> None:
        self.admin = redis.Redis.from_url(url)
        self.base = self.connections()

    async def before(self) -> None:
        pass

    def connections(self) -> int:
        return int(self.admin.info("clients")["connected_clients"]) - 1  # not this probe

    async def after(self) -> dict[str, Any]:
        out = {
            "subscriptions_left": len(self.admin.pubsub_channels()),
            "lock_keys_left": sum(1 for _ in self.admin.scan_iter("distlock:{scale-*}")),
        }
        self.admin.close()
        return out


class _EtcdProbe:
    """Watches while it runs; watches and leases left afterwards."""

    def __init__(self, url: str) -> None:
        self.endpoint = url.removeprefix("etcd://")
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.base = self.connections()
        self.leases_before: set[int] = set()

    async def before(self) -> None:
        # Other scenarios' leases (a peer that never revokes) may still be counting down.
        self.leases_before = await etcd_leases(self.endpoint)

    def connections(self) -> int:
        # etcd multiplexes everything over one gRPC connection: count its open watches instead.
        return int(etcd_metrics(self.port).get("etcd_debugging_mvcc_watcher_total", 0))

    async def after(self) -> dict[str, Any]:
        return {
            "watches_left": self.connections(),
            "leases_left": len(await etcd_leases(self.endpoint) - self.leases_before),
        }


async def scale(url: str, waiters: int, keys: int, hold: float) -> dict[str, Any]:
    probe: _RedisProbe | _EtcdProbe = _EtcdProbe(url) if url.startswith("etcd://") else _RedisProbe(url)
    await probe.before()
    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, probe.connections() - probe.base)
            await asyncio.sleep(0.05)

    locker = from_url(url, Options(ttl=30, max_retries=1_000_000, retry_delay=1.0))
    served = 0

    async def waiter(i: int) -> None:
        nonlocal served
        lock = await locker.obtain(f"scale-{i % keys}")
        await asyncio.sleep(hold)
        await lock.release()
        served += 1

    sampler = asyncio.create_task(sample())
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(waiter(i) for i in range(waiters)))
        wall = time.perf_counter() - t0
    finally:
        done.set()
        await sampler
        await locker.aclose()
    return {
        "waiters": waiters,
        "keys": keys,
        "served": served,
        "wall_s": wall,
        "peak": peak,
        "peak_means": "watches" if isinstance(probe, _EtcdProbe) else "connections",
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **await probe.after(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--hold", type=float, default=0.005)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(scale(args.url, args.waiters, args.keys, args.hold))))


if __name__ == "__main__":
    main()
