"""The etcd backend's long-lived streams, one of each per locker: lease keep-alives, and watches (for
the deletion of the key ahead of a waiter, of keys ahead of a semaphore's waiter, for the changes of an
election)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from aetcd import rpc

from ..._core._aio import Signal
from ..._errors import BackendError
from .errors import StreamFailed

__all__ = ["KeepAlives", "Watch", "Watches"]

logger = logging.getLogger("distlock_async")


class _Stream:
    """One long-lived bidirectional stream shared by a locker, opened on first use and after a failure.

    A writer task sends queued requests one at a time (gRPC allows one write in flight); a reader task
    hands every response to ``on_response``. When the stream fails, ``on_failure`` hears of it and the next
    ``send`` opens a new one.
    """

    def __init__(
        self,
        name: str,
        open_call: Callable[[], Any],
        on_response: Callable[[Any], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.name = name
        self._open_call = open_call
        self._on_response = on_response
        self._on_failure = on_failure
        self._call: Any = None
        self._queue: asyncio.Queue[Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def open(self) -> bool:
        return self._call is not None

    def send(self, request: Any) -> None:
        if self._call is None:
            self._call = self._open_call()
            self._queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            call, queue = self._call, self._queue
            self._tasks = [
                loop.create_task(self._write(call, queue), name=f"distlock_async: etcd {self.name} writer"),
                loop.create_task(self._read(call), name=f"distlock_async: etcd {self.name} reader"),
            ]
        assert self._queue is not None
        self._queue.put_nowait(request)

    async def _write(self, call: Any, queue: asyncio.Queue[Any]) -> None:
        try:
            while True:
                await call.write(await queue.get())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream is broken: end it, and let the reader report why
            logger.debug("etcd %s stream: write failed: %r", self.name, exc)
            call.cancel()

    async def _read(self, call: Any) -> None:
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                self._on_response(response)
                if self._call is not call:
                    return  # ``on_response`` reset the stream
            self._fail(call, ConnectionError(f"etcd closed the {self.name} stream"))
        except asyncio.CancelledError:
            if self._call is call:
                # grpc raises CancelledError from read() when the call was cancelled, not this task
                self._fail(call, ConnectionError(f"the {self.name} stream was cancelled"))
            raise
        except Exception as exc:
            self._fail(call, exc)

    def _fail(self, call: Any, exc: BaseException) -> None:
        if self._call is not call:
            return
        logger.debug("etcd %s stream failed: %r", self.name, exc)
        self._call = None
        call.cancel()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._on_failure(exc)

    def reset(self, exc: BaseException) -> None:
        """End the stream as failed (``on_failure`` hears of ``exc``); the next ``send`` opens a new one."""
        if self._call is not None:
            self._fail(self._call, exc)

    async def aclose(self) -> None:
        call, tasks = self._call, self._tasks
        self._call, self._tasks = None, []
        if call is not None:
            call.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.sleep(0)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class KeepAlives:
    """Keep-alives of any number of leases over one ``LeaseKeepAlive`` stream (aetcd opens one per call)."""

    def __init__(self, open_call: Callable[[], Any]) -> None:
        self._waiting: dict[int, list[asyncio.Future[int]]] = {}
        self._stream = _Stream("keep-alive", open_call, self._response, self._failure)

    def _response(self, response: Any) -> None:
        waiting = self._waiting.get(response.ID)
        if waiting:
            future = waiting.pop(0)
            if not future.done():
                future.set_result(int(response.TTL))

    def _failure(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    failed = StreamFailed(f"the keep-alive stream failed: {exc!r}")
                    failed.__cause__ = exc
                    future.set_exception(failed)

    async def keep_alive(self, lease_id: int, timeout: float) -> int:
        """Send one keep-alive; the lease's new TTL in seconds, ``<= 0`` if it is gone."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._waiting.setdefault(lease_id, []).append(future)
        timer = loop.call_later(timeout, _expire, future)
        try:
            self._stream.send(rpc.LeaseKeepAliveRequest(ID=lease_id))
            return await future
        except TimeoutError as exc:
            # Our own timer's, not the client's: not the boundary's to report. The stream may be stuck on a
            # hung member: start afresh next time.
            await self._stream.aclose()
            self._failure(exc)
            raise BackendError(f"etcd keep-alive got no answer within {timeout} s") from exc
        finally:
            timer.cancel()
            waiting = self._waiting.get(lease_id)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(future)
                if not waiting:
                    del self._waiting[lease_id]

    async def aclose(self) -> None:
        await self._stream.aclose()
        self._failure(ConnectionError("the locker was closed"))


