"""APScheduler 4 on every replica, with the same schedules; a lock makes at most one replica run each job at a time.

Each replica keeps its schedules in memory (APScheduler's default data store), so nothing but the lock
coordinates them. Run a few with ``DISTLOCK_URL=redis://localhost:6379 REPLICA=a python -m
examples.apscheduler_job_once``.
"""

from __future__ import annotations

import logging
import os
import socket

import anyio
from apscheduler import AsyncScheduler, ConflictPolicy
from apscheduler.triggers.interval import IntervalTrigger

from distlock_async import Locker, LockLostError, NotObtainedError, Options, from_url

log = logging.getLogger(__name__)


async def refresh_exchange_rates(locker: Locker) -> None:
    """Skip if another replica runs it: a second refresh at the same time would fetch the same rates."""
    try:
        async with locker.lock("job:refresh_exchange_rates", max_retries=0) as lock:
            await refresh(lock.fencing_token)
    except NotObtainedError:
        await skipped("refresh_exchange_rates")


async def flush_buffer(locker: Locker, replica: str, period: float) -> None:
    """Wait your turn: every replica must flush its own buffer, but the store takes one writer at a time.

    It waits at most one period: a replica still waiting then gives this run up, and the next one tries
    again, so runs never pile up behind a slow holder.
    """
    try:
        async with locker.lock("job:flush_buffer", timeout=period) as lock:
            await flush(replica, lock.fencing_token)
    except NotObtainedError:
        await skipped("flush_buffer")
    except LockLostError:
        # The lock expired mid-flush: the flush was cancelled where it stood; the next period retries.
        log.warning("%s lost the flush lock; it flushes again next period", replica)


async def refresh(fencing_token: int) -> None:
    # Pass the fencing token to what the job writes, so a replica paused past its lock's TTL is refused.
    log.info("refreshing the exchange rates as holder #%d", fencing_token)


async def flush(replica: str, fencing_token: int) -> None:
    log.info("%s flushes its buffer as holder #%d", replica, fencing_token)


async def skipped(job: str) -> None:
    log.info("%s is running elsewhere; skipped", job)


async def add_schedules(scheduler: AsyncScheduler, locker: Locker, replica: str, period: float) -> None:
    """The same schedules on every replica (with ``replace``, a restart updates them)."""
    await scheduler.add_schedule(
        refresh_exchange_rates,
        IntervalTrigger(seconds=period),
        id="refresh_exchange_rates",
        kwargs={"locker": locker},
        conflict_policy=ConflictPolicy.replace,
    )
    await scheduler.add_schedule(
        flush_buffer,
        IntervalTrigger(seconds=period),
        id="flush_buffer",
        kwargs={"locker": locker, "replica": replica, "period": period},
        conflict_policy=ConflictPolicy.replace,
    )


async def main() -> None:
    replica = os.environ.get("REPLICA", f"{socket.gethostname()}:{os.getpid()}")
    url = os.environ.get("DISTLOCK_URL", "redis://localhost:6379")
    # The scheduler stops (cancelling a running job, whose lock is released) before the locker closes.
    async with from_url(url, Options(holder=replica)) as locker, AsyncScheduler() as scheduler:
        await add_schedules(scheduler, locker, replica, period=60.0)
        await scheduler.run_until_stopped()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    anyio.run(main)
