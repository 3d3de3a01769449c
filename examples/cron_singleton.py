"""A cron-style task that every replica schedules but only one runs per tick.

Each tick has a lock of its own (``cron:<name>:<tick>``) that the winner does not release: it expires
after the tick's period, so a replica whose clock runs a little late cannot run the same tick again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

import anyio

from distlock_async import Locker, NotObtainedError, from_url

Task = Callable[[int], Awaitable[None]]


async def run_tick(locker: Locker, name: str, tick: int, period: float, task: Task) -> bool:
    """Run ``task`` for ``tick`` if no other replica has; ``True`` if this replica ran it."""
    try:
        await locker.obtain(f"cron:{name}:{tick}", ttl=period * 2, max_retries=0)
    except NotObtainedError:
        return False
    await task(tick)
    return True  # not released: the tick's lock expires on its own


async def every(locker: Locker, name: str, period: float, task: Task) -> None:
    while True:
        tick = int(time.time() // period)
        await run_tick(locker, name, tick, period, task)
        await anyio.sleep((tick + 1) * period - time.time())


async def main() -> None:
    async def report(tick: int) -> None:
        print(f"nightly report for tick {tick}")

    async with from_url(os.environ.get("DISTLOCK_URL", "redis://localhost:6379")) as locker:
        await every(locker, "report", 60.0, report)


if __name__ == "__main__":
    anyio.run(main)
