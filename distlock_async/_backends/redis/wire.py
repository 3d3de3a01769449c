"""The Redis backend's lock connection: one pipelined connection per server for every lock command.

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

The reader of a connection is a task that lives as long as the connection (it waits for the next reply
even while none is due, so a reply never waits for a task to start); ``aclose`` ends both.
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

from ..._core._aio import cancel_and_wait, retrieve
from ..._errors import BackendError
from .._compat_redis import close_now, peer_closed, write_now
from .errors import CLIENT_ERRORS, REPLY_ERRORS, map_errors

__all__ = ["Mux", "disconnect", "unsent"]

logger = logging.getLogger("distlock_async")


#: The mark of a ``BackendError`` whose command was certainly not written (no connection could be made),
#: so that an obtain knows it has nothing to undo. A mark rather than a subclass: what users catch, print
#: and see in tracebacks is ``distlock_async.BackendError`` itself, never a private class.
_UNSENT = "_distlock_unsent"


def _not_sent(message: str) -> BackendError:
    error = BackendError(message)
    setattr(error, _UNSENT, True)
    return error


def unsent(exc: BaseException) -> bool:
    """Whether ``exc`` failed a command before any of it was written (no connection): nothing to undo."""
    return getattr(exc, _UNSENT, False) is True


class Mux:
    """One pipelined connection to one Redis server (see the module docstring)."""

    def __init__(self, make: Callable[[], Any], deadline: float, name: str) -> None:
        self._make = make
        self._deadline = deadline
        self._name = name
        #: Failures of this connection's commands become ``BackendError("redis at <name>: ...")``; error
        #: replies pass, for the caller to decide about.
        self._errors = map_errors(f"redis at {name}", passing=REPLY_ERRORS)
        self._conn: Any = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._write_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[Any] | None = None
        self._closed = False
        #: Whether the connections are TLS ones, for the hint of a handshake that never ends.
        self._tls = False

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
            with self._errors:
                try:
                    await self._send(fut, args, asking)
                except (asyncio.TimeoutError, TimeoutError) as exc:  # the handshake's (before OSError: 3.10)
                    # Not the plain mapping: the message says how long, and may say why (a plain-text
                    # server answers nothing to a TLS hello: the handshake just waits).
                    hint = "; is the server speaking TLS? (rediss:// expects it)" if self._tls else ""
                    raise _not_sent(f"redis at {self._name}: no connection within {self._deadline:g} s{hint}") from exc
                # Awaiting the future directly: if the caller is cancelled the future is cancelled too, and
                # the reader drops its reply when it arrives.
                return await fut
        except BackendError as exc:
            # Whether the command was written is a fact of this connection, not of the error: an obtain
            # whose command never left has nothing to undo.
            if not (fut in self._pending or fut.done()):
                setattr(exc, _UNSENT, True)
            raise
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
                await disconnect(conn)
            if self._connecting is not None or conn is None or not conn.is_connected:
                conn = await self._connect()
            commands = [args]
            if asking:
                # Nothing can come between the two: they are written at once, under the write lock.
                asked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                asked.add_done_callback(retrieve)  # its "OK" (or error) interests nobody
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
                self._tls = isinstance(conn, redis.asyncio.SSLConnection)
            self._connecting = asyncio.get_running_loop().create_task(
                self._handshake(conn), name=f"distlock_async: connecting {self}"
            )
            self._connecting.add_done_callback(retrieve)  # its callers may all have been cancelled
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
            await disconnect(conn)
            if self._conn is conn:
                self._conn = None
            raise
        finally:
            self._connecting = None
        return conn

    async def _read(self, conn: Any) -> None:
        try:
            while self._conn is conn:
                # Reading ahead of the next command, idle or not: its reply finds this task already
                # waiting for it, one loop turn sooner than a task started per command would.
                try:
                    reply: Any = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
                except redis.exceptions.ResponseError as exc:
                    reply = exc
                if not self._pending:
                    self._fail_all(ConnectionError(f"a reply that no command asked for: {reply!r}"))
                    await disconnect(conn)
                    return
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
            await disconnect(conn)
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
        await cancel_and_wait(self._connecting)
        await cancel_and_wait(reader)
        if conn is not None:
            await disconnect(conn)

    def __repr__(self) -> str:
        return f"<redis lock connection to {self._name}>"


async def disconnect(conn: Any) -> None:
    with contextlib.suppress(*CLIENT_ERRORS, asyncio.TimeoutError):
        await conn.disconnect(nowait=True)
