"""The public contract: what every backend's lockers and locks do. Implementations stay quiet."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Election", "KeyState", "Leader", "Lock", "Locker", "Observation", "Refresher", "SemaphoreState", "Term"]

_L = TypeVar("_L", bound="Locker")
_O = TypeVar("_O", bound="Observation")


@dataclass(frozen=True)
class KeyState:
    """A key as the server sees it, whoever holds it: what [`Locker.inspect`][distlock_async.Locker.inspect] returns.

    Attributes:
        held: whether someone holds the lock now.
        ttl: the holder's remaining seconds; ``None`` when the key is free, or held with no expiry
            (a key written by hand).
        fencing_counter: the number the next obtain's fencing token will exceed (the holder's token
            while held on Redis and memory; etcd's revision when free); ``None`` when the backend keeps
            none for the key right now.
        holder: the holder's label ([`Options`][distlock_async.Options]`.holder` of the locker that
            obtained it); ``None`` when the key is free, or held by a client that wrote no label (a Go
            ``concurrency.Mutex`` or ``etcdctl lock`` on etcd, a lock of an older release). Informative
            only: it says who, not whether a given [`Lock`][distlock_async.Lock] still owns the key.
    """

    held: bool
    ttl: float | None
    fencing_counter: int | None
    holder: str | None = None


@dataclass(frozen=True)
class SemaphoreState:
    """A semaphore as the server sees it: what [`Locker.inspect_semaphore`][distlock_async.Locker.inspect_semaphore]
    returns. A semaphore keeps no limit of its own (each caller passes its own), so none is reported.

    Attributes:
        held: how many permits of the name are held now (expired ones not counted).
        holders: each held permit's holder label ([`Options`][distlock_async.Options]`.holder` of the
            locker that obtained it), ordered by fencing token: the order the permits were granted (on
            etcd, the order their keys queued, whose create revisions are the tokens); ``None`` for a
            permit that carries no label. ``len(holders) == held``. Informative only, as
            [`KeyState`][distlock_async.KeyState]`.holder`.
        waiting: how many callers are queued for a permit now (``0`` when none).
        fencing_counter: the number the next permit's fencing token will exceed (the last token issued
            on Redis and memory; etcd's revision); ``None`` when the backend keeps none for the name
            right now.
    """

    held: int
    holders: tuple[str | None, ...]
    waiting: int
    fencing_counter: int | None


@dataclass(frozen=True)
class Leader:
    """The leader of an election, as [`Election.leader`][distlock_async.Election.leader] and
    [`Election.observe`][distlock_async.Election.observe] report it.

    Attributes:
        value: what the leader campaigned with, or proclaimed since.
        fencing_token: its term's fencing token: strictly increasing per election name, so that a
            resource can refuse the writes of a leader that was replaced.
    """

    value: str
    fencing_token: int


@runtime_checkable
class Refresher(Protocol):
    """The handle of a background refresh task started by [`Lock.start_refresh`][distlock_async.Lock.start_refresh]."""

    @property
    def running(self) -> bool:
        """``True`` until the task has stopped, failed, or been asked to stop."""
        ...

    async def stop(self) -> None:
        """Stop the task and wait until it has exited.

        Idempotent and safe to call from several tasks at once; a no-op once the task has exited.
        Called from inside the refresher's own ``on_error`` callback, it does not wait for itself.
        """
        ...


@runtime_checkable
class Lock(Protocol):
    """A held distributed lock, as returned by [`Locker.obtain`][distlock_async.Locker.obtain].

    ``async with lock:`` releases it on exit. If the body raised, its exception propagates and a
    failed release is logged on the ``distlock_async`` logger; if the body succeeded and the release
    fails, the [`LockNotHeldError`][distlock_async.LockNotHeldError] propagates.
    """

    @property
    def key(self) -> str:
        """The key this lock was obtained for."""
        ...

    @property
    def token(self) -> str:
        """A random value unique to this obtain (at least 128 bits): the lock's proof of ownership."""
        ...

    @property
    def holder(self) -> str:
        """The label this lock was obtained with: [`Options`][distlock_async.Options]`.holder`, or
        ``"<hostname>:<pid>"`` of the obtaining process. What [`Locker.inspect`][distlock_async.Locker.inspect]
        shows others while this lock is held; informative only."""
        ...

    @property
    def fencing_token(self) -> int:
        """A number ``>= 1``, strictly increasing per key across obtains, releases and expiries.

        Pass it to the resource the lock protects and have the resource reject any write that carries
        a token lower than the highest it has seen: that keeps a holder that was paused past its TTL
        from overwriting its successor's work.
        """
        ...

    async def release(self) -> None:
        """Release the lock, if this ``Lock`` still owns it.

        Stops this lock's refresher first. Completes even if the calling task is cancelled meanwhile
        (the cancellation is delivered afterwards).

        Raises:
            LockNotHeldError: the lock expired, was already released, or belongs to another owner,
                whose lock is left untouched.
            BackendError: the server could not be reached or answered an error.
        """
        ...

    async def refresh(self) -> None:
        """Reset the lock's remaining time to its TTL.

        Raises:
            LockNotHeldError: the lock expired, was released, was deleted, or belongs to another owner.
            BackendError: the server could not be reached or answered an error.
        """
        ...

    async def ttl(self) -> float:
        """The remaining seconds of this lock; ``0.0`` if it is no longer held by this ``Lock``.

        Raises:
            BackendError: the server could not be reached or answered an error.
        """
        ...

    def start_refresh(self, on_error: Callable[[BaseException], object] | None = None) -> Refresher:
        """Start a task that calls [`refresh`][distlock_async.Lock.refresh] every ``refresh_interval`` seconds.

        On the first failure the task calls ``on_error(exc)`` exactly once (a plain or an async callable;
        ``None`` logs a warning on the ``distlock_async`` logger) and exits, whatever ``on_error`` returns.
        The locker's ``aclose()`` and this lock's ``release()`` stop it.

        Raises:
            RuntimeError: a refresher of this lock is still running, the locker is closed, or no event
                loop is running.
            LockNotHeldError: the lock was already released.
        """
        ...

    async def __aenter__(self) -> Lock: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Term(Lock, Protocol):
    """Leadership of an election: what ``async with election.campaign(value) as term:`` yields.

    A [`Lock`][distlock_async.Lock] whose [`key`][distlock_async.Lock.key] is the election's name:
    ``fencing_token`` is strictly increasing per name, ``release()`` resigns.
    """

    @property
    def value(self) -> str:
        """The value this leader campaigned with, or last proclaimed."""
        ...

    async def proclaim(self, value: str) -> None:
        """Change the value observers see, keeping the leadership (and the fencing token).

        Raises:
            LockNotHeldError: this term is over (resigned, expired, or lost).
            BackendError: the server could not be reached or answered an error.
            TypeError, ValueError: a bad value; the message names it.
        """
        ...


