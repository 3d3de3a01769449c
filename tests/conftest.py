"""Test harness: the ``backend`` fixture every contract test runs over, and the hygiene checks.

Every async test runs on asyncio in debug mode (anyio's pytest plugin), with warnings as errors, and
fails if it leaves a task pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

import distlock_async
from distlock_async import MemoryLocker, MemoryStore

from .helpers import Backend
from .servers import RedisServer


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "asyncio", {"debug": True}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.fixturenames.insert(0, "_no_pending_tasks")  # type: ignore[attr-defined]


@pytest.fixture
async def _no_pending_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    for _ in range(10):
        await asyncio.sleep(0)
    left = {
        task
        for task in asyncio.all_tasks() - before
        # anyio's runner drives each fixture and test from a task of its own
        if task is not asyncio.current_task() and "_call_in_runner_task" not in repr(task.get_coro())
    }
    assert not left, f"tasks left pending: {left}"


# --- servers, started once per test session ---------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


# --- the backends of the contract suite ---------------------------------------------------------------
# Each factory yields a Backend whose lockers contend with each other, isolated from other tests
# (a fresh store, or a fresh namespace on a shared server), then checks what it leaves behind.


async def _memory(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    store = MemoryStore()

    async def steal(key: str) -> None:
        await asyncio.sleep(0)
        del store._held[key]

    yield Backend(
        "memory",
        short_ttl=0.2,
        resolution=0.001,
        factory=lambda options: MemoryLocker(options, store=store),
        steal=steal,
    )
    assert not store._waiters, "a waiter's subscription outlived its obtain"


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], AsyncIterator[Backend]]] = {
    "memory": _memory,
}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    gen = BACKENDS[request.param](request)
    b = await gen.__anext__()
    try:
        yield b
    finally:
        await b.aclose()
        async for _ in gen:
            pass


@pytest.fixture
def caplog_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level("DEBUG", logger=distlock_async.__name__)
    return caplog
