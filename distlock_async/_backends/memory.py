from __future__ import annotations

import asyncio
import math

import anyio
import anyio.lowlevel

from .._core._aio import Signal
from .._core._driver import Busy, Granted
from .._core._locker import LockerBase
from .._options import Options
from .._protocols import KeyState, Leader, SemaphoreState

__all__ = ["MemoryLocker", "MemoryStore"]


#: The spaces of names in a store: a lock, a semaphore and an election of one name never meet.
_LOCK, _PERMIT, _LEADER = "lock", "permit", "leader"


class _Entry:
    __slots__ = ("expires_at", "fence", "holder", "value")

    def __init__(self, holder: str, expires_at: float, fence: int, value: str) -> None:
        #: The label ``inspect`` shows; ownership is the token's (the key of the entry).
        self.holder = holder
        self.expires_at = expires_at
        self.fence = fence
        #: An election's value; empty for locks and permits.
        self.value = value


class _Name:
    """One name of one space: its holders (one for a lock or a leader, up to a limit for permits), its
    queue of waiters, and the observers of an election."""

    __slots__ = ("holders", "observers", "queue")

    def __init__(self) -> None:
        #: By token.
        self.holders: dict[str, _Entry] = {}
        #: The waiters' signals in the order they first found the name taken (a dict is an ordered
        #: set), each with the limit it counts against (1 for locks and leaders).
        self.queue: dict[Signal, int] = {}
        self.observers: set[Signal] = set()

    def rank_fits(self, position: int, limit: int) -> bool:
        """Whether a waiter with ``position`` waiters ahead of it may hold now."""
        return len(self.holders) + position < limit

    def changed(self) -> None:
        """Wake the waiters that may hold now, and every observer."""
        for position, (waiter, limit) in enumerate(self.queue.items()):
            if self.rank_fits(position, limit):
                waiter.set()
        for observer in self.observers:
            observer.set()


class MemoryStore:
    """The lock table that [`MemoryLocker`][distlock_async.MemoryLocker] objects share.

    Lockers built on one store contend with each other; a locker built without a ``store`` gets its
    own. Time is the event loop's clock, so a store serves the lockers of one process. Fencing tokens
    come from one counter for the whole store, which keeps them strictly increasing per key without
    remembering anything about keys that are no longer held.

    Waiters queue per key and are served first come, first served, as on etcd and Redis: a free key
    goes to the head of its queue (woken by the release), never to a newcomer or a waiter further back.
    Semaphores and elections live in the same store, each in a space of its own.
    """

    def __init__(self) -> None:
        self._names: dict[tuple[str, str], _Name] = {}
        self._fence = 0

    def __repr__(self) -> str:
        held = sum(1 for (space, _), name in self._names.items() if space == _LOCK and name.holders)
        return f"<distlock_async.MemoryStore held={held}>"

    def _name(self, space: str, key: str, now: float) -> _Name | None:
        """The name, its expired holders dropped (waking whoever that concerns); ``None`` if unused."""
        name = self._names.get((space, key))
        if name is None:
            return None
        expired = [token for token, entry in name.holders.items() if entry.expires_at <= now]
        for token in expired:
            del name.holders[token]
        if expired:
            name.changed()
        return name

    def _forget_if_unused(self, space: str, key: str, name: _Name) -> None:
        if not (name.holders or name.queue or name.observers):
            self._names.pop((space, key), None)

    def _owned(self, space: str, key: str, token: str, now: float) -> _Entry | None:
        name = self._name(space, key, now)
        return None if name is None else name.holders.get(token)

    def _try_acquire(
        self, space: str, key: str, token: str, holder: str, ttl: float, limit: int, value: str, me: Signal
    ) -> Granted[None] | Busy:
        now = _now()
        name = self._name(space, key, now)
        if name is None:
            name = self._names[(space, key)] = _Name()
        queue = name.queue
        # Its place in the queue, or at the back for a newcomer: nobody overtakes a waiter.
        position = next((i for i, waiter in enumerate(queue) if waiter is me), len(queue))
        if name.rank_fits(position, limit):
            queue.pop(me, None)
            self._fence += 1
            name.holders[token] = _Entry(holder, now + ttl, self._fence, value)
            for observer in name.observers:
                observer.set()
            return Granted(self._fence, None)
        queue.setdefault(me, limit)  # keeps its place if queued already
        # The others sleep until their retry slot, a release, or the first holder's expiry.
        first_expiry = min((entry.expires_at for entry in name.holders.values()), default=None)
        return Busy(holder_ttl=None if first_expiry is None else first_expiry - now)

    def _leave(self, space: str, key: str, me: Signal) -> None:
        """Take ``me`` out of the queue; the waiters behind it may hold now."""
        name = self._names.get((space, key))
        if name is None or name.queue.pop(me, None) is None:
            return
        name.changed()
        self._forget_if_unused(space, key, name)

    def _release(self, space: str, key: str, token: str) -> bool:
        name = self._name(space, key, _now())
        if name is None or name.holders.pop(token, None) is None:
            return False
        name.changed()
        self._forget_if_unused(space, key, name)
        return True


def _now() -> float:
    return asyncio.get_running_loop().time()


