"""The Redis backend's two connections: a multiplexed command connection and a shared subscriber.

Lock commands do not go through the client's ``execute_command``: redis-py retries a command after a
connection error or timeout (ten times by default in redis-py 8), which can apply a lock command twice
and turns a dead server into a ten-second wait. Instead each locker keeps one connection per Redis
server, made from the client's own connection settings (host, TLS, auth, Sentinel discovery), and
pipelines every lock command of its tasks on it:

- commands are written in order and their replies matched in order, so a command written after another
  is applied after it -- the undo of an interrupted obtain can never overtake the obtain;
- a caller that is cancelled leaves its reply to be read and dropped, which keeps the stream in step;
- a command that does not answer within the deadline declares the connection dead: every command in
  flight on it fails with ``BackendError`` and the next one reconnects.

The reader of a connection is a task that exists only while replies are due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import redis.asyncio
import redis.exceptions

from .._core._signal import Signal
from .._errors import BackendError
from ._compat_redis import close_now, peer_closed, write_now

logger = logging.getLogger("distlock_async")

#: Errors of redis-py and the socket layer that mean "the server could not be reached or answered badly".
CLIENT_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError, EOFError)


class NotSent(BackendError):
    """The command was certainly not written (no connection could be made): nothing to undo."""


class Mux:
    """One pipelined connection to one Redis server (see the module docstring)."""

    def __init__(self, make: Callable[[], Any], deadline: float, name: str) -> None:
        self._make = make
        self._deadline = deadline
        self._name = name
        self._conn: Any = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._write_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[Any] | None = None
        self._closed = False

    async def call(self, *args: Any, undo: tuple[Any, ...] | None = None, asking: bool = False) -> Any:
        """Send one command and return its reply; ``BackendError`` if the server fails or times out.

        An error reply is raised as redis-py's ``ResponseError``. With ``asking`` the command goes right
        behind an ``ASKING`` (a Cluster node importing the slot runs only the command that follows it).

        ``undo`` is written right behind the command if the deadline passes, before the connection is
        dropped: should a paused server apply the command when it resumes, it applies the undo next.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        timer = loop.call_later(self._deadline, self._expire, fut, undo)
        try:
            try:
                await self._send(fut, args, asking)
            except (asyncio.TimeoutError, TimeoutError) as exc:  # the handshake's (before OSError: 3.10)
                raise NotSent(f"redis at {self._name}: no connection within {self._deadline:g} s") from exc
            # Awaiting the future directly: if the caller is cancelled the future is cancelled too, and
            # the reader drops its reply when it arrives.
            return await fut
        except redis.exceptions.ResponseError:
            raise  # an answer, not a failure to get one: the caller decides
        except CLIENT_ERRORS as exc:
            error = BackendError if fut in self._pending or fut.done() else NotSent
            raise error(f"redis at {self._name}: {exc}") from exc
        finally:
            timer.cancel()
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed by _fail_all while the error reached us another way

    async def _send(self, fut: asyncio.Future[Any], args: tuple[Any, ...], asking: bool = False) -> None:
        async with self._write_lock:
            if self._closed:
                raise RuntimeError("the locker is closed")
            conn = self._conn
            if conn is not None and not self._pending and peer_closed(conn):
                # The server closed this idle connection (restart, idle timeout): nothing is lost by
                # reconnecting now, while a command written to it would fail with its fate unknown.
                await _disconnect(conn)
            if self._connecting is not None or conn is None or not conn.is_connected:
                conn = await self._connect()
            commands = [args]
            if asking:
                # Nothing can come between the two: they are written at once, under the write lock.
                asked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                asked.add_done_callback(_retrieve)  # its "OK" (or error) interests nobody
                self._pending.append(asked)
                commands.insert(0, ("ASKING",))
            self._pending.append(fut)
            try:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            except BaseException as exc:
                # redis-py closed the connection: whatever was in flight on it is lost.
                self._fail_all(exc if isinstance(exc, Exception) else ConnectionError("write interrupted"))
                raise
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(conn), name=f"distlock_async: {self}")

    async def _connect(self) -> Any:
        """Wait for the connection's handshake, starting it unless it is under way.

        The handshake runs in a task of the Mux, not of the caller: a caller that is cancelled stops
        waiting, but the handshake is never cut short half-way (its replies would be read by the next
        command) and never runs twice at once; the next caller waits for the same one. Its own task also
        keeps redis-py, which can swallow a cancellation while connecting (Sentinel discovery), from
        swallowing the caller's.
        """
        if self._connecting is None:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._make()
            self._connecting = asyncio.get_running_loop().create_task(
                self._handshake(conn), name=f"distlock_async: connecting {self}"
            )
            self._connecting.add_done_callback(_retrieve)  # its callers may all have been cancelled
        connecting = self._connecting
        await asyncio.wait({connecting})
        if connecting.cancelled():
            raise ConnectionError("the locker was closed")
        return connecting.result()

    async def _handshake(self, conn: Any) -> Any:
        try:
            with anyio.fail_after(self._deadline):
                await conn.connect()
        except BaseException:
            await _disconnect(conn)
            if self._conn is conn:
                self._conn = None
            raise
        finally:
            self._connecting = None
        return conn

    async def _read(self, conn: Any) -> None:
        try:
            while self._pending:
                try:
                    reply: Any = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
                except redis.exceptions.ResponseError as exc:
                    reply = exc
                fut = self._pending.popleft()
                if fut.done():
                    continue
                if isinstance(reply, redis.exceptions.ResponseError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail_all(exc if isinstance(exc, Exception) else ConnectionError("read interrupted"))
            await _disconnect(conn)
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None

    def _expire(self, fut: asyncio.Future[Any], undo: tuple[Any, ...] | None) -> None:
        if fut.done() or fut not in self._pending:
            return  # still connecting: ``_send`` has its own deadline
        # No answer within the deadline: the server is gone or hung. Everything in flight shares the
        # fate of this command, and the next command reconnects.
        conn = self._conn
        if undo is not None and conn is not None and conn.is_connected:
            with contextlib.suppress(Exception):
                write_now(conn, *undo)
        self._fail_all(redis.exceptions.TimeoutError(f"no reply within {self._deadline:g} s"))
        self._drop_connection()

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, deque()
        for fut in pending:
            if not fut.done():
                fut.set_exception(exc)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
        if conn is not None:
            # Closing without waiting: a paused server still finds the bytes already written (an obtain
            # and its undo, in this order) when it resumes.
            close_now(conn)

    async def aclose(self) -> None:
        self._closed = True
        self._fail_all(ConnectionError("the locker was closed"))
        reader, self._reader = self._reader, None
        conn, self._conn = self._conn, None
        await _cancel_and_wait(self._connecting)
        await _cancel_and_wait(reader)
        if conn is not None:
            await _disconnect(conn)

    def __repr__(self) -> str:
        return f"<redis lock connection to {self._name}>"


async def _cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it to end; the caller's own cancellation still propagates."""
    if task is not None:
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _disconnect(conn: Any) -> None:
    with contextlib.suppress(*CLIENT_ERRORS, asyncio.TimeoutError):
        await conn.disconnect(nowait=True)


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
        await _cancel_and_wait(reader)

    async def _stop(self) -> None:
        # One stop at a time: a second one must not drop the connection under a sender being stopped.
        async with self._stopping:
            sender, self._sender = self._sender, None
            requests, self._requests = self._requests, None
            if requests is not None:
                requests.put_nowait((False, ""))  # wakes a sender whose cancellation was swallowed
            await _cancel_and_wait(sender)
            await self._drop_pubsub()

    async def aclose(self) -> None:
        for queue in self.queues.values():
            queue.wake_all()
        await self._stop()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*CLIENT_ERRORS):
                await client.aclose(close_connection_pool=True)


__all__ = ["CLIENT_ERRORS", "Mux", "NotSent", "Queue", "Subscriber"]
