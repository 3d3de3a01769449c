"""arq jobs that at most one worker runs at a time, however many arq workers take jobs from the queue.

Run a few workers with ``DISTLOCK_URL=redis://localhost:6379 arq examples.arq_job_once.WorkerSettings``, and
enqueue with ``python -m examples.arq_job_once``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

from arq import Retry, create_pool
from arq.connections import RedisSettings

from distlock_async import LockLostError, NotObtainedError, from_url

log = logging.getLogger(__name__)

DISTLOCK_URL = os.environ.get("DISTLOCK_URL", "redis://localhost:6379")


async def startup(ctx: dict[str, Any]) -> None:
    # One locker per worker process, closed when the worker stops.
    ctx["locker"] = from_url(DISTLOCK_URL)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["locker"].aclose()


async def rebuild_search_index(ctx: dict[str, Any]) -> str:
    """Skip if running elsewhere: a run started while another worker rebuilds would only redo its work."""
    try:
        async with ctx["locker"].lock("job:rebuild_search_index", max_retries=0) as lock:
            await rebuild(lock.fencing_token)
    except NotObtainedError:
        return "skipped: another worker is rebuilding"
    return "rebuilt"


async def settle_account(ctx: dict[str, Any], account: str) -> str:
    """Wait your turn: every settlement must run, but never two for the same account at once."""
    try:
        # Wait up to 10 s for the account's lock; if it stays busy, give the worker's slot back and
        # have arq run this job again later (a new try, up to the worker's max_tries).
        async with ctx["locker"].lock(f"job:settle_account:{account}", timeout=10) as lock:
            await settle(account, lock.fencing_token)
    except NotObtainedError:
        raise Retry(defer=5) from None
    except LockLostError:
        # The lock expired mid-run (this worker stalled, or lost the server for a TTL): the settlement was
        # cancelled where it stood, and another worker may hold the account now. Run it again later.
        raise Retry(defer=5) from None
    return f"settled {account}"


async def rebuild(fencing_token: int) -> None:
    log.info("rebuilding the search index as holder #%d", fencing_token)


async def settle(account: str, fencing_token: int) -> None:
    # Pass the fencing token to the ledger write, so that a worker paused past its lock's TTL is refused.
    log.info("settling %s as holder #%d", account, fencing_token)


class WorkerSettings:
    functions: ClassVar = [rebuild_search_index, settle_account]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(os.environ.get("ARQ_REDIS", "redis://localhost:6379"))


async def main() -> None:
    queue = await create_pool(WorkerSettings.redis_settings)
    for _ in range(3):
        await queue.enqueue_job("rebuild_search_index")
        await queue.enqueue_job("settle_account", "acct-42")
    await queue.aclose()


if __name__ == "__main__":
    import asyncio

    asyncio.run(main())