class Watch:
    """One watch; ``fired`` is set when what it waits for happened (by default: the deletion of its key),
    and when the watch ended (``over``: a cancel by the server, a compacted start revision, the stream
    failed), after which it reports nothing more."""

    __slots__ = ("fired", "id", "key", "over", "wake")

    def __init__(self, watch_id: int, key: bytes, wake: Callable[[Sequence[Any]], bool] | None = None) -> None:
        self.id = watch_id
        self.key = key
        self.fired = Signal()
        #: Given each response's events, whether to fire; ``None``: on any deletion.
        self.wake = wake
        self.over = False

    def end(self) -> None:
        self.over = True
        self.fired.set()


#: The ``watch_id`` of etcd's answer to a create it refused (Go: ``clientv3.InvalidWatchID``).
_INVALID_WATCH_ID = -1


class Watches:
    """Watches for deletions over one ``Watch`` stream with the ``hasleader`` metadata."""

    def __init__(self, open_call: Callable[[], Any]) -> None:
        self._ids = itertools.count(1)
        self._watches: dict[int, Watch] = {}
        self._stream = _Stream("watch", open_call, self._response, self._failure)

    def _response(self, response: Any) -> None:
        if response.canceled and (response.watch_id == _INVALID_WATCH_ID or response.created):
            # etcd refused a create (an expired token, say): this stream's token is no good. etcd 3.4 does
            # not say which watch (ID -1), 3.5 answers "created and canceled" with the watch's ID. Every
            # watch looks again, and the next one opens a stream with the current token (a Range first
            # renews it), instead of creating the watch again on this stream, refused again, in a loop.
            self._stream.reset(ConnectionError(f"etcd refused a watch: {response.cancel_reason}"))
            return
        watch = self._watches.get(response.watch_id)
        if watch is None:
            return
        if response.canceled or response.compact_revision:
            # A compacted start revision or a cancel by the server: wake up and look again.
            watch.end()
        elif watch.wake is None:
            if any(event.type == rpc.Event.EventType.DELETE for event in response.events):
                watch.fired.set()
        elif response.events and watch.wake(response.events):
            watch.fired.set()

    def _failure(self, exc: BaseException) -> None:
        watches, self._watches = self._watches, {}
        for watch in watches.values():
            watch.end()

    def watch_delete(self, key: bytes, start_revision: int) -> Watch:
        """Fire on the deletion of ``key`` from ``start_revision`` on."""
        return self.watch(key, start_revision)

    def watch(
        self,
        key: bytes,
        start_revision: int,
        *,
        range_end: bytes = b"",
        puts: bool = False,
        prev_kv: bool = False,
        wake: Callable[[Sequence[Any]], bool] | None = None,
    ) -> Watch:
        """Watch ``key`` (to ``range_end``) from ``start_revision`` on: deletions only unless ``puts``;
        ``wake`` decides from each response's events whether to fire (default: on a deletion)."""
        watch = Watch(next(self._ids), key, wake)
        self._watches[watch.id] = watch
        create = rpc.WatchCreateRequest(
            key=key,
            range_end=range_end,
            start_revision=start_revision,
            filters=[] if puts else [rpc.WatchCreateRequest.FilterType.NOPUT],
            prev_kv=prev_kv,
            watch_id=watch.id,
        )
        self._stream.send(rpc.WatchRequest(create_request=create))
        return watch

    def cancel(self, watch: Watch) -> None:
        if self._watches.pop(watch.id, None) is not None and self._stream.open:
            self._stream.send(rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=watch.id)))

    async def aclose(self) -> None:
        await self._stream.aclose()
        self._failure(ConnectionError("the locker was closed"))
