"""The one concrete ``Lock`` and its refresher, and what they share with the locker that made them."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Generic, Protocol

import anyio

from .._errors import LockNotHeldError
from . import _metrics
from ._aio import finish
from ._driver import Driver, H

logger = logging.getLogger("distlock_async")


def show_as(public: str, cls: type) -> None:
    """Have the public methods of the private ``cls`` name the public ``public`` in messages and docs.

    Python names a method by its ``__qualname__`` in its own errors ("HeldLock.release() takes 1
    positional argument ..."); a user should read the name of the protocol they program against.
    """
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in ("__aenter__", "__aexit__"):
            continue
        function = member.fget if isinstance(member, property) else member
        if inspect.isfunction(function):
            function.__qualname__ = f"{public}.{name}"


class Closable(Protocol):
    async def aclose(self) -> None: ...


class Binding(Generic[H]):
    """What the locks of one locker share with it, and all they know of it: its driver, whether it may
    still be used, the refreshers that its ``aclose()`` stops, and which backend it is (for metrics)."""

    __slots__ = ("backend", "closed", "driver", "loop", "observations", "owner", "refreshers")

    def __init__(self, driver: Driver[H], owner: str, backend: str) -> None:
        self.driver = driver
        #: The locker's class name, for messages.
        self.owner = owner
        #: ``memory``, ``redis`` or ``etcd``: the ``distlock.backend`` of its metrics.
        self.backend = backend
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.refreshers: set[RefreshTask[H]] = set()
        #: The open ``observe()`` iterators, which ``aclose()`` ends.
        self.observations: set[Closable] = set()

    def check_usable(self) -> None:
        """``RuntimeError`` if the locker is closed or bound to another event loop than the running one."""
        if self.closed:
            raise RuntimeError(f"{self.owner} is closed")
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif self.loop is not loop:
            raise RuntimeError(
                f"{self.owner} is bound to the event loop it was first used in; create one locker per event loop"
            )


class HeldLock(Generic[H]):
    """A held lock; its contract is documented on the ``distlock_async.Lock`` protocol."""

    __slots__ = (
        "_binding",
        "_driver",
        "_ended",
        "_fencing_token",
        "_handle",
        "_holder",
        "_interval",
        "_key",
        "_kind",
        "_lifetime",
        "_obtained_at",
        "_refresher",
        "_released",
        "_token",
        "_ttl",
        "_valid_until",
    )

    def __init__(
        self,
        binding: Binding[H],
        key: str,
        token: str,
        holder: str,
        fencing_token: int,
        handle: H,
        ttl: float,
        interval: float,
        kind: str,
        driver: Driver[H],
        valid_until: float,
        lifetime: float,
    ) -> None:
        self._binding = binding
        #: What ``release``/``refresh``/``ttl`` talk to: the locker's driver, or its view for permits or
        #: for leadership.
        self._driver = driver
        self._key = key
        self._token = token
        self._holder = holder
        self._fencing_token = fencing_token
        self._handle = handle
        self._ttl = ttl
        self._interval = interval
        self._released = False
        self._refresher: RefreshTask[H] | None = None
        self._kind = kind
        #: Seconds the server keeps the lock after each refresh: the driver's lifetime of its TTL.
        self._lifetime = lifetime
        #: Loop time before which the server cannot have let the lock expire: when the attempt or refresh
        #: that last set its TTL was sent, plus its lifetime (or earlier, if the grant said so). A
        #: refresher that cannot refresh before then reports the lock lost then, not later.
        self._valid_until = valid_until
        self._obtained_at = asyncio.get_running_loop().time()
        #: Whether the hold was recorded as over (released or lost): it is recorded once.
        self._ended = False

    @property
    def key(self) -> str:
        return self._key

    @property
    def token(self) -> str:
        return self._token

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def fencing_token(self) -> int:
        return self._fencing_token

    def __repr__(self) -> str:
        state = "released" if self._released else "obtained"
        return f"<distlock_async.Lock key={self._key!r} fencing_token={self._fencing_token} {state}>"

    async def release(self) -> None:
        self._binding.check_usable()
        if self._released:
            await asyncio.sleep(0)
            raise LockNotHeldError(self._key, f"lock {self._key!r} was already released")
        self._released = True
        try:
            owned = await finish(
                self._stop_refresher_and_release,
                timeout=self._driver.cleanup_timeout,
                what=f"release of lock {self._key!r}",
            )
        except BaseException:
            self._end(lost=False)  # let go of, whatever the server made of it
            raise
        self._end(lost=not owned)
        if not owned:
            raise LockNotHeldError(self._key)

    def _end(self, *, lost: bool) -> None:
        """The hold is over: released (or let go of), or ``lost`` -- found gone without a release, or given
        up by ``lock()``. Recorded once, at the first of these."""
        if self._ended:
            return
        self._ended = True
        held = asyncio.get_running_loop().time() - self._obtained_at
        _metrics.hold_ended(self._binding.backend, self._kind, held, lost=lost)

    async def _stop_refresher_and_release(self) -> bool:
        # Idempotent as a whole, so that ``finish`` can run it again after a cancellation.
        if self._refresher is not None:
            await self._refresher.stop()
        return await self._driver.release(self._key, self._token, self._handle)

    async def refresh(self) -> None:
        self._binding.check_usable()
        if self._released:
            await asyncio.sleep(0)
            raise LockNotHeldError(self._key, f"lock {self._key!r} was released")
        sent = asyncio.get_running_loop().time()
        if not await self._driver.extend(self._key, self._token, self._handle, self._ttl):
            self._end(lost=True)
            raise LockNotHeldError(self._key)
        self._valid_until = max(self._valid_until, sent + self._lifetime)

    async def ttl(self) -> float:
        self._binding.check_usable()
        if self._released:
            await asyncio.sleep(0)
            return 0.0
        return await self._driver.remaining(self._key, self._token, self._handle)

    def start_refresh(self, on_error: Callable[[BaseException], object] | None = None) -> RefreshTask[H]:
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be callable or None, not {type(on_error).__name__}")
        self._binding.check_usable()
        if self._released:
            raise LockNotHeldError(self._key, f"lock {self._key!r} was released")
        if self._refresher is not None and self._refresher.running:
            raise RuntimeError(f"a refresher of lock {self._key!r} is already running")
        self._refresher = RefreshTask(self, on_error)
        return self._refresher

    async def __aenter__(self) -> HeldLock[H]:
        # Deliberately not a checkpoint: in ``async with await locker.obtain(k):`` a cancellation landing
        # here would skip ``__aexit__`` and leave the lock held until its TTL.
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.release()
            return
        try:
            await self.release()
        except Exception:
            logger.warning("release of lock %r failed after its body raised", self._key, exc_info=True)


class RefreshTask(Generic[H]):
    """The handle of a ``start_refresh`` task; contract on the ``distlock_async.Refresher`` protocol."""

    __slots__ = ("_lock", "_on_error", "_stopping", "_task")

    def __init__(self, lock: HeldLock[H], on_error: Callable[[BaseException], object] | None) -> None:
        self._lock = lock
        self._on_error = on_error
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"distlock_async: refresh {lock.key!r}")
        refreshers = lock._binding.refreshers
        refreshers.add(self)
        self._task.add_done_callback(lambda _: refreshers.discard(self))

    @property
    def running(self) -> bool:
        return not self._stopping and not self._task.done()

    def __repr__(self) -> str:
        return f"<distlock_async.Refresher key={self._lock.key!r} running={self.running}>"

    async def stop(self) -> None:
        self._stopping = True
        if asyncio.current_task() is self._task:
            # Called from on_error (say, a release in the callback): the task exits by itself afterwards.
            await asyncio.sleep(0)
            return
        self._task.cancel()
        await asyncio.wait([self._task])

    async def _run(self) -> None:
        lock = self._lock
        loop = asyncio.get_running_loop()
        while True:
            # Every interval; sooner if the lock would otherwise run out first (a grant that said it ends
            # early): then at half the time it has left.
            await asyncio.sleep(min(lock._interval, max(0.0, lock._valid_until - loop.time()) / 2))
            try:
                # A refresh that has not succeeded by the time the lock may have expired cannot vouch for
                # it any more: the lock counts as lost then (a lock() body is cancelled), not when the
                # refresh's own deadline passes, which can be later than the TTL.
                with anyio.move_on_after(lock._valid_until - loop.time()) as scope:
                    await lock.refresh()
            except Exception as exc:
                await self._report(exc)
                return
            if scope.cancelled_caught:
                lock._end(lost=True)
                why = f"lock {lock.key!r} may have expired: no refresh succeeded within its TTL"
                await self._report(LockNotHeldError(lock.key, why))
                return

    async def _report(self, exc: Exception) -> None:
        if self._on_error is None:
            logger.warning("refresh of lock %r failed; refreshing stopped: %s", self._lock.key, exc, exc_info=exc)
            return
        try:
            result = self._on_error(exc)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_error callback of lock %r raised", self._lock.key)


show_as("Lock", HeldLock)
show_as("Refresher", RefreshTask)
