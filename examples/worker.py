"""A worker that runs jobs concurrently in an anyio task group, each job under its own lock.

Several copies of this worker can share one job list: a job's lock makes sure only one copy runs it
at a time, and the "done" record (here a Redis set, in real life your database) that only the
lock holder writes makes sure it runs once.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable

import anyio

from distlock_async import Locker, NotObtainedError, from_url

Job = Callable[[str, int], Awaitable[None]]


async def run_jobs(
    locker: Locker,
    job_ids: Iterable[str],
    job: Job,
    is_done: Callable[[str], Awaitable[bool]],
    mark_done: Callable[[str], Awaitable[None]],
) -> None:
    async def one(job_id: str) -> None:
        try:
            # One lock, with its own background refresh, per job.
            async with locker.lock(f"job:{job_id}", max_retries=0) as lock:
                if await is_done(job_id):
                    return
                await job(job_id, lock.fencing_token)
                await mark_done(job_id)
        except NotObtainedError:
            return  # another worker has it

    async with anyio.create_task_group() as tg:
        for job_id in job_ids:
            tg.start_soon(one, job_id)


async def main() -> None:
    import redis.asyncio

    url = os.environ.get("DISTLOCK_URL", "redis://localhost:6379")
    store = redis.asyncio.Redis.from_url(url)

    async def job(job_id: str, fencing_token: int) -> None:
        print(f"running {job_id} as holder #{fencing_token}")
        await anyio.sleep(0.1)

    async def is_done(job_id: str) -> bool:
        return bool(await store.sismember("jobs:done", job_id))

    async def mark_done(job_id: str) -> None:
        await store.sadd("jobs:done", job_id)

    async with from_url(url) as locker:
        await run_jobs(locker, [f"report-{n}" for n in range(5)], job, is_done, mark_done)
    await store.aclose()


if __name__ == "__main__":
    anyio.run(main)
