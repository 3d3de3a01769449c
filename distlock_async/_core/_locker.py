"""The locker every backend shares: argument checks, the retry loop with wake on release, cleanup of an
obtain, ``lock()`` and ``aclose()``. A backend subclasses ``LockerBase`` with its driver."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

import anyio

from .._errors import LockLostError, LockNotHeldError, NotObtainedError
from .._options import Options, default_holder
from .._protocols import KeyState, SemaphoreState
from .._validate import check_count, check_key, check_limit, check_seconds, check_timeout
from . import _metrics
from ._aio import finish, reraise_swallowed_cancel
from ._coordination import ElectionHandle, L, Space
from ._driver import Contender, D, Driver, Elections, Granted, H, Inspector, Semaphores
from ._lock import Binding, HeldLock, show_as

logger = logging.getLogger("distlock_async")

_Self = TypeVar("_Self", bound="LockerBase[Any, Any]")

#: The shortest sleep before retrying when the holder's lock is about to expire: keeps a waiter from
#: spinning on a lock that the server reports as 0 ms from expiry.
_MIN_EXPIRY_WAIT = 0.001


class _Settings:
    """One obtain's settings: the locker's options with the call's keywords applied, checked."""

    __slots__ = ("interval", "lifetime", "max_retries", "retry_delay", "timeout", "ttl")

    def __init__(
        self,
        options: Options,
        driver: Driver[H],
        ttl: object,
        max_retries: object,
        retry_delay: object,
        timeout: object,
    ) -> None:
        if max_retries is not None and timeout is not None:
            raise TypeError(
                "max_retries and timeout cannot be given together: max_retries counts retries, timeout is "
                "seconds of trying; pass one of them"
            )
        self.ttl = options.ttl if ttl is None else check_seconds("ttl", ttl)
        self.max_retries = options.max_retries if max_retries is None else check_count("max_retries", max_retries)
        self.retry_delay = (
            options.retry_delay if retry_delay is None else check_seconds("retry_delay", retry_delay, allow_zero=True)
        )
        #: Seconds of trying, instead of counting retries (``math.inf``: until obtained or cancelled).
        self.timeout = None if timeout is None else check_timeout(timeout)
        # Refreshes keep up with how long the server really keeps the lock (an etcd lease may differ).
        self.lifetime = driver.lifetime(self.ttl)
        self.interval = options.interval_for(self.lifetime)