class _MemoryContender:
    __slots__ = ("_driver", "_holder", "_key", "_signal", "_token", "_ttl")

    def __init__(self, driver: _MemoryDriver, key: str, token: str, ttl: float, holder: str) -> None:
        self._driver = driver
        self._key = key
        self._token = token
        self._holder = holder
        self._ttl = ttl
        #: Its place in the key's queue, and what a release sets to wake it.
        self._signal = Signal()

    async def attempt(self) -> Granted[None] | Busy:
        await anyio.lowlevel.checkpoint()
        self._signal.clear()
        driver = self._driver
        return driver.store._try_acquire(
            driver.space, self._key, self._token, self._holder, self._ttl, driver.limit, driver.value, self._signal
        )

    async def wait(self, timeout: float) -> bool:
        return await self._signal.wait(timeout)

    async def close(self, granted: Granted[None] | None) -> None:
        # Attempts are atomic (the checkpoint comes before the change), so there is nothing to undo
        # but our place in the queue.
        self._driver.store._leave(self._driver.space, self._key, self._signal)
        await anyio.lowlevel.checkpoint()


class _MemoryFollower:
    """An ``observe()`` of an election in the store: woken by every change of the name."""

    __slots__ = ("_key", "_signal", "_started", "_store")

    def __init__(self, store: MemoryStore, key: str) -> None:
        self._store = store
        self._key = key
        self._signal = Signal()
        self._started = False

    async def next(self) -> Leader | None:
        store, key = self._store, self._key
        if not self._started:
            self._started = True
            now = _now()
            name = store._name(_LEADER, key, now) or store._names.setdefault((_LEADER, key), _Name())
            name.observers.add(self._signal)
        else:
            entry = _leader(store, key, _now())
            # A leader's expiry is a change nobody announces: wake up for it.
            timeout = math.inf if entry is None else entry.expires_at - _now()
            await self._signal.wait(timeout)
        self._signal.clear()
        return _as_leader(_leader(store, key, _now()))

    async def aclose(self) -> None:
        self._signal.set()  # a next() under way returns
        name = self._store._names.get((_LEADER, self._key))
        if name is not None:
            name.observers.discard(self._signal)
            self._store._forget_if_unused(_LEADER, self._key, name)
        await anyio.lowlevel.checkpoint()


def _leader(store: MemoryStore, key: str, now: float) -> _Entry | None:
    """The entry of the election's leader, if anyone leads."""
    name = store._name(_LEADER, key, now)
    return None if name is None else next(iter(name.holders.values()), None)


def _as_leader(entry: _Entry | None) -> Leader | None:
    return None if entry is None else Leader(entry.value, entry.fence)


class _MemoryDriver:
    """The memory backend's driver; with ``space`` and ``limit`` also its views for permits and leaders."""

    cleanup_timeout = 1.0

    def __init__(self, store: MemoryStore, space: str = _LOCK, limit: int = 1, value: str = "") -> None:
        self.store = store
        self.space = space
        self.limit = limit
        self.value = value

    def lifetime(self, ttl: float) -> float:
        return ttl

    def contender(self, key: str, token: str, ttl: float, holder: str) -> _MemoryContender:
        return _MemoryContender(self, key, token, ttl, holder)

    def permits(self, limit: int) -> _MemoryDriver:
        return _MemoryDriver(self.store, _PERMIT, limit)

    def candidates(self, value: str) -> _MemoryDriver:
        return _MemoryDriver(self.store, _LEADER, 1, value)

    async def release(self, key: str, token: str, handle: None) -> bool:
        await anyio.lowlevel.checkpoint()
        return self.store._release(self.space, key, token)

    async def extend(self, key: str, token: str, handle: None, ttl: float) -> bool:
        await anyio.lowlevel.checkpoint()
        now = _now()
        entry = self.store._owned(self.space, key, token, now)
        if entry is None:
            return False
        entry.expires_at = now + ttl
        return True

    async def remaining(self, key: str, token: str, handle: None) -> float:
        await anyio.lowlevel.checkpoint()
        now = _now()
        entry = self.store._owned(self.space, key, token, now)
        return 0.0 if entry is None else entry.expires_at - now

    async def proclaim(self, key: str, token: str, handle: None, value: str) -> bool:
        await anyio.lowlevel.checkpoint()
        store = self.store
        name = store._name(_LEADER, key, _now())
        entry = None if name is None else name.holders.get(token)
        if name is None or entry is None:
            return False
        entry.value = value
        name.changed()
        return True

    async def leader(self, key: str) -> Leader | None:
        await anyio.lowlevel.checkpoint()
        return _as_leader(_leader(self.store, key, _now()))

    def follow(self, key: str) -> _MemoryFollower:
        return _MemoryFollower(self.store, key)

    async def inspect(self, key: str) -> KeyState:
        await anyio.lowlevel.checkpoint()
        now = _now()
        name = self.store._name(_LOCK, key, now)
        entry = None if name is None else next(iter(name.holders.values()), None)
        if entry is None:
            # The store forgets free keys; its one counter is what the next token of any key exceeds.
            return KeyState(held=False, ttl=None, fencing_counter=self.store._fence or None)
        return KeyState(held=True, ttl=entry.expires_at - now, fencing_counter=entry.fence, holder=entry.holder)

    async def inspect_permits(self, key: str) -> SemaphoreState:
        await anyio.lowlevel.checkpoint()
        name = self.store._name(_PERMIT, key, _now())
        # Holders are kept in the order they were granted, which is their fencing tokens' order.
        holders = () if name is None else tuple(entry.holder for entry in name.holders.values())
        waiting = 0 if name is None else len(name.queue)
        if name is not None:
            self.store._forget_if_unused(_PERMIT, key, name)  # its last holders may have just expired
        # The store's one counter: what the next permit's token, like any other, will exceed.
        return SemaphoreState(len(holders), holders, waiting, self.store._fence or None)

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


class MemoryLocker(LockerBase[None, _MemoryDriver]):
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
