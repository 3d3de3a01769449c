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
    __slots__ = ("expires_at", "fence", "token")

    def __init__(self, token: str, expires_at: float, fence: int) -> None:
        self.token = token
        self.expires_at = expires_at
        self.fence = fence


class MemoryStore:
    """The lock table that :class:`MemoryLocker` objects share.

    Lockers built on one store contend with each other; a locker built without a ``store`` gets its
    own. Time is the event loop's clock, so a store serves the lockers of one process. Fencing tokens
    come from one counter for the whole store, which keeps them strictly increasing per key without
    remembering anything about keys that are no longer held.
    """

    def __init__(self) -> None:
        self._held: dict[str, _Entry] = {}
        self._waiters: dict[str, set[Signal]] = {}
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

    def _try_acquire(self, key: str, token: str, ttl: float) -> Granted[None] | Busy:
        now = _now()
        entry = self._live(key, now)
        if entry is not None:
            return Busy(holder_ttl=entry.expires_at - now)
        self._fence += 1
        self._held[key] = _Entry(token, now + ttl, self._fence)
        return Granted(self._fence, None)

    def _release(self, key: str, token: str) -> bool:
        if self._owned(key, token, _now()) is None:
            return False
        del self._held[key]
        for signal in self._waiters.get(key, ()):
            signal.set()
        return True


def _now() -> float:
    return asyncio.get_running_loop().time()


class _MemoryContender:
    __slots__ = ("_key", "_signal", "_store", "_token", "_ttl")

    def __init__(self, store: MemoryStore, key: str, token: str, ttl: float) -> None:
        self._store = store
        self._key = key
        self._token = token
        self._ttl = ttl
        self._signal: Signal | None = None

    async def attempt(self) -> Granted[None] | Busy:
        await anyio.lowlevel.checkpoint()
        if self._signal is not None:
            self._signal.clear()
        return self._store._try_acquire(self._key, self._token, self._ttl)

    async def wait(self, timeout: float) -> bool:
        if self._signal is None:
            self._signal = Signal()
            self._store._waiters.setdefault(self._key, set()).add(self._signal)
        return await self._signal.wait(timeout)

    async def close(self, granted: Granted[None] | None) -> None:
        # Attempts are atomic (the checkpoint comes before the change), so there is nothing to undo.
        signal, self._signal = self._signal, None
        if signal is not None:
            waiters = self._store._waiters[self._key]
            waiters.discard(signal)
            if not waiters:
                del self._store._waiters[self._key]
        await anyio.lowlevel.checkpoint()


class _MemoryDriver:
    cleanup_timeout = 1.0

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def lifetime(self, ttl: float) -> float:
        return ttl

    def contender(self, key: str, token: str, ttl: float) -> _MemoryContender:
        return _MemoryContender(self.store, key, token, ttl)

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
        return KeyState(held=True, ttl=entry.expires_at - now, fencing_counter=entry.fence)

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


class MemoryLocker(LockerBase[None]):
    """An in-process locker with the same semantics as the server backends.

    TTLs run on the event loop's clock; fencing tokens and wake on release work as on Redis and etcd.
    For tests and single-process applications; the default backend of ``distlock demo``.

    Args:
        options: defaults for every lock of this locker.
        store: share one :class:`MemoryStore` between lockers to have them contend; without it the
            locker has a store of its own.

    Raises:
        TypeError: ``options`` or ``store`` has the wrong type.
    """

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
