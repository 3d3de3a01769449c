"""``locker.inspect(key)``, behind ``distlock status``, over every backend."""

from __future__ import annotations

import asyncio
import os
import socket

import anyio
import pytest

from distlock_async import KeyState, NotObtainedError, Options

from .helpers import Backend, driverless_locker, log_event

pytestmark = pytest.mark.anyio

#: Bounds every wait of a test: a hang fails the test instead of the whole run.
LIMIT = 20.0


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
    locker = driverless_locker()
    with pytest.raises(NotImplementedError, match="MemoryLocker cannot inspect"):
        await locker.inspect("k")


# --- who holds it: Options(holder=...), Lock.holder, KeyState.holder ---------------------------------

#: Labels with spaces and a multi-byte character: stored after the token, they must come back whole.
FIRST = "worker 1 on rack ü"
SECOND = "worker 2: the waiter"


async def test_inspect_names_the_holder_then_the_waiter_it_passed_the_lock_to(backend: Backend) -> None:
    first = backend.locker(Options(holder=FIRST))
    second = backend.locker(Options(holder=SECOND))
    assert (await inspect(backend, "k")).holder is None  # free: nobody to name

    lock = await first.obtain("k", ttl=10)
    assert lock.holder == FIRST
    state = await inspect(backend, "k")
    assert (state.held, state.holder) == (True, FIRST)

    # The second locker queues behind the first (its retry delay is far off: only the release brings it
    # the lock); on Redis the release hands the lock to it on the server, label and all.
    with log_event("is held by another owner; waiting") as queued, anyio.fail_after(LIMIT):
        waiter = asyncio.ensure_future(second.obtain("k", ttl=10, max_retries=1, retry_delay=60))
        await queued.wait()
    assert (await inspect(backend, "k")).holder == FIRST, "a waiter is not the holder"
    await lock.release()
    with anyio.fail_after(LIMIT):
        taken = await waiter
    assert taken.holder == SECOND
    state = await inspect(backend, "k")
    assert (state.held, state.holder, state.fencing_counter) == (True, SECOND, taken.fencing_token)

    await taken.release()
    state = await inspect(backend, "k")
    assert (state.held, state.holder) == (False, None)


async def test_the_holder_label_is_informative_only(backend: Backend) -> None:
    """Two lockers with one label still exclude each other: ownership is the token's."""
    same = Options(holder=FIRST)
    lock = await backend.locker(same).obtain("k")
    with pytest.raises(NotObtainedError):
        await backend.locker(same).obtain("k", max_retries=0)
    assert (await inspect(backend, "k")).holder == FIRST
    await lock.release()


async def test_the_default_holder_is_hostname_and_pid_read_at_each_obtain(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    locker = backend.locker()
    lock = await locker.obtain("k")
    assert lock.holder == f"{socket.gethostname()}:{os.getpid()}"
    assert (await inspect(backend, "k")).holder == lock.holder
    await lock.release()

    # As in a child forked after the locker was made: the label names the process that obtains.
    monkeypatch.setattr(os, "getpid", lambda: 424242)
    lock = await locker.obtain("k")
    assert lock.holder == f"{socket.gethostname()}:424242"
    assert (await inspect(backend, "k")).holder == lock.holder
    await lock.release()


async def test_a_label_of_256_bytes_is_stored_whole(backend: Backend) -> None:
    label = " " + "ü" * 127 + " "  # 256 bytes in UTF-8, with spaces where a parser might cut or strip
    lock = await backend.locker(Options(holder=label)).obtain("k")
    assert (await inspect(backend, "k")).holder == label
    await lock.release()
