"""The asyncio primitives the library builds on, in one place.

- :class:`Signal`: the wake-up flag a waiter sleeps on, set by a release notification;
- :func:`finish`: cleanup that completes, shielded and bounded, even when the caller is cancelled;
- :func:`cancel_and_wait`, :func:`retrieve`: ending background tasks without losing or leaking errors;
- :func:`reraise_swallowed_cancel`: the retry loop's guard against client libraries that swallow a
  cancellation.

They never swallow the caller's cancellation: each is written against the ways ``wait_for`` and cancel
scopes lose one on Python 3.10 and 3.11.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = ["Signal", "cancel_and_wait", "finish", "reraise_swallowed_cancel", "retrieve"]

T = TypeVar("T")

logger = logging.getLogger("distlock_async")


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


class Signal:
    """A wake-up flag that a backend's release notification sets and a waiter sleeps on.

    ``wait(timeout)`` uses a bare future and a timer, not a cancel scope or ``wait_for``: on Python 3.10
    those can swallow a ``task.cancel()`` that lands together with their own timeout, and a waiter that
    ignores its cancellation would go on contending for a lock nobody wants any more.
    """

    __slots__ = ("_future", "_set")

    def __init__(self) -> None:
        self._set = False
        self._future: asyncio.Future[bool] | None = None

    def set(self) -> None:
        self._set = True
        if self._future is not None and not self._future.done():
            self._future.set_result(True)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, timeout: float) -> bool:
        """Sleep until set or ``timeout`` seconds pass; ``True`` if set. Always a checkpoint."""
        if self._set:
            await asyncio.sleep(0)
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._future = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            self._future = None


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


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it to end; the caller's own cancellation still propagates."""
    if task is not None:
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.result()


def retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def reraise_swallowed_cancel() -> None:
    """Raise the cancellation that a client library swallowed while this task waited.

    ``asyncio.wait_for`` on Python 3.11 returns normally when a cancellation lands just as the inner
    operation completes; redis-py uses it for every socket write with a ``socket_timeout`` (Sentinel
    discovery, pub/sub). A waiter that ignored its cancellation would go on contending for a lock that
    nobody wants any more, so the retry loop checks the task's pending cancellation requests itself.
    Python 3.10 cannot tell (it has no ``Task.cancelling``).
    """
    if sys.version_info >= (3, 11):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