class LockerBase(Generic[H, D]):
    """What every backend's locker does; the contract is on the ``distlock_async.Locker`` protocol. A
    backend subclasses it with its handle type ``H`` and its driver's type ``D`` (so that its own methods
    see its driver's own attributes)."""

    #: The ``distlock.backend`` attribute of the locker's metrics: ``memory``, ``redis`` or ``etcd``.
    _backend: ClassVar[str] = "unknown"

    def __init__(self, driver: D, options: Options | None) -> None:
        if options is not None and not isinstance(options, Options):
            raise TypeError(f"options must be distlock_async.Options or None, not {type(options).__name__}")
        self._driver = driver
        self._options = options or Options()
        self._binding = Binding(driver, type(self).__name__, self._backend)
        self._contexts: set[LockContext[Any]] = set()
        self._locks: Space[H, HeldLock[H]] = Space(driver, _metrics.LOCK, HeldLock)

    @property
    def options(self) -> Options:
        """The locker's default [`Options`][distlock_async.Options]."""
        return self._options

    def _check_usable(self) -> None:
        self._binding.check_usable()

    async def obtain(
        self,
        key: str,
        *,
        ttl: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
    ) -> HeldLock[H]:
        check_key(key)
        settings = _Settings(self._options, self._driver, ttl, max_retries, retry_delay, timeout)
        self._check_usable()
        return await self._obtain(key, settings, self._locks)

    def lock(
        self,
        key: str,
        *,
        ttl: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
    ) -> LockContext[HeldLock[H]]:
        check_key(key)
        return self._context(
            key, self._locks, ttl=ttl, max_retries=max_retries, retry_delay=retry_delay, timeout=timeout
        )

    async def obtain_permit(
        self,
        name: str,
        limit: int,
        *,
        ttl: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
    ) -> HeldLock[H]:
        check_key(name, "name")
        space = self._permits(check_limit(limit))
        settings = _Settings(self._options, space.driver, ttl, max_retries, retry_delay, timeout)
        self._check_usable()
        return await self._obtain(name, settings, space)

    def semaphore(
        self,
        name: str,
        limit: int,
        *,
        ttl: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
    ) -> LockContext[HeldLock[H]]:
        check_key(name, "name")
        space = self._permits(check_limit(limit))
        return self._context(name, space, ttl=ttl, max_retries=max_retries, retry_delay=retry_delay, timeout=timeout)

    def _context(
        self,
        key: str,
        space: Space[H, L],
        *,
        ttl: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
    ) -> LockContext[L]:
        settings = _Settings(self._options, space.driver, ttl, max_retries, retry_delay, timeout)
        return LockContext(self, key, partial(self._obtain, key, settings, space))

    def election(self, name: str) -> ElectionHandle[H]:
        check_key(name, "name")
        return ElectionHandle(self, self._elections(), name)

    def _semaphores(self) -> Semaphores[H]:
        driver: Driver[H] = self._driver
        if not isinstance(driver, Semaphores):
            raise NotImplementedError(f"{type(self).__name__} has no semaphores")
        return driver

    def _permits(self, limit: int) -> Space[H, HeldLock[H]]:
        return Space(self._semaphores().permits(limit), _metrics.PERMIT, HeldLock)

    def _elections(self) -> Elections[H]:
        driver: Driver[H] = self._driver
        if not isinstance(driver, Elections):
            raise NotImplementedError(f"{type(self).__name__} has no elections")
        return driver

    async def inspect(self, key: str) -> KeyState:
        check_key(key)
        self._check_usable()
        driver: Driver[H] = self._driver
        if not isinstance(driver, Inspector):
            raise NotImplementedError(f"{type(self).__name__} cannot inspect a key it does not hold")
        return await driver.inspect(key)

    async def inspect_semaphore(self, name: str) -> SemaphoreState:
        check_key(name, "name")
        self._check_usable()
        return await self._semaphores().inspect_permits(name)

    async def aclose(self) -> None:
        if self._binding.closed:
            await asyncio.sleep(0)
            return
        self._binding.closed = True
        for context in list(self._contexts):
            if context._lock is not None:
                context._lock._end(lost=False)  # the application let go of it: closed, not lost
            context._lose(RuntimeError(f"{type(self).__name__} was closed while the lock was held"))
        refreshers = list(self._binding.refreshers)
        for refresher in refreshers:
            await refresher.stop()
        for observation in list(self._binding.observations):
            await observation.aclose()
        await self._driver.aclose()

    async def __aenter__(self: _Self) -> _Self:
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _obtain(self, key: str, settings: _Settings, space: Space[H, L]) -> L:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            lock = await self._obtain_once(key, settings, space)
        except BaseException as exc:
            _metrics.obtain_ended(self._backend, space.kind, _outcome(exc), loop.time() - started)
            raise
        _metrics.obtain_ended(self._backend, space.kind, _metrics.ACQUIRED, loop.time() - started)
        return lock

    async def _obtain_once(self, key: str, settings: _Settings, space: Space[H, L]) -> L:
        driver = space.driver
        token = secrets.token_hex(16)
        holder = self._options.holder or default_holder()  # read now: a forked child names its own pid
        contender = driver.contender(key, token, settings.ttl, holder)
        granted: Granted[H] | None = None
        try:
            granted, sent = await self._contend(key, contender, settings, space.kind)
        finally:
            try:
                await finish(
                    partial(contender.close, granted),
                    timeout=driver.cleanup_timeout,
                    what=f"cleanup after obtaining {space.kind} {key!r}",
                )
            except BaseException:
                if granted is not None:
                    handle = granted.handle
                    await finish(
                        partial(driver.release, key, token, handle),
                        timeout=driver.cleanup_timeout,
                        what=f"release of {space.kind} {key!r} after a failed obtain",
                    )
                raise
        return space.make(
            self._binding,
            key,
            token,
            holder,
            granted.fencing_token,
            granted.handle,
            settings.ttl,
            settings.interval,
            space.kind,
            driver,
            min(sent + settings.lifetime, granted.valid_until),
            settings.lifetime,
        )

    async def _contend(
        self, key: str, contender: Contender[H], settings: _Settings, kind: str
    ) -> tuple[Granted[H], float]:
        """The grant, and when the attempt that got it was sent: the server's TTL runs from a moment no
        earlier than that."""
        loop = asyncio.get_running_loop()
        # The budget is either a number of retries or a deadline (``timeout``); wake-ups spend neither.
        retries = settings.max_retries
        deadline = None if settings.timeout is None else loop.time() + settings.timeout
        next_slot = loop.time() + settings.retry_delay
        while True:
            sent = loop.time()
            outcome = await contender.attempt()
            if isinstance(outcome, Granted):
                return outcome, sent
            reraise_swallowed_cancel()
            now = loop.time()
            spent = retries == 0 if deadline is None else now >= deadline
            if spent:
                raise NotObtainedError(key)
            delay = next_slot - now
            if deadline is not None:
                delay = min(delay, deadline - now)  # one last attempt at the deadline
            if outcome.holder_ttl is not None:
                delay = min(delay, max(outcome.holder_ttl, _MIN_EXPIRY_WAIT))
            logger.debug("%s %r is held by another owner; waiting up to %.3f s", kind, key, max(delay, 0.0))
            if delay > 0:
                await contender.wait(delay)
            else:
                await asyncio.sleep(0)
            reraise_swallowed_cancel()
            now = loop.time()
            if now >= next_slot:
                retries -= 1
                next_slot = now + settings.retry_delay


