from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

logger = logging.getLogger("distlock_async")


async def finish(op: Callable[[], Awaitable[T]], *, timeout: float, what: str) -> T:
    """Run the idempotent cleanup ``op`` to completion even if the caller is being cancelled.

    The first run is inline (no extra task on the happy path). If a cancellation interrupts it, ``op``
    is run again in a task of its own, bounded by ``timeout``, which the caller awaits through
    ``asyncio.shield`` however many cancellations arrive (anyio scopes re-deliver theirs, and a second
    ``task.cancel()`` would break an anyio shield); then the cancellation propagates. ``op`` has to be
    idempotent because the interrupted first run may or may not have reached the server.
    """
    try:
        return await op()
    except asyncio.CancelledError:
        await _shielded(op, timeout=timeout, what=what)
        raise


async def _shielded(op: Callable[[], Awaitable[object]], *, timeout: float, what: str) -> None:
    async def bounded() -> None:
        with anyio.move_on_after(timeout) as scope:
            try:
                await op()
            except Exception:
                logger.warning("%s failed while the caller was cancelled", what, exc_info=True)
        if scope.cancelled_caught:
            logger.warning("%s did not finish within %.1f s; the lock expires with its TTL", what, timeout)

    task = asyncio.get_running_loop().create_task(bounded(), name=f"distlock_async: {what}")
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
