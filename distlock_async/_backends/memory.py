from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel

from .._core._aio import Signal
from .._core._driver import Busy, Granted
from .._core._locker import LockerBase
from .._options import Options
from .._protocols import KeyState

__all__ = ["MemoryLocker", "MemoryStore"]


class _Entry:
    __slots__ = ("expires_at", "fence", "holder", "token")

    def __init__(self, token: str, holder: str, expires_at: float, fence: int) -> None:
        self.token = token
        #: The label ``inspect`` shows; ownership is the token's.
        self.holder = holder
        self.expires_at = expires_at
        self.fence = fence


class MemoryStore:
    """The lock table that [`MemoryLocker`][distlock_async.MemoryLocker] objects share.

    Lockers built on one store contend with each other; a locker built without a ``store`` gets its
    own. Time is the event loop's clock, so a store serves the lockers of one process. Fencing tokens
    come from one counter for the whole store, which keeps them strictly increasing per key without
    remembering anything about keys that are no longer held.

    Waiters queue per key and are served first come, first served, as on etcd and Redis: a free key
    goes to the head of its queue (woken by the release), never to a newcomer or a waiter further back.
    """

    def __init__(self) -> None:
        self._held: dict[str, _Entry] = {}
        #: Per key, the waiters' signals in the order they first found the key taken (a dict is an
        #: ordered set): the first is the only one a release wakes and the only one a free key goes to.
        self._queues: dict[str, dict[Signal, None]] = {}
        self._fence = 0

    def __repr__(self) -> str:
        return f"<distlock_async.MemoryStore held={len(self._held)}>"

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._held.get(key)
        if entry is not None and entry.expires_at <= now:
            del self._held[key]
            entry = None
        return entry

    def _owned(self, key: str, token: str, now: float) -> _Entry | None:
        entry = self._live(key, now)
        return entry if entry is not None and entry.token == token else None

    def _try_acquire(self, key: str, token: str, holder: str, ttl: float, me: Signal) -> Granted[None] | Busy:
        now = _now()
        entry = self._live(key, now)
        queue = self._queues.get(key)
        if entry is None and (not queue or next(iter(queue)) is me):
            self._leave(key, me)
            self._fence += 1
            self._held[key] = _Entry(token, holder, now + ttl, self._fence)
            return Granted(self._fence, None)
        self._queues.setdefault(key, {}).setdefault(me, None)  # keeps its place if queued already
        # A free key is the head's: the others sleep until their retry slot or the head's release.
        return Busy(holder_ttl=None if entry is None else entry.expires_at - now)

    def _leave(self, key: str, me: Signal) -> None:
        """Take ``me`` out of the queue; if it was the head of a free key, wake the next one."""
        queue = self._queues.get(key)
        if queue is None or me not in queue:
            return
        was_head = next(iter(queue)) is me
        del queue[me]
        if not queue:
            del self._queues[key]
        elif was_head and self._live(key, _now()) is None:
            next(iter(queue)).set()

    def _release(self, key: str, token: str) -> bool:
        if self._owned(key, token, _now()) is None:
            return False
        del self._held[key]
        queue = self._queues.get(key)
        if queue:
            next(iter(queue)).set()
        return True


def _now() -> float:
    return asyncio.get_running_loop().time()


class _MemoryContender:
    __slots__ = ("_holder", "_key", "_signal", "_store", "_token", "_ttl")

    def __init__(self, store: MemoryStore, key: str, token: str, ttl: float, holder: str) -> None:
        self._store = store
        self._key = key
        self._token = token
        self._holder = holder
        self._ttl = ttl
        #: Its place in the key's queue, and what a release sets to wake it.
        self._signal = Signal()

    async def attempt(self) -> Granted[None] | Busy:
        await anyio.lowlevel.checkpoint()
        self._signal.clear()
        return self._store._try_acquire(self._key, self._token, self._holder, self._ttl, self._signal)

    async def wait(self, timeout: float) -> bool:
        return await self._signal.wait(timeout)

    async def close(self, granted: Granted[None] | None) -> None:
        # Attempts are atomic (the checkpoint comes before the change), so there is nothing to undo
        # but our place in the queue.
        self._store._leave(self._key, self._signal)
        await anyio.lowlevel.checkpoint()


class _MemoryDriver:
    cleanup_timeout = 1.0

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def lifetime(self, ttl: float) -> float:
        return ttl

    def contender(self, key: str, token: str, ttl: float, holder: str) -> _MemoryContender:
        return _MemoryContender(self.store, key, token, ttl, holder)

    async def release(self, key: str, token: str, handle: None) -> bool:
        await anyio.lowlevel.checkpoint()
        return self.store._release(key, token)

    async def extend(self, key: str, token: str, handle: None, ttl: float) -> bool:
        await anyio.lowlevel.checkpoint()
        now = _now()
        entry = self.store._owned(key, token, now)
        if entry is None:
            return False
        entry.expires_at = now + ttl
        return True

    async def remaining(self, key: str, token: str, handle: None) -> float:
        await anyio.lowlevel.checkpoint()
        now = _now()
        entry = self.store._owned(key, token, now)
        return 0.0 if entry is None else entry.expires_at - now

    async def inspect(self, key: str) -> KeyState:
        await anyio.lowlevel.checkpoint()
        now = _now()
        entry = self.store._live(key, now)
        if entry is None:
            # The store forgets free keys; its one counter is what the next token of any key exceeds.
            return KeyState(held=False, ttl=None, fencing_counter=self.store._fence or None)
        return KeyState(held=True, ttl=entry.expires_at - now, fencing_counter=entry.fence, holder=entry.holder)

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


class MemoryLocker(LockerBase[None]):
    """An in-process locker with the same semantics as the server backends.

    TTLs run on the event loop's clock; fencing tokens and wake on release work as on Redis and etcd.
    For tests and single-process applications; the default backend of ``distlock demo``.

    Args:
        options: defaults for every lock of this locker.
        store: share one [`MemoryStore`][distlock_async.MemoryStore] between lockers to have them
            contend; without it the locker has a store of its own.

    Raises:
        TypeError: ``options`` or ``store`` has the wrong type.
    """

    _backend = "memory"

    def __init__(self, options: Options | None = None, *, store: MemoryStore | None = None) -> None:
        if store is not None and not isinstance(store, MemoryStore):
            raise TypeError(f"store must be a distlock_async.MemoryStore or None, not {type(store).__name__}")
        self._store = store if store is not None else MemoryStore()
        super().__init__(_MemoryDriver(self._store), options)

    @property
    def store(self) -> MemoryStore:
        """The store this locker's locks live in."""
        return self._store

    def __repr__(self) -> str:
        return f"<distlock_async.MemoryLocker {self._store!r}>"


MemoryLocker.__module__ = MemoryStore.__module__ = "distlock_async"
