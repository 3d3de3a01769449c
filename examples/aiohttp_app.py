"""An aiohttp app with a locker in a cleanup context and a handler that holds a lock.

Run it with ``DISTLOCK_URL=redis://localhost:6379 python -m aiohttp.web examples.aiohttp_app:make_app``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from aiohttp import web

from distlock_async import Locker, NotObtainedError, from_url

LOCKER = web.AppKey("locker", Locker)


async def locker_context(app: web.Application) -> AsyncIterator[None]:
    async with from_url(os.environ.get("DISTLOCK_URL", "redis://localhost:6379")) as locker:
        app[LOCKER] = locker
        yield


async def rebuild_index(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        # lock() refreshes the lock while the block runs, and cancels the block if the lock is lost.
        async with request.app[LOCKER].lock(f"index:{name}", max_retries=0) as lock:
            return web.json_response({"index": name, "fencing_token": lock.fencing_token})
    except NotObtainedError:
        return web.json_response({"detail": f"index {name} is being rebuilt"}, status=409)


def make_app(argv: list[str] | None = None) -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(locker_context)
    app.router.add_post("/indexes/{name}/rebuild", rebuild_index)
    return app
