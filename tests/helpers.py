"""Test utilities: the ``Backend`` under test, and waiting on the library's log records instead of sleeping."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

from distlock_async import Lock, Locker, MemoryLocker, Options
from distlock_async.testing.servers import ServerMissing, running


class LogCount(logging.Handler):
    """Counts the ``distlock_async`` log records containing ``needle`` (see :func:`log_count`), only those
    logged by ``task`` if one is given."""

    def __init__(self, needle: str, task: asyncio.Future[Any] | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.task = task
        self.count = 0
        #: Set at each such record; :meth:`until` clears it.
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        # A handler runs in the task that logs: a record of another task (an earlier waiter logging again
        # after it subscribed, say) does not count.
        if self.task is not None and asyncio.current_task() is not self.task:
            return
        if self.needle in record.getMessage():
            self.count += 1
            self.changed.set()

    async def until(self, n: int, within: float = 20.0) -> None:
        """Wait (bounded) until ``n`` such records have been logged in all."""
        with anyio.fail_after(within):
            while self.count < n:
                self.changed.clear()
                await self.changed.wait()


@contextmanager
def log_count(needle: str, task: asyncio.Future[Any] | None = None) -> Iterator[LogCount]:
    """A count of the ``distlock_async`` log records containing ``needle`` (logged by ``task``, if given),
    from now to the end of the block."""
    logger = logging.getLogger("distlock_async")
    handler = LogCount(needle, task)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@contextmanager
def log_event(needle: str) -> Iterator[asyncio.Event]:
    """An event set when the ``distlock_async`` logger emits a record containing ``needle``."""
    with log_count(needle) as count:
        yield count.changed


#: What the library logs when an attempt finds the name taken and the caller waits for it.
WAITING = "is held by another owner; waiting"

_T = TypeVar("_T")


async def waiting(work: Awaitable[_T], within: float = 20.0) -> asyncio.Future[_T]:
    """``work`` started as a task, once *it* has logged that it waits (see :data:`WAITING`): a record of
    another waiter does not count, so waiters started one after another queue in that order."""
    task = asyncio.ensure_future(work)  # runs at the first await below, once the count is listening
    with log_count(WAITING, task) as queued, anyio.fail_after(within):
        await queued.until(1)
    return task


async def cancel(task: asyncio.Future[Any]) -> bool:
    """Cancel ``task`` and wait until it has ended: whether the cancellation landed. If it did not (the
    task had finished first), its result is in ``task``; an error it raised is raised here."""
    task.cancel()
    await asyncio.wait([task])
    if task.cancelled():
        return True
    task.result()
    return False


@dataclass
class Backend:
    """One backend under test: makes lockers that contend with each other on the same server or store."""

    name: str
    #: A TTL short enough for a test to wait out, long enough that a busy machine does not expire it early.
    short_ttl: float
    #: The smallest change of ``lock.ttl()`` the backend can show (etcd counts whole seconds).
    resolution: float
    factory: Callable[[Options | None], Locker]
    #: Deletes a key's lock behind its holder's back, as an operator or a data loss would.
    steal: Callable[[str], Awaitable[None]]
    lockers: list[Locker] = field(default_factory=list)

    def locker(self, options: Options | None = None) -> Locker:
        locker = self.factory(options)
        self.lockers.append(locker)
        return locker

    async def aclose(self) -> None:
        for locker in self.lockers:
            await locker.aclose()


class _BareDriver:
    cleanup_timeout = 1.0


def driverless_locker() -> MemoryLocker:
    """A locker whose driver has none of the optional capabilities (inspect, semaphores, elections): what
    a third-party driver that implements only locks looks like to the locker."""
    locker = MemoryLocker()
    locker._driver = _BareDriver()  # type: ignore[assignment]
    return locker


#: What a cancellation test interrupts: see :func:`lock_operation`.
OPERATIONS = ("obtain", "lock", "refresh", "release")


async def lock_operation(locker: Locker, key: str, what: str) -> None:
    """One of :data:`OPERATIONS` on ``key``, for a test to cancel at a random point."""
    if what == "lock":
        async with locker.lock(key):
            await asyncio.sleep(0.001)
        return
    async with await locker.obtain(key) as lock:
        if what == "refresh":
            await lock.refresh()
        if what == "release":
            await lock.release()


async def run_concurrently(worker: Callable[[int], Coroutine[Any, Any, None]], count: int, within: float = 60) -> None:
    """``worker(0)`` to ``worker(count - 1)`` as concurrent tasks, every one finished within ``within`` seconds."""
    with anyio.fail_after(within):
        async with anyio.create_task_group() as tg:
            for n in range(count):
                tg.start_soon(worker, n)


@dataclass
class Contention:
    """What :func:`contend` saw."""

    #: The most tasks that held what they obtained at one instant.
    most_inside: int
    #: The fencing tokens of every grant, in the order they were granted.
    tokens: list[int]


async def contend(obtain: Callable[[int], Awaitable[Lock]], tasks: int, rounds: int) -> Contention:
    """``tasks`` tasks that each, ``rounds`` times, obtain a lock or permit (task ``n`` by ``obtain(n)``),
    stay inside for three scheduler turns, so that others can run meanwhile, and release it."""
    inside: set[int] = set()
    seen = Contention(0, [])

    async def worker(n: int) -> None:
        for _ in range(rounds):
            held = await obtain(n)
            inside.add(n)
            seen.most_inside = max(seen.most_inside, len(inside))
            seen.tokens.append(held.fencing_token)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            inside.discard(n)
            await held.release()

    await run_concurrently(worker, tasks)
    return seen


def run_user_suite(directory: Path, name: str, source: str) -> str:
    """Run ``source`` as the test module ``name`` of a user's pytest-asyncio suite (strict mode, the
    plugin found through its entry point, warnings as errors) in a subprocess; its output, once every
    test in it passed."""
    (directory / name).write_text(source)
    (directory / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", str(directory)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tests = len(re.findall(r"^async def test_|^def test_", source, re.MULTILINE))
    assert f"{tests} passed" in result.stdout, result.stdout
    return result.stdout


_S = TypeVar("_S", bound=Any)


def running_or_skip(server: _S) -> Iterator[_S]:
    """``running(server)``, the test skipped if the server cannot run here: a Redis built without TLS
    (the PyPI packages' servers) has no ``TLSRedisServer``."""
    try:
        yield from running(server)
    except ServerMissing as exc:
        pytest.skip(str(exc))
