"""Semaphores and elections in the core: what a permit or a term is made of (a :class:`Space`), the
term, the election handle and its observation. Backends provide them through the ``Semaphores`` and
``Elections`` parts of their driver (``_driver.py``); the retry loop, cleanup, refreshing and
``lock()``'s lost-means-cancelled are the locker's, shared with locks."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._errors import LockNotHeldError
from .._protocols import Leader
from .._validate import check_value
from . import _metrics
from ._aio import finish
from ._driver import Driver, Elections, Follower, H
from ._lock import Binding, HeldLock, show_as

if TYPE_CHECKING:
    from ._locker import LockContext, LockerBase

__all__ = ["ElectionHandle", "HeldTerm", "L", "LeaderObservation", "Space"]

#: The kind of held object a space makes: a lock or permit (``HeldLock``) or a term (``HeldTerm``).
L = TypeVar("L", bound=HeldLock[Any])


@dataclass(frozen=True)
class Space(Generic[H, L]):
    """Where an obtain contends and what it hands back: the driver (or a view of it for permits or for
    leadership), the metrics' ``distlock.kind``, and the held object's maker."""

    driver: Driver[H]
    kind: str
    make: Callable[..., L]


class HeldTerm(HeldLock[H]):
    """A held leadership; its contract is documented on the ``distlock_async.Term`` protocol."""

    __slots__ = ("_elections", "_value")

    def __init__(self, *args: Any, elections: Elections[H], value: str) -> None:
        super().__init__(*args)
        self._elections = elections
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        state = "resigned" if self._released else "leading"
        return (
            f"<distlock_async.Term name={self._key!r} value={self._value!r} "
            f"fencing_token={self._fencing_token} {state}>"
        )

    async def proclaim(self, value: str) -> None:
        check_value(value)
        self._binding.check_usable()
        if self._released:
            await asyncio.sleep(0)
            raise LockNotHeldError(self._key, f"the term of {self._key!r} is over: it resigned")
        if not await self._elections.proclaim(self._key, self._token, self._handle, value):
            self._end(lost=True)
            raise LockNotHeldError(self._key, f"the term of {self._key!r} is over: another candidate leads")
        self._value = value


@dataclass(frozen=True, eq=False, repr=False, slots=True)
class ElectionHandle(Generic[H]):
    """An election; its contract is documented on the ``distlock_async.Election`` protocol."""

    _locker: LockerBase[H, Any]
    _elections: Elections[H]
    name: str

    def __repr__(self) -> str:
        return f"<distlock_async.Election name={self.name!r}>"

    def campaign(self, value: str, *, ttl: float | None = None) -> LockContext[HeldTerm[H]]:
        check_value(value)  # ttl is checked with the other settings, by the locker's _context
        elections = self._elections
        make = partial(HeldTerm, elections=elections, value=value)
        space: Space[H, HeldTerm[H]] = Space(elections.candidates(value), _metrics.LEADER, make)
        # No retry budget: a candidate waits until it leads, or until its caller cancels it.
        return self._locker._context(self.name, space, ttl=ttl, timeout=math.inf)

    async def leader(self) -> Leader | None:
        self._locker._check_usable()
        return await self._elections.leader(self.name)

    def observe(self) -> LeaderObservation:
        return LeaderObservation(self._locker._binding, self._elections, self.name)


#: ``observe()``'s own "nothing yielded yet".
_NOTHING: Any = object()


class LeaderObservation:
    """What ``Election.observe()`` returns; contract on the ``distlock_async.Observation`` protocol."""

    __slots__ = ("_binding", "_closed", "_elections", "_follower", "_last", "_name")

    def __init__(self, binding: Binding[Any], elections: Elections[Any], name: str) -> None:
        self._binding = binding
        self._elections = elections
        self._name = name
        self._follower: Follower | None = None
        self._last: Leader | None = _NOTHING
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<distlock_async.Observation name={self._name!r} {state}>"

    def __aiter__(self) -> LeaderObservation:
        return self

    async def __anext__(self) -> Leader | None:
        if self._closed:
            await asyncio.sleep(0)
            raise StopAsyncIteration
        self._binding.check_usable()
        if self._follower is None:
            self._follower = self._elections.follow(self._name)
            self._binding.observations.add(self)
        follower = self._follower
        try:
            leader = await self._next_change(follower)
        except BaseException:
            # Cancelled, or the server failed: the observation is over, and lets go of its watch.
            await self.aclose()
            raise
        if leader is _NOTHING:  # the locker closed, or another task closed this observation
            raise StopAsyncIteration
        return leader

    async def _next_change(self, follower: Follower) -> Leader | None:
        while True:
            leader = await follower.next()
            if self._closed:
                return _NOTHING  # type: ignore[no-any-return]
            if leader != self._last:
                self._last = leader
                return leader

    async def aclose(self) -> None:
        self._closed = True
        self._binding.observations.discard(self)
        follower, self._follower = self._follower, None
        if follower is None:
            await asyncio.sleep(0)
            return
        await finish(follower.aclose, timeout=5.0, what=f"end of the observation of {self._name!r}")

    async def __aenter__(self) -> LeaderObservation:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


show_as("Term", HeldTerm)
show_as("Election", ElectionHandle)
show_as("Observation", LeaderObservation)
