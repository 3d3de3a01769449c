"""One ``obtain`` on Redis (of a lock, a permit or a leadership: see ``scripts.Space``): its attempts, its
place in the queue on the server, and the undo of an attempt whose outcome is unknown."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..._core._aio import Signal
from ..._core._driver import Busy, Granted
from ..._errors import BackendError
from .scripts import LOCKS, WAITER_TTL_MS, Space, ms, owner
from .wire import unsent

if TYPE_CHECKING:
    from .driver import RedisDriver

__all__ = ["RedisContender"]

logger = logging.getLogger("distlock_async")


class RedisContender:
    """One ``obtain``: its attempts, its place in the lock's queue on the server, and its wake-ups.

    The first attempt that finds the lock taken queues the contender on the server; every attempt keeps
    its place alive, and while it waits longer than ``WAITER_TTL_MS / 3`` between attempts it touches it.
    A release hands the lock to the first waiter and names it on the lock's channel: only that waiter
    wakes, and its next attempt confirms the lock (one round trip, no race). Leaving without the lock
    takes the contender out of the queue and passes on a lock handed to it meanwhile.

    Permits and leaderships queue the same way in a space of their own; they are not handed over but
    served by rank: a release or a waiter leaving names on the channel each waiter that may hold now.

    On the server a lock's contender is its *owner* string, its token and holder label (see ``scripts``);
    a permit's or a leadership's is its token. A grant's handle is that string, which the driver's release,
    refresh and ``ttl()`` compare.
    """

    __slots__ = ("_driver", "_keys", "_queued", "_signal", "_space", "_token", "_ttl_ms", "_uncertain")

    def __init__(
        self, driver: RedisDriver, key: str, token: str, ttl: float, holder: str, space: Space = LOCKS
    ) -> None:
        self._driver = driver
        #: A permit's label rides in its obtain script's value argument (see ``scripts``); a lock's in its owner.
        space = space.labelled(holder)
        self._space = space
        self._keys = space.keys(driver.namespace, key)
        #: Who the scripts and the channel know this contender as.
        self._token = token if space.coordination else owner(token, holder)
        self._ttl_ms = ms(ttl)
        self._signal: Signal | None = None
        #: An attempt found the lock taken: we have a place in the queue (or had one) to give back.
        self._queued = False
        #: An attempt's outcome is unknown (cancelled or timed out on the wire): it may have queued us or
        #: taken the lock; close() leaves the queue, which also passes such a lock on.
        self._uncertain = False

    async def attempt(self) -> Granted[str] | Busy:
        if self._signal is not None:
            self._signal.clear()
        keys, space = self._keys, self._space
        try:
            reply = await self._driver.run(
                space.obtain, keys.lock, keys.all, space.obtain_args(self._token, self._ttl_ms), undo=space
            )
        except BaseException as exc:
            # The command may have been applied (unless no connection could be made): close() leaves the
            # queue, which passes the lock on if the attempt took it.
            if not unsent(exc):
                self._uncertain = True
            raise
        if int(reply[0]) == 1:
            if self._driver.replicas:
                try:
                    await self._driver.replicated(keys.lock)
                except BaseException:
                    self._uncertain = True  # close() passes on the lock we just took
                    raise
            return Granted(int(reply[1]), self._token)
        self._queued = True
        pttl = int(reply[1])
        return Busy(pttl / 1000 if pttl >= 0 else None)

    async def wait(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        signal = self._signal
        if signal is None:
            signal = self._signal = Signal()
            if await self._driver.subscriber.join(self._keys.lock, self._token, signal, timeout):
                return True  # subscribed just now: check again, the lock may have been handed over before
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return signal.is_set()
            if await signal.wait(min(left, _KEEP_ALIVE)):
                return True
            if loop.time() < deadline and not await self._driver.touch(self._keys, self._space, self._token):
                return True  # our place was dropped (this process stalled): queue again
            # Kept alive; wait on.

    async def close(self, granted: Granted[str] | None) -> None:
        signal, self._signal = self._signal, None
        if signal is not None:
            await self._driver.subscriber.leave(self._keys.lock, self._token)
        if granted is None and (self._queued or self._uncertain):
            try:
                await self._driver.leave(self._keys, self._space, self._token)
            except BackendError as exc:
                logger.warning(
                    "could not take an abandoned obtain of %r out of the queue (%s); its place expires within %.0f s",
                    self._keys.lock,
                    exc,
                    WAITER_TTL_MS / 1000,
                )
            self._queued = self._uncertain = False


#: The longest a waiter sleeps without an attempt or a touch that keeps its place in the queue.
_KEEP_ALIVE = WAITER_TTL_MS / 3000
