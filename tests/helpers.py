"""Test utilities: the ``Backend`` under test, and waiting on the library's log records instead of sleeping."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from distlock_async import Locker, Options
from distlock_async.testing.servers import ServerMissing, running


class _Watch(logging.Handler):
    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.event.set()


@contextmanager
def log_event(needle: str) -> Iterator[asyncio.Event]:
    """An event set when the ``distlock_async`` logger emits a record containing ``needle``."""
    logger = logging.getLogger("distlock_async")
    handler = _Watch(needle)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler.event
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


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
