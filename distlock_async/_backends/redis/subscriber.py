"""Wake on release for Redis: one pub/sub connection per locker, and its waiting tasks by lock and owner.

The queue itself lives on the server (see ``scripts``); a release hands the lock to the first waiter
and publishes its owner string (token and holder label) on the lock's channel, and only that waiter is
woken. The channels of permits and elections name their waiters by token the same way; an election's
also carries ``"*"`` on every change of its leader, which wakes the channel's watchers (the observers,
whose names start with ``"*"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ..._core._aio import Signal, cancel_and_wait
from .errors import CLIENT_ERRORS
from .scripts import owner_of_notice

__all__ = ["Channel", "Subscriber"]

logger = logging.getLogger("distlock_async")


class Channel:
    """This locker's waiters on one lock, by owner: a release hands the lock to one of them by name."""

    __slots__ = ("ready", "waiters")

    def __init__(self) -> None:
        self.waiters: dict[str, Signal] = {}
        #: ``True`` once the channel is subscribed, ``False`` if subscribing failed.
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def wake(self, owner: str) -> bool:
        """Wake ``owner`` if it is one of these waiters (``"*"``: every watcher); whether it was."""
        if owner == "*":
            watchers = [watcher for name, watcher in self.waiters.items() if name.startswith("*")]
            for watcher in watchers:
                watcher.set()
            return bool(watchers)
        signal = self.waiters.get(owner)
        if signal is not None:
            signal.set()
        return signal is not None

    def wake_all(self) -> None:
        for signal in self.waiters.values():
            signal.set()


async def _subscribed(queue: Channel, timeout: float) -> bool:
    """Whether ``queue``'s channel is subscribed within ``timeout`` seconds. Running out of time just means
    "no wake-ups yet": the caller's own timer still bounds its wait."""
    await asyncio.wait({queue.ready}, timeout=timeout)
    ready = queue.ready
    return ready.done() and not ready.cancelled() and bool(ready.result())


#: The sender's request to connect again and subscribe every waiting key (no key is named ``""``).
_EVERY = ""
#: Seconds between tries to connect again while keys are waited for: doubled after each failure.
_FIRST_BACKOFF = 0.1
_LAST_BACKOFF = 5.0


