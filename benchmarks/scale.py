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


async def scale(url: str, waiters: int, keys: int, hold: float) -> dict[str, Any]:
    admin = redis.Redis.from_url(url)
    peak_connections = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak_connections
        while not done.is_set():
            clients = int(admin.info("clients")["connected_clients"]) - 1  # not the sampler itself
            peak_connections = max(peak_connections, clients)
            await asyncio.sleep(0.05)

    before = int(admin.info("clients")["connected_clients"]) - 1
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
    channels = len(admin.pubsub_channels())
    left = sum(1 for _ in admin.scan_iter("distlock:{scale-*}"))
    admin.close()
    return {
        "waiters": waiters,
        "keys": keys,
        "served": served,
        "wall_s": wall,
        "peak_connections": peak_connections - before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "subscriptions_left": channels,
        "lock_keys_left": left,
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
