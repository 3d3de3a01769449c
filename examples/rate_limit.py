"""Calls to a partner's API, many at once from every replica, but at most ``LIMIT`` in flight across all of them.

Run it with ``DISTLOCK_URL=redis://localhost:6379 PARTNER_URL=http://localhost:8080 python -m examples.rate_limit``
on as many machines as you like: together they never have more than ``LIMIT`` requests open at the partner.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import anyio
import httpx

from distlock_async import Locker, from_url

#: What the partner allows us: requests in flight at once, whichever replica sends them.
LIMIT = 4


async def fetch_all(
    locker: Locker, client: httpx.AsyncClient, paths: Sequence[str], *, limit: int = LIMIT, name: str = "partner-api"
) -> list[httpx.Response]:
    """GET every path, all started at once, each holding one of ``limit`` permits while its request is open."""
    responses: dict[int, httpx.Response] = {}

    async def fetch(n: int, path: str) -> None:
        # Waits its turn (first come, first served across replicas) for as long as it takes; the permit is
        # refreshed while the request runs, and released as soon as the response is in.
        async with locker.semaphore(name, limit, timeout=math.inf):
            response = await client.get(path)
        responses[n] = response.raise_for_status()

    async with anyio.create_task_group() as tasks:
        for n, path in enumerate(paths):
            tasks.start_soon(fetch, n, path)
    return [responses[n] for n in range(len(paths))]


async def main() -> None:
    async with (
        from_url(os.environ.get("DISTLOCK_URL", "redis://localhost:6379")) as locker,
        httpx.AsyncClient(base_url=os.environ.get("PARTNER_URL", "http://localhost:8080")) as client,
    ):
        responses = await fetch_all(locker, client, [f"/?page={page}" for page in range(20)])
        print(f"{len(responses)} pages fetched")


if __name__ == "__main__":
    anyio.run(main)
