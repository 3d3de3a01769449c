"""``locker.inspect(key)``, behind ``distlock status``, over every backend."""

from __future__ import annotations

import asyncio

import pytest

from distlock_async import KeyState, MemoryLocker

from .helpers import Backend

pytestmark = pytest.mark.anyio


async def inspect(backend: Backend, key: str) -> KeyState:
    return await backend.locker().inspect(key)


async def test_inspect_reports_free_held_and_a_rising_fencing_counter(backend: Backend) -> None:
    state = await inspect(backend, "k")
    assert not state.held
    assert state.ttl is None
    before = state.fencing_counter or 0

    lock = await backend.locker().obtain("k", ttl=10)
    state = await inspect(backend, "k")
    assert state.held
    assert state.ttl is not None
    assert 0 < state.ttl <= 10
    assert state.fencing_counter == lock.fencing_token
    assert lock.fencing_token > before
    await lock.release()

    state = await inspect(backend, "k")
    assert not state.held
    assert state.fencing_counter is not None
    assert state.fencing_counter >= lock.fencing_token
    again = await backend.locker().obtain("k")
    assert again.fencing_token > state.fencing_counter
    await again.release()


async def test_inspect_sees_an_expired_lock_as_free(backend: Backend) -> None:
    lock = await backend.locker().obtain("k", ttl=backend.short_ttl)
    await asyncio.sleep(backend.short_ttl + backend.resolution + 0.05)  # expiry is the subject here
    assert not (await inspect(backend, "k")).held
    assert await lock.ttl() == 0.0


async def test_a_driver_without_inspect_says_so() -> None:
    locker = MemoryLocker()

    class Bare:
        cleanup_timeout = 1.0

    locker._driver = Bare()  # type: ignore[assignment]
    with pytest.raises(NotImplementedError, match="MemoryLocker cannot inspect"):
        await locker.inspect("k")
