"""The private interface a backend implements; the core does everything else.

A backend is a :class:`Driver`. For each ``obtain`` the core asks it for a :class:`Contender`, calls
:meth:`Contender.attempt` until one returns :class:`Granted` or the retry budget is spent, sleeping in
:meth:`Contender.wait` between attempts, and always ends with :meth:`Contender.close`. The held lock then
talks to the driver through ``release``/``extend``/``remaining`` with the ``handle`` of its grant; the
contract is generic over the handle's type (``None`` for a backend that needs none), so a driver gets
back exactly what its contender granted.

A driver may also have ``inspect`` (see :class:`Inspector`): what the server knows about a key that
the caller does not hold, behind ``locker.inspect()``; and the coordination parts, :class:`Semaphores`
and :class:`Elections`, which hand the core views of the driver that follow this same contract for
permits and for leadership. Each is optional, so that a backend can ship without it.

Drivers translate their client's errors into ``BackendError`` themselves. Every ``async def`` is a
checkpoint. ``Contender.close``, ``Driver.release`` may run twice for one lock (a cancelled first run
is repeated in a shielded task), so both must be idempotent.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from .._protocols import KeyState, Leader, SemaphoreState

#: What a driver keeps about one held lock (an etcd lease, say); ``None`` for drivers that need nothing.
H = TypeVar("H")


@dataclass(frozen=True)
class Granted(Generic[H]):
    """The lock is ours. ``handle`` is whatever the driver needs later (an etcd lease, say).

    ``valid_until``: the event loop time before which the server cannot have let the lock expire, for a
    driver that knows it may be earlier than the core's own bound (the attempt's send time plus
    ``lifetime``): an etcd lease kept alive before the attempt and not renewed by it, say. The core takes
    the earlier of the two; a driver that knows nothing better leaves it unbounded.
    """

    fencing_token: int
    handle: H
    valid_until: float = math.inf


@dataclass(frozen=True)
class Busy:
    """Someone else holds the lock; ``holder_ttl`` is its remaining seconds when the backend knows them."""

    holder_ttl: float | None = None


class Contender(Protocol[H]):
    """One ``obtain`` call's presence on the server: what it wrote, what it watches."""

    async def attempt(self) -> Granted[H] | Busy:
        """Try to take the lock once."""
        ...

    async def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; return ``True`` early if the lock may have become free.

        Returning ``True`` buys an extra attempt that does not use up the retry budget (wake on release);
        a backend that starts listening here returns ``True`` once right after it started, so a release
        between the failed attempt and the subscription is not missed.
        """
        ...

    async def close(self, granted: Granted[H] | None) -> None:
        """Stop listening; if nothing was granted, undo anything an attempt may have written."""
        ...


class Driver(Protocol[H]):
    """A backend as the core sees it."""

    #: Upper bound, in seconds, on one shielded cleanup (a release or an undo) once cancelled.
    cleanup_timeout: float

    def lifetime(self, ttl: float) -> float:
        """Seconds the server keeps a lock obtained with ``ttl`` after each refresh; ``ValueError`` if it
        cannot keep it as asked. Refreshes are spaced by this, not by ``ttl``."""
        ...

    def contender(self, key: str, token: str, ttl: float, holder: str) -> Contender[H]:
        """One obtain of ``key`` by ``token``; the lock it takes carries ``holder``, the label that
        ``inspect`` reports (informative only: ownership is ``token``'s)."""
        ...

    async def release(self, key: str, token: str, handle: H) -> bool:
        """Delete the lock if ``token`` still owns it; ``False`` if it did not."""
        ...

    async def extend(self, key: str, token: str, handle: H, ttl: float) -> bool:
        """Reset the lock's remaining time to ``ttl`` if ``token`` still owns it; ``False`` if it did not."""
        ...

    async def remaining(self, key: str, token: str, handle: H) -> float:
        """Seconds left on the lock if ``token`` still owns it, else ``0.0``."""
        ...

    async def aclose(self) -> None:
        """Release what the driver owns (its own client, subscriber connections)."""
        ...


@runtime_checkable
class Inspector(Protocol):
    """The optional part of a :class:`Driver`."""

    async def inspect(self, key: str) -> KeyState:
        """Whether ``key`` is held, for how long, and its fencing counter; one round trip at most."""
        ...


@runtime_checkable
class Semaphores(Protocol[H]):
    """The part of a :class:`Driver` behind ``obtain_permit`` and ``semaphore``.

    ``permits(limit)`` is a view of the driver for the permits of semaphores counted against ``limit``:
    its contender takes a permit of the name it is given (``Granted`` while the permits held plus the
    waiters queued ahead of it are fewer than ``limit``, FIFO), and ``release``/``extend``/``remaining``
    act on that permit. Its names never meet the driver's lock keys. Making a view does no I/O.
    The contender's ``holder`` label is stored with the permit, for ``inspect_permits``.
    """

    def permits(self, limit: int) -> Driver[H]: ...

    async def inspect_permits(self, name: str) -> SemaphoreState:
        """What the server knows about the semaphore ``name`` (``locker.inspect_semaphore()``): its live
        permits' holder labels ordered by fencing token, its queued waiters, its fencing counter. Reads
        only, in one round trip; the name is in the permits' space, whatever the limit."""
        ...


#: The driver a :class:`DriverView` shows another space of, and what the backend says that space is.
D = TypeVar("D", bound="Driver[Any]")
S = TypeVar("S")


class DriverView(Generic[D, S]):
    """What ``permits(limit)`` and ``candidates(value)`` build on: a view of the locker's ``driver`` on
    another ``space`` of names (whatever the backend tells its spaces apart by). It shares the driver's
    connections, leases and streams (so it owns nothing, and its ``aclose`` only yields), its cleanup
    budget and its ``lifetime``; a backend adds the rest of the :class:`Driver` contract."""

    __slots__ = ("cleanup_timeout", "driver", "space")

    def __init__(self, driver: D, space: S) -> None:
        self.driver = driver
        self.space = space
        self.cleanup_timeout = driver.cleanup_timeout

    def lifetime(self, ttl: float) -> float:
        return self.driver.lifetime(ttl)

    async def aclose(self) -> None:
        await asyncio.sleep(0)  # the locker's driver owns everything


class Follower(Protocol):
    """One ``observe()``'s presence on the server (a watch, a subscription)."""

    async def next(self) -> Leader | None:
        """The election's leader: at once on the first call; later, once it may have changed.

        May return an unchanged state (the core yields only changes), but must never sleep past a change
        that is visible on the server longer than a bounded fallback. Returns promptly once ``aclose``
        was called (from another task, say the locker's ``aclose``).
        """
        ...

    async def aclose(self) -> None:
        """Let go of the watch or subscription; idempotent."""
        ...


@runtime_checkable
class Elections(Protocol[H]):
    """The part of a :class:`Driver` behind ``locker.election()``.

    ``candidates(value)`` is a view of the driver whose contender campaigns for the name it is given with
    ``value`` (FIFO among candidates; ``Granted`` makes it the leader, its fencing token strictly
    increasing per name), whose ``release`` resigns and ``extend`` keeps the leadership alive. Election
    names never meet lock keys or semaphore names. Making a view does no I/O.
    """

    def candidates(self, value: str) -> Driver[H]: ...

    async def proclaim(self, name: str, token: str, handle: H, value: str) -> bool:
        """Set the leader's value if ``token`` still leads ``name``; ``False`` if it does not."""
        ...

    async def leader(self, name: str) -> Leader | None:
        """The current leader of ``name``; one round trip at most."""
        ...

    def follow(self, name: str) -> Follower:
        """Start following ``name`` (no I/O until the first ``next``)."""
        ...
