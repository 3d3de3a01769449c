"""Wake on release for Redis: one pub/sub connection per locker, and each key's queue of waiting tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ..._core._aio import Signal, cancel_and_wait
from .wire import CLIENT_ERRORS

__all__ = ["Queue", "Subscriber"]

logger = logging.getLogger("distlock_async")


class Queue:
    """This locker's waiters on one key, in arrival order, woken one at a time."""

    __slots__ = ("handoff", "ready", "waiters")

    def __init__(self) -> None:
        self.waiters: dict[Signal, None] = {}
        #: ``True`` once the channel is subscribed, ``False`` if subscribing failed.
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        #: Set while a release by this locker has woken the head waiter and it has not tried yet: other
        #: contenders of this locker let it go first, so a task that releases and obtains again at
        #: once does not starve the tasks that were waiting.
        self.handoff: Signal | None = None

    def wake_head(self) -> Signal | None:
        """Wake the first waiter, unless a wake-up is already on its way to one; return that waiter."""
        for signal in self.waiters:
            if signal.is_set():
                return signal
        for signal in self.waiters:
            signal.set()
            return signal
        return None

    def wake_all(self) -> None:
        for signal in self.waiters:
            signal.set()


class Subscriber:
    """One pub/sub connection per locker, subscribed to the keys its tasks are waiting for.

    A channel is subscribed when the first waiter of a key arrives and unsubscribed when the last one
    leaves. The connection and the subscriber's two tasks -- one reads messages, one sends SUBSCRIBE and
    UNSUBSCRIBE in order -- exist only while some channel is subscribed. Waiters only ever await futures of
    their own: redis-py's I/O, which can swallow a cancellation on Python 3.10 and 3.11, runs in the
    subscriber's tasks.
    """

    def __init__(self, make_client: Callable[[], Any]) -> None:
        self._make_client = make_client
        self._client: Any = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._requests: asyncio.Queue[tuple[bool, str]] | None = None
        self.queues: dict[str, Queue] = {}
        #: Channels a leaving waiter needs to know unsubscribed on the server, by the future it awaits.
        self._unsubscribing: dict[str, asyncio.Future[None]] = {}
        self._stopping = asyncio.Lock()

    async def join(self, channel: str, signal: Signal, timeout: float) -> bool:
        """Add a waiter; ``True`` once its channel is subscribed (so the caller rechecks the lock)."""
        queue = self.queues.get(channel)
        if queue is not None:
            queue.waiters[signal] = None
            if queue.ready.done():
                # Another waiter subscribed before us: a release since then has woken the head, and
                # this waiter queues behind it.
                return False
        else:
            queue = self.queues[channel] = Queue()
            queue.waiters[signal] = None
            self._request(True, channel)
        # Running out of time just means "no wake-ups yet": the caller's timer still bounds the wait.
        await asyncio.wait({queue.ready}, timeout=timeout)
        ready = queue.ready
        return ready.done() and not ready.cancelled() and bool(ready.result())

    async def leave(self, channel: str, signal: Signal, confirm: bool = False) -> bool:
        """Remove a waiter; ``True`` if other waiters of this locker remain (and take over its wake-up).

        With ``confirm``, when it is the channel's last waiter, return only once the server has dropped the
        subscription: a release published after that cannot count this locker as a waiter (and reserve
        the lock for nobody). Idempotent: a run cut short by a cancellation is repeated (see ``finish``).
        """
        queue = self.queues.get(channel)
        if queue is not None and signal in queue.waiters:
            del queue.waiters[signal]
            if queue.handoff is signal:
                queue.handoff = None
            if signal.is_set():
                # It was woken but did not take the lock (cancelled, or gave up): pass the wake-up on.
                nxt = queue.wake_head()
                if queue.handoff is None:
                    queue.handoff = nxt
            if queue.waiters:
                return True
            del self.queues[channel]
            if not queue.ready.done():
                queue.ready.cancel()
            if self._requests is not None and (confirm or self.queues):
                if confirm and channel not in self._unsubscribing:
                    self._unsubscribing[channel] = asyncio.get_running_loop().create_future()
                self._request(False, channel)
        unsubscribed = self._unsubscribing.get(channel) if confirm else None
        if unsubscribed is not None:
            await asyncio.wait({unsubscribed})
        if not self.queues:
            await self._stop()
        return channel in self.queues

    def _unsubscribed(self, channel: str) -> None:
        unsubscribed = self._unsubscribing.pop(channel, None)
        if unsubscribed is not None and not unsubscribed.done():
            unsubscribed.set_result(None)

    def released(self, channel: str) -> None:
        """This locker released ``channel``'s lock: hand it to our own head waiter without a round trip."""
        queue = self.queues.get(channel)
        if queue is not None and queue.handoff is None:
            queue.handoff = queue.wake_head()

    def deferring(self, channel: str, signal: Signal | None) -> bool:
        """Whether a hand-off to another of our waiters is under way, so ``signal``'s owner should wait."""
        queue = self.queues.get(channel)
        return queue is not None and queue.handoff is not None and queue.handoff is not signal

    def tried(self, channel: str, signal: Signal) -> None:
        queue = self.queues.get(channel)
        if queue is not None and queue.handoff is signal:
            queue.handoff = None

    def _request(self, subscribe: bool, channel: str) -> None:
        if self._requests is None:
            self._requests = asyncio.Queue()
            self._sender = asyncio.get_running_loop().create_task(
                self._send(self._requests), name="distlock_async: redis subscriptions"
            )
        self._requests.put_nowait((subscribe, channel))

    async def _send(self, requests: asyncio.Queue[tuple[bool, str]]) -> None:
        while True:
            subscribe, channel = await requests.get()
            if self._requests is not requests:
                # Stopped. Checked here and not left to the cancellation alone: redis-py's connection
                # code can swallow a cancellation (Sentinel discovery), and the loop would go on.
                return
            try:
                if subscribe and channel in self.queues:
                    await self._subscribe(channel)
                elif not subscribe and channel not in self.queues and self._pubsub is not None:
                    await self._pubsub.unsubscribe(channel)  # the reader sees it confirmed
                elif not subscribe:
                    self._unsubscribed(channel)  # not subscribed on the server: nothing to wait for
            except CLIENT_ERRORS as exc:
                logger.debug("subscribing to %r failed (%r); waiters fall back to their timers", channel, exc)
                await self._drop_pubsub()
                for queue in self.queues.values():
                    if not queue.ready.done():
                        queue.ready.set_result(False)

    async def _subscribe(self, channel: str) -> None:
        channels = [channel]
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
                if message["type"] == "unsubscribe":
                    self._unsubscribed(channel)
                    continue
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
                    queue.wake_head()
        except CLIENT_ERRORS as exc:
            logger.debug("the wake-up connection failed (%r); waiters fall back to their timers", exc)
            for queue in self.queues.values():
                queue.wake_all()
            if self._reader is asyncio.current_task():
                self._reader = None
                pubsub, self._pubsub = self._pubsub, None
                with contextlib.suppress(*CLIENT_ERRORS):
                    await pubsub.aclose()

    async def _drop_pubsub(self) -> None:
        reader, self._reader = self._reader, None
        pubsub, self._pubsub = self._pubsub, None
        for channel in list(self._unsubscribing):
            self._unsubscribed(channel)  # the connection and its subscriptions are gone
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
