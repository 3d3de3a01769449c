"""The private interface a backend implements; the core does everything else.

A backend is a :class:`Driver`. For each ``obtain`` the core asks it for a :class:`Contender`, calls
:meth:`Contender.attempt` until one returns :class:`Granted` or the retry budget is spent, sleeping in
:meth:`Contender.wait` between attempts, and always ends with :meth:`Contender.close`. The held lock then
talks to the driver through ``release``/``extend``/``remaining`` with the ``handle`` of its grant; the
contract is generic over the handle's type (``None`` for a backend that needs none), so a driver gets
back exactly what its contender granted.

A driver may also have ``inspect`` (see :class:`Inspector`): what the server knows about a key that
the caller does not hold, behind ``locker.inspect()``. It is optional, so that a backend can ship without it.

Drivers translate their client's errors into ``BackendError`` themselves. Every ``async def`` is a
checkpoint. ``Contender.close``, ``Driver.release`` may run twice for one lock (a cancelled first run
is repeated in a shielded task), so both must be idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

from .._protocols import KeyState

#: What a driver keeps about one held lock (an etcd lease, say); ``None`` for drivers that need nothing.
H = TypeVar("H")


@dataclass(frozen=True)
class Granted(Generic[H]):
    """The lock is ours. ``handle`` is whatever the driver needs later (an etcd lease, say)."""

    fencing_token: int
    handle: H


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