@runtime_checkable
class Observation(Protocol):
    """What [`Election.observe`][distlock_async.Election.observe] returns: an async iterator of the
    election's leader (``None`` while nobody leads), and an async context manager that ends it."""

    def __aiter__(self) -> AsyncIterator[Leader | None]: ...

    async def __anext__(self) -> Leader | None: ...

    async def aclose(self) -> None:
        """Stop observing and let go of what it holds on the server (a watch, a subscription). Idempotent."""
        ...

    async def __aenter__(self: _O) -> _O: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Election(Protocol):
    """One leader per name among every locker on the same server: made by
    [`Locker.election`][distlock_async.Locker.election], without I/O."""

    @property
    def name(self) -> str:
        """The election's name."""
        ...

    def campaign(self, value: str, *, ttl: float | None = None) -> AbstractAsyncContextManager[Term]:
        """Become the leader for the duration of an ``async with`` block.

        Entering waits, without a retry budget, until this caller leads; candidates are served first come,
        first served. Cancel the wait to give up (``anyio.fail_after``, ``asyncio.timeout``): nothing is left
        behind. While the body runs the leadership is kept alive; if it is lost, the body is cancelled and
        the block raises [`LockLostError`][distlock_async.LockLostError]. Leaving the block resigns.

        Raises:
            BackendError: the server could not be reached or answered an error.
            TypeError, ValueError: a bad argument; the message names it.
            RuntimeError: the locker is closed or bound to another event loop.
        """
        ...

    async def leader(self) -> Leader | None:
        """The current leader, or ``None`` when nobody leads.

        Raises:
            BackendError: the server could not be reached or answered an error.
            RuntimeError: the locker is closed or bound to another event loop.
        """
        ...

    def observe(self) -> Observation:
        """Follow the leadership: ``async for leader in election.observe():``.

        Yields the current leader (or ``None``) at once, then each change: a new leader, a proclaimed value,
        ``None`` when nobody leads. Quick successive changes may be coalesced, but the last one is always
        yielded: it never stops on a stale state. It ends when the locker closes; use it as an
        ``async with`` block (or call ``aclose()``) to end it as soon as you stop iterating.

        Raises:
            BackendError: from the iteration, when the server could not be reached or answered an error.
        """
        ...


