from __future__ import annotations

import asyncio


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