class LockContext(Generic[L]):
    """``async with locker.lock(key) as lock:`` -- see ``distlock_async.Locker.lock``; also the context
    manager of ``semaphore()`` and ``campaign()``, which obtain a permit or a term instead."""

    __slots__ = ("_key", "_lock", "_locker", "_loss", "_obtain", "_scope")

    def __init__(self, locker: LockerBase[Any, Any], key: str, obtain: Callable[[], Awaitable[L]]) -> None:
        self._locker = locker
        self._key = key
        self._obtain = obtain
        self._lock: L | None = None
        self._scope: anyio.CancelScope | None = None
        self._loss: BaseException | None = None

    async def __aenter__(self) -> L:
        if self._lock is not None:
            raise RuntimeError("a locker.lock() context manager cannot be entered twice")
        locker = self._locker
        locker._check_usable()
        lock = self._lock = await self._obtain()
        lock.start_refresh(self._lose)
        self._scope = anyio.CancelScope()
        self._scope.__enter__()
        locker._contexts.add(self)
        return lock

    def _lose(self, exc: BaseException) -> None:
        if self._loss is None:
            self._loss = exc
            if self._scope is not None:
                self._scope.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._lock is not None
        assert self._scope is not None
        self._locker._contexts.discard(self)
        swallowed = self._scope.__exit__(exc_type, exc, tb)
        if self._loss is not None and (exc is None or swallowed or not isinstance(exc, asyncio.CancelledError)):
            self._lock._end(lost=True)  # whatever the release below finds: the body lost the lock
            await self._release_quietly()
            raise LockLostError(self._key) from self._loss
        if exc is not None and not swallowed:
            await self._release_quietly()
            return False
        if self._lock._released:
            await self._lock.release()  # the body released it itself: LockNotHeldError, as SPEC says
        try:
            await self._lock.release()
        except LockNotHeldError as not_held:
            # Not released by the body, yet no longer ours: it was lost while the body ran, before the
            # refresher noticed (the body finished first, say right after a long pause of the process).
            raise LockLostError(self._key) from not_held
        return bool(swallowed)

    async def _release_quietly(self) -> None:
        assert self._lock is not None
        try:
            await self._lock.release()
        except Exception as exc:
            logger.debug("release of lock %r on the way out failed: %r", self._key, exc)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, NotObtainedError):
        return _metrics.NOT_OBTAINED
    if isinstance(exc, Exception):
        return _metrics.ERROR
    return _metrics.CANCELLED  # asyncio.CancelledError, or an interrupt


show_as("Locker", LockerBase)