@runtime_checkable
class Locker(Protocol):
    """A backend that hands out [`Lock`][distlock_async.Lock] objects for string keys.

    Keys are non-empty ``str`` of at most 1024 UTF-8 bytes, any characters. Per-call keywords override
    the locker's [`Options`][distlock_async.Options]. ``async with locker:`` closes it on exit.
    """

    async def obtain(
        self,
        key: str,
        *,
        ttl: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
    ) -> Lock:
        """Obtain the lock for ``key``, retrying within the retry budget.

        The budget is ``max_retries`` retries spaced ``retry_delay`` apart, or, with ``timeout``, that many
        seconds of trying (``math.inf``: until obtained or cancelled), still polling every ``retry_delay``.
        Either way a release by the holder wakes a waiter at once. ``ttl``, ``max_retries`` and
        ``retry_delay`` override the locker's [`Options`][distlock_async.Options]; ``timeout`` replaces
        its ``max_retries``.

        If the call is cancelled after the server granted the lock, the lock is released before the
        cancellation propagates.

        Raises:
            NotObtainedError: the key is held by another owner and the retry budget is spent.
            BackendError: the server could not be reached or answered an error; raised at once, never
                retried as contention.
            TypeError, ValueError: a bad argument; the message names it. ``max_retries`` and ``timeout``
                together are a ``TypeError``.
            RuntimeError: the locker is closed or bound to another event loop.
        """
        ...

    def lock(
        self,
        key: str,
        *,
        ttl: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[Lock]:
        """Hold the lock for ``key`` for the duration of an ``async with`` block.

        Obtains on entry, with the same keywords and errors as [`obtain`][distlock_async.Locker.obtain]
        (a ``timeout`` counts from entering the block), refreshes in the background every
        ``refresh_interval``, and releases on exit. If the lock is lost while the body runs (a refresh
        fails), the body is cancelled and the ``async with`` raises
        [`LockLostError`][distlock_async.LockLostError].
        """
        ...

    async def obtain_permit(
        self,
        name: str,
        limit: int,
        *,
        ttl: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
    ) -> Lock:
        """Obtain one of the ``limit`` permits of the semaphore ``name``, retrying within the retry budget.

        At most ``limit`` permits of a name are held at any instant, across every locker on the same
        server. A permit is a [`Lock`][distlock_async.Lock] whose ``key`` is ``name``: release it,
        refresh it, start its refresher; its ``fencing_token`` is strictly increasing per name. Waiters
        are served first come, first served, and the budget works as in
        [`obtain`][distlock_async.Locker.obtain]. A semaphore and a lock of the same name never interfere.

        Callers that disagree on ``limit`` each count against their own: a caller gets a permit when the
        permits held plus the waiters queued ahead of it are fewer than its ``limit``.

        Raises:
            NotObtainedError: ``limit`` permits stayed held for the whole retry budget.
            BackendError: the server could not be reached or answered an error.
            TypeError, ValueError: a bad argument; the message names it (``limit`` is an ``int >= 1``).
            RuntimeError: the locker is closed or bound to another event loop.
        """
        ...

    def semaphore(
        self,
        name: str,
        limit: int,
        *,
        ttl: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[Lock]:
        """Hold a permit of the semaphore ``name`` for the duration of an ``async with`` block.

        [`lock`][distlock_async.Locker.lock] for permits (see
        [`obtain_permit`][distlock_async.Locker.obtain_permit]): refreshed in the background, released on
        exit; if the permit is lost, the body is cancelled and the block raises
        [`LockLostError`][distlock_async.LockLostError].
        """
        ...

    def election(self, name: str) -> Election:
        """The election ``name``: campaign, read or follow its leader. No I/O.

        An election and a lock or semaphore of the same name never interfere.

        Raises:
            TypeError, ValueError: a bad name; the message names it.
        """
        ...

    async def inspect(self, key: str) -> KeyState:
        """What the server knows about ``key``, held by anyone or free; it obtains nothing.

        Raises:
            BackendError: the server could not be reached or answered an error.
            TypeError, ValueError: a bad key; the message names it.
            RuntimeError: the locker is closed or bound to another event loop.
            NotImplementedError: the backend cannot inspect keys.
        """
        ...

    async def inspect_semaphore(self, name: str) -> SemaphoreState:
        """What the server knows about the semaphore ``name``: its permits held, by whom, its waiters.

        It obtains nothing, and reads in one round trip. On etcd a caller counts as holding from the moment
        fewer than its own ``limit`` permits are ahead of it in the queue (so a waiter that a release has
        just let in counts as holding before its next attempt takes the permit); elsewhere from its grant.

        Raises:
            BackendError: the server could not be reached or answered an error.
            TypeError, ValueError: a bad name; the message names it.
            RuntimeError: the locker is closed or bound to another event loop.
            NotImplementedError: the backend has no semaphores.
        """
        ...

    async def aclose(self) -> None:
        """Close the locker: stop every refresher it started and close a client it created itself.

        Held locks are not released (they expire); the body of a running ``lock()`` block is cancelled
        and raises [`LockLostError`][distlock_async.LockLostError]. Idempotent. Afterwards ``obtain`` and ``lock``
        raise `RuntimeError`.
        """
        ...

    async def __aenter__(self: _L) -> _L: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


for _cls in (Election, KeyState, Leader, Lock, Locker, Observation, Refresher, SemaphoreState, Term):
    _cls.__module__ = "distlock_async"
del _cls