class Subscriber:
    """One pub/sub connection per locker, subscribed to the keys its tasks are waiting for.

    A channel is subscribed when the first waiter of a key arrives and unsubscribed when the last one
    leaves. The connection and the subscriber's two tasks -- one reads messages, one sends SUBSCRIBE and
    UNSUBSCRIBE in order -- exist only while some channel is subscribed. Waiters only ever await futures of
    their own: redis-py's I/O, which can swallow a cancellation on Python 3.10 and 3.11, runs in the
    subscriber's tasks.

    When the connection fails (a server restart, a killed client) while keys are waited for, every waiter
    is woken to check its lock once, and the sender connects again and subscribes every waiting key: at
    once, then after 0.1 s, 0.2 s, ... up to 5 s between tries, for as long as some key is waited for.
    """

    def __init__(self, make_client: Callable[[], Any]) -> None:
        self._make_client = make_client
        self._client: Any = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._requests: asyncio.Queue[tuple[bool, str]] | None = None
        self.queues: dict[str, Channel] = {}
        self._stopping = asyncio.Lock()

    async def join(self, channel: str, owner: str, signal: Signal, timeout: float) -> bool:
        """Add a waiter; ``True`` once its channel is subscribed (so the caller rechecks the lock: a
        release may have handed it over before the subscription)."""
        queue = self.queues.get(channel)
        if queue is None:
            # The last waiter just left and the connection is being dropped: a subscription sent now would
            # go out on the connection that is closing, and this channel would never hear a release.
            # Subscribe once the stop is over, on a new connection.
            while self._stopping.locked():
                async with self._stopping:
                    pass
            queue = self.queues.get(channel)
        if queue is not None:
            queue.waiters[owner] = signal
        else:
            queue = self.queues[channel] = Channel()
            queue.waiters[owner] = signal
            self._request(True, channel)
        return await _subscribed(queue, timeout)

    async def rejoin(self, channel: str, timeout: float) -> bool:
        """Subscribe ``channel`` again if the connection it was subscribed on has failed (a server restart
        drops it, and a client without retries does not reconnect it); ``True`` once it is subscribed, or
        if the connection is up. For a waiter that stays long (an observation), called after each wake-up."""
        queue = self.queues.get(channel)
        if queue is None:
            return False
        if self._pubsub is not None:
            return True
        if queue.ready.done():
            queue.ready = asyncio.get_running_loop().create_future()
        # A new connection subscribes every waiting channel; a no-op if the reconnect after the failure
        # (requested by the reader) has connected meanwhile.
        self._request(True, _EVERY)
        return await _subscribed(queue, timeout)

    async def leave(self, channel: str, owner: str) -> None:
        """Remove a waiter. Idempotent: a run cut short by a cancellation is repeated (see ``finish``).

        A lock handed to it after this is passed on by the server queue's ``LEAVE``, which the caller runs.
        """
        queue = self.queues.get(channel)
        if queue is not None and queue.waiters.pop(owner, None) is not None and not queue.waiters:
            del self.queues[channel]
            if not queue.ready.done():
                queue.ready.cancel()
            if self._requests is not None and self.queues:
                self._request(False, channel)
        if not self.queues:
            await self._stop()
        else:
            await asyncio.sleep(0)

    def wake(self, channel: str, owner: str) -> None:
        """The lock was handed to ``owner``: wake it if it is one of this locker's waiters."""
        queue = self.queues.get(channel)
        if queue is not None:
            queue.wake(owner)

    def _request(self, subscribe: bool, channel: str) -> None:
        if self._requests is None:
            self._requests = asyncio.Queue()
            self._sender = asyncio.get_running_loop().create_task(
                self._send(self._requests), name="distlock_async: redis subscriptions"
            )
        self._requests.put_nowait((subscribe, channel))

    async def _send(self, requests: asyncio.Queue[tuple[bool, str]]) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            subscribe, channel = await requests.get()
            if self._requests is not requests:
                # Stopped. Checked here and not left to the cancellation alone: redis-py's connection
                # code can swallow a cancellation (Sentinel discovery), and the loop would go on.
                return
            try:
                if subscribe and channel in self.queues:
                    await self._subscribe(channel)
                elif subscribe and channel == _EVERY and self.queues and self._pubsub is None:
                    await self._subscribe(None)
                elif not subscribe and channel not in self.queues and self._pubsub is not None:
                    await self._pubsub.unsubscribe(channel)
                else:
                    continue
                backoff = _FIRST_BACKOFF
            except CLIENT_ERRORS as exc:
                logger.debug("subscribing to %r failed (%r); waiters fall back to their timers", channel, exc)
                await self._drop_pubsub()
                for queue in self.queues.values():
                    if not queue.ready.done():
                        queue.ready.set_result(False)
                if self.queues:
                    # Connect again later: the waiters' own timers bound their waits meanwhile.
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _LAST_BACKOFF)
                    requests.put_nowait((True, _EVERY))

    async def _subscribe(self, channel: str | None) -> None:
        """Subscribe ``channel`` (``None``: only connect); a new connection subscribes every waiting key."""
        channels = [] if channel is None else [channel]
        if self._pubsub is None:
            # A new connection (the first, or after the old one failed): subscribe every waiting key.
            if self._client is None:
                self._client = self._make_client()
            self._pubsub = self._client.pubsub()
            channels = list(self.queues)
        pubsub = self._pubsub
        await pubsub.subscribe(*channels)
        if self._reader is None and self._pubsub is pubsub:  # not dropped meanwhile
            self._reader = asyncio.get_running_loop().create_task(
                self._read(pubsub), name="distlock_async: redis wake-ups"
            )

    async def _read(self, pubsub: Any) -> None:
        try:
            while self._pubsub is pubsub:  # not only the cancellation: redis-py may swallow it
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                channel = message["channel"]
                if isinstance(channel, bytes):
                    channel = channel.decode()
                queue = self.queues.get(channel)
                if queue is None:
                    continue
                if message["type"] == "subscribe":
                    if queue.ready.done():
                        # Subscribed again after a reconnect: releases in between were missed.
                        queue.wake_all()
                    else:
                        logger.debug("subscribed to %r", channel)
                        queue.ready.set_result(True)
                elif message["type"] == "message":
                    data = message["data"]
                    if isinstance(data, bytes):
                        data = data.decode()
                    # "<owner> <fencing token>": whom it was handed to
                    if queue.wake(owner_of_notice(data)):
                        logger.debug("%r was handed to a waiter of this locker", channel)
        except CLIENT_ERRORS as exc:
            logger.debug("the wake-up connection failed (%r); connecting again", exc)
            for queue in self.queues.values():
                queue.wake_all()  # releases may have been missed: check once
            if self._reader is asyncio.current_task():
                self._reader = None
                pubsub, self._pubsub = self._pubsub, None
                with contextlib.suppress(*CLIENT_ERRORS):
                    await pubsub.aclose()
                if self.queues and self._requests is not None:
                    self._requests.put_nowait((True, _EVERY))

    async def _drop_pubsub(self) -> None:
        reader, self._reader = self._reader, None
        pubsub, self._pubsub = self._pubsub, None
        if reader is not None:
            reader.cancel()
        if pubsub is not None:
            # Closing the connection also ends a reader that swallowed its cancellation mid-read.
            with contextlib.suppress(*CLIENT_ERRORS):
                await pubsub.aclose()
        await cancel_and_wait(reader)

    async def _stop(self) -> None:
        # One stop at a time: a second one must not drop the connection under a sender being stopped.
        async with self._stopping:
            sender, self._sender = self._sender, None
            requests, self._requests = self._requests, None
            if requests is not None:
                requests.put_nowait((False, ""))  # wakes a sender whose cancellation was swallowed
            await cancel_and_wait(sender)
            await self._drop_pubsub()

    async def aclose(self) -> None:
        for queue in self.queues.values():
            queue.wake_all()
        await self._stop()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*CLIENT_ERRORS):
                await client.aclose(close_connection_pool=True)
