"""One ``obtain`` on Redis: its attempts, its place among the locker's waiters, and the undo of an
attempt whose outcome is unknown."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import anyio.lowlevel

from ..._core._aio import Signal
from ..._core._driver import Busy, Granted
from ..._errors import BackendError
from .scripts import OBTAIN, UNRESERVE, Keys, ms
from .wire import unsent

if TYPE_CHECKING:
    from .driver import RedisDriver

__all__ = ["RedisContender"]

logger = logging.getLogger("distlock_async")


class RedisContender:
    __slots__ = ("_driver", "_keys", "_signal", "_token", "_ttl_ms", "_uncertain")

    def __init__(self, driver: RedisDriver, key: str, token: str, ttl: float) -> None:
        self._driver = driver
        self._keys = Keys(driver.namespace, key)
        self._token = token
        self._ttl_ms = ms(ttl)
        self._signal: Signal | None = None
        self._uncertain = False

    async def attempt(self) -> Granted[None] | Busy:
        subscriber, channel, signal = self._driver.subscriber, self._keys.lock, self._signal
        if signal is not None:
            signal.clear()
            subscriber.tried(channel, signal)
        if subscriber.deferring(channel, signal):
            # This locker is handing the lock from a release to its longest waiter: queue behind it.
            await anyio.lowlevel.checkpoint()
            return Busy()
        keys = self._keys
        try:
            reply = await self._driver.run(
                OBTAIN,
                keys.lock,
                (keys.lock, keys.fence),
                (self._token, self._ttl_ms, "0" if signal is None else "1"),
                undoable=True,
            )
        except BaseException as exc:
            # The command may have been applied (unless no connection could be made): close() deletes the
            # lock if it turns out to be ours.
            if not unsent(exc):
                self._uncertain = True
            raise
        if int(reply[0]) == 1:
            if self._driver.replicas:
                try:
                    await self._driver.replicated(keys.lock)
                except BaseException:
                    self._uncertain = True  # close() releases the lock we just took
                    raise
            return Granted(int(reply[1]), None)
        pttl = int(reply[1])
        return Busy(pttl / 1000 if pttl >= 0 else None)

    async def wait(self, timeout: float) -> bool:
        signal = self._signal
        if signal is None:
            signal = self._signal = Signal()
            loop = asyncio.get_running_loop()
            start = loop.time()
            if await self._driver.subscriber.join(self._keys.lock, signal, timeout):
                return True  # subscribed just now: check again, a release may have come before
            timeout -= loop.time() - start
            if timeout <= 0:
                return signal.is_set()
        return await signal.wait(timeout)

    async def close(self, granted: Granted[None] | None) -> None:
        signal, self._signal = self._signal, None
        if signal is not None:
            others_wait = await self._driver.subscriber.leave(self._keys.lock, signal, confirm=granted is None)
            if granted is None and not others_wait:
                # A release may have reserved the lock for waiters such as this one, which leaves without
                # it (cancelled, or out of retries): nobody of this locker will take the reservation.
                try:
                    await self._driver.run(UNRESERVE, self._keys.lock, (self._keys.lock,), ())
                except BackendError as exc:
                    logger.debug("could not free the hand-off reservation of %r: %s", self._keys.lock, exc)
        if granted is None and self._uncertain:
            self._uncertain = False
            try:
                await self._driver.release_key(self._keys.lock, self._token)
            except BackendError as exc:
                logger.warning(
                    "could not undo an interrupted obtain of %r (%s); if it was applied, it expires with its TTL",
                    self._keys.lock,
                    exc,
                )
