"""The behavioural contract of SPEC.md, run against every backend through the ``backend`` fixture.

Sections follow SPEC: Options (per-call overrides and the retry budget), Locker, Lock, Safety rules.
Each test's name says which bullet it checks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import sys
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from distlock_async import (
    Lock,
    Locker,
    LockLostError,
    LockNotHeldError,
    NotObtainedError,
    Options,
    Refresher,
)

from .helpers import WAITING, Backend, cancel, contend, log_count, log_event, waiting

pytestmark = pytest.mark.anyio

#: Bounds every wait of a test: a hang fails the test instead of the whole run.
LIMIT = 20.0


async def assert_free(backend: Backend, key: str) -> None:
    """The key is obtainable at once by a fresh locker (so nobody holds it)."""
    probe = backend.locker()
    lock = await probe.obtain(key, max_retries=0)
    await lock.release()


async def assert_held(backend: Backend, key: str) -> None:
    probe = backend.locker()
    with pytest.raises(NotObtainedError):
        await probe.obtain(key, max_retries=0)


# --- Locker: obtain ---------------------------------------------------------------------------------


async def test_obtain_returns_a_held_lock_with_key_token_and_fencing_token(backend: Backend) -> None:
    locker = backend.locker()
    assert isinstance(locker, Locker)
    lock = await locker.obtain("k")
    assert isinstance(lock, Lock)
    assert lock.key == "k"
    assert isinstance(lock.token, str)
    assert len(lock.token) >= 32  # >= 128 random bits as hex
    assert isinstance(lock.fencing_token, int)
    assert lock.fencing_token >= 1
    await assert_held(backend, "k")
    await lock.release()


async def test_token_is_unique_per_obtain(backend: Backend) -> None:
    locker = backend.locker()
    tokens = set()
    for _ in range(20):
        lock = await locker.obtain("k")
        tokens.add(lock.token)
        await lock.release()
    assert len(tokens) == 20


async def test_key_accepts_any_characters(backend: Backend) -> None:
    locker = backend.locker()
    keys = ["a", "a/x", "a*b?[c]", "{braces}", "naïve 🔒", "new\nline", "tab\tnul\0", "x" * 1024]
    locks = [await locker.obtain(key) for key in keys]
    assert len({lock.fencing_token for lock in locks}) == len(keys)
    for lock in locks:
        await lock.release()


async def test_keys_that_share_a_prefix_do_not_collide(backend: Backend) -> None:
    locker = backend.locker()
    first = await locker.obtain("a")
    others = [await locker.obtain(key, max_retries=0) for key in ("ab", "a/x", "a/", "A")]
    for lock in [first, *others]:
        await lock.release()


async def test_obtain_raises_not_obtained_naming_the_key_when_the_budget_is_spent(backend: Backend) -> None:
    holder = await backend.locker().obtain("busy-key")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with anyio.fail_after(LIMIT), pytest.raises(NotObtainedError, match="busy-key") as info:
        await backend.locker().obtain("busy-key", max_retries=3, retry_delay=0.05)
    # Three retries spaced 0.05 s apart: the budget was used, not skipped.
    assert loop.time() - started >= 3 * 0.05
    assert info.value.key == "busy-key"
    await holder.release()


@pytest.mark.parametrize("budget", [{"max_retries": 0}, {"timeout": 0}], ids=["max_retries", "timeout"])
async def test_a_budget_of_0_tries_once_and_fails_at_once(backend: Backend, budget: dict[str, int]) -> None:
    """``max_retries=0``, and ``timeout=0`` likewise: one attempt, then ``NotObtainedError``, no wait."""
    holder = await backend.locker().obtain("k")
    # With a 60 s retry_delay any wait would trip the 20 s limit.
    with anyio.fail_after(LIMIT), pytest.raises(NotObtainedError):
        await backend.locker().obtain("k", retry_delay=60, **budget)
    await holder.release()


async def test_obtain_succeeds_when_the_holder_releases_within_the_budget(backend: Backend) -> None:
    holder = await backend.locker().obtain("k")
    waiter = backend.locker(Options(max_retries=1000, retry_delay=0.01))

    async def release_soon() -> None:
        await anyio.sleep(0.05)
        await holder.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_soon)
        with anyio.fail_after(LIMIT):
            lock = await waiter.obtain("k")
    assert lock.fencing_token > holder.fencing_token
    await lock.release()


@pytest.mark.parametrize("budget", [{}, {"timeout": 600}, {"timeout": math.inf}], ids=["retries", "timeout", "inf"])
async def test_wake_on_release_obtains_well_before_retry_delay(backend: Backend, budget: dict[str, Any]) -> None:
    holder = await backend.locker().obtain("k")
    waiter = backend.locker(Options(max_retries=1, retry_delay=60))
    result: list[Lock] = []

    async def wait_for_it() -> None:
        result.append(await waiter.obtain("k", **budget))

    # The limit is far below retry_delay: only the release can wake the waiter in time.
    with log_event("is held by another owner; waiting") as waiting, anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_it)
            await waiting.wait()  # the waiter's first attempt failed; it is asleep for up to 60 s
            await holder.release()
    assert result[0].fencing_token > holder.fencing_token
    await result[0].release()


async def test_a_waiter_notices_expiry_without_a_release(backend: Backend) -> None:
    holder = await backend.locker().obtain("k", ttl=backend.short_ttl)
    # retry_delay far beyond the TTL: only the holder's remaining TTL can wake the waiter in time.
    with anyio.fail_after(LIMIT):
        lock = await backend.locker().obtain("k", max_retries=1, retry_delay=60)
    assert lock.fencing_token > holder.fencing_token
    await lock.release()


async def test_waiters_of_several_lockers_are_served_in_the_order_they_queued(backend: Backend) -> None:
    """First come, first served across lockers: five waiters, each on a locker of its own, queue one
    after another (each starts once the one before has found the key taken); on release they get the
    lock in that order. Asserted by order, not timing: each waiter has one attempt per minute, so only
    wake-ups move them, and each notes its turn while it holds the lock."""
    holder = await backend.locker().obtain("fifo")
    served: list[int] = []

    async def wait(n: int) -> None:
        lock = await backend.locker().obtain("fifo", max_retries=2, retry_delay=60)
        served.append(n)
        await lock.release()

    tasks = [await waiting(wait(n)) for n in range(5)]  # one after another
    await holder.release()
    with anyio.fail_after(LIMIT):
        await asyncio.gather(*tasks)
    assert served == [0, 1, 2, 3, 4]


async def test_per_call_ttl_overrides_the_options(backend: Backend) -> None:
    locker = backend.locker(Options(ttl=60))
    lock = await locker.obtain("k", ttl=5)
    remaining = await lock.ttl()
    assert 0 < remaining <= 5
    await lock.release()


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": -1}, ValueError, "ttl"),
        ({"ttl": float("nan")}, ValueError, "ttl"),
        ({"ttl": float("inf")}, ValueError, "ttl"),
        ({"ttl": True}, TypeError, "ttl"),
        ({"ttl": "1"}, TypeError, "ttl"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": 1.0}, TypeError, "max_retries"),
        ({"max_retries": False}, TypeError, "max_retries"),
        ({"retry_delay": -0.1}, ValueError, "retry_delay"),
        ({"retry_delay": float("nan")}, ValueError, "retry_delay"),
        ({"retry_delay": None, "ttl": 1e12}, ValueError, "ttl"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": -math.inf}, ValueError, "timeout"),
        ({"timeout": 1e12}, ValueError, "timeout"),
        ({"timeout": "3"}, TypeError, "timeout"),
        ({"timeout": True}, TypeError, "timeout"),
        ({"timeout": 3, "max_retries": 1}, TypeError, "max_retries and timeout"),
        ({"timeout": math.inf, "max_retries": 0}, TypeError, "max_retries and timeout"),
    ],
)
async def test_bad_per_call_arguments_raise_naming_the_argument(
    backend: Backend, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    locker = backend.locker()
    with pytest.raises(error, match=name):
        await locker.obtain("k", **kwargs)
    with pytest.raises(error, match=name):
        locker.lock("k", **kwargs)


# --- Waiting in seconds: the timeout keyword ------------------------------------------------------------


@pytest.mark.parametrize("how", ["obtain", "lock"])
async def test_a_timeout_that_runs_out_raises_not_obtained_after_about_that_long(backend: Backend, how: str) -> None:
    holder = await backend.locker().obtain("busy-key")
    # One retry 0.05 s after the first attempt is all the options allow: only the timeout keeps it trying.
    waiter = backend.locker(Options(max_retries=1, retry_delay=0.05))
    timeout = 1.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    with anyio.fail_after(LIMIT), pytest.raises(NotObtainedError, match="busy-key"):
        if how == "obtain":
            await waiter.obtain("busy-key", timeout=timeout)
        else:
            async with waiter.lock("busy-key", timeout=timeout):
                pytest.fail("the body must not run")
    assert loop.time() - started >= 0.9 * timeout
    await holder.release()


# (``timeout=0``: see test_a_budget_of_0_tries_once_and_fails_at_once.)


@pytest.mark.parametrize("how", ["obtain", "lock"])
async def test_timeout_inf_waits_through_a_holder_that_releases_late(backend: Backend, how: str) -> None:
    holder = await backend.locker().obtain("k")
    # max_retries=0 in the options: without the timeout the waiter would give up after its first attempt.
    waiter = backend.locker(Options(max_retries=0, retry_delay=0.05))
    got: list[int] = []

    async def wait_for_it() -> None:
        if how == "obtain":
            lock = await waiter.obtain("k", timeout=math.inf)
            got.append(lock.fencing_token)
            await lock.release()
        else:
            async with waiter.lock("k", timeout=math.inf) as lock:
                got.append(lock.fencing_token)

    with log_count(WAITING) as polls, anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_it)
            await polls.until(5)  # it kept polling, well past what max_retries=0 allows
            assert not got
            await holder.release()
    assert got
    assert got[0] > holder.fencing_token


async def test_per_call_ttl_not_above_an_explicit_refresh_interval(backend: Backend) -> None:
    locker = backend.locker(Options(ttl=10, refresh_interval=2))
    with pytest.raises(ValueError, match="ttl"):
        await locker.obtain("k", ttl=1)


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("", ValueError),
        (None, TypeError),
        (b"bytes", TypeError),
        (42, TypeError),
        ("x" * 1025, ValueError),
        ("é" * 513, ValueError),  # 1026 bytes in UTF-8
        ("\ud800", ValueError),  # a lone surrogate has no UTF-8 form
    ],
)
async def test_bad_keys_raise_naming_the_key(backend: Backend, key: Any, error: type[Exception]) -> None:
    locker = backend.locker()
    with pytest.raises(error, match="key"):
        await locker.obtain(key)
    with pytest.raises(error, match="key"):
        locker.lock(key)


# --- Locker: lock() ---------------------------------------------------------------------------------


async def test_lock_holds_the_key_in_the_body_and_releases_on_exit(backend: Backend) -> None:
    locker = backend.locker()
    async with locker.lock("k") as lock:
        assert isinstance(lock, Lock)
        await assert_held(backend, "k")
    await assert_free(backend, "k")
    with pytest.raises(LockNotHeldError):
        await lock.release()


async def test_lock_refreshes_in_the_background_over_several_ttls(backend: Backend) -> None:
    locker = backend.locker(Options(ttl=backend.short_ttl))
    async with locker.lock("k") as lock:
        await anyio.sleep(4 * backend.short_ttl)
        assert await lock.ttl() > 0
        await assert_held(backend, "k")
    await assert_free(backend, "k")


async def test_lock_cancels_its_body_and_raises_lock_lost_when_the_lock_is_lost(backend: Backend) -> None:
    locker = backend.locker(Options(ttl=backend.short_ttl))
    reached_end = False
    body_cancelled = False
    with anyio.fail_after(LIMIT), pytest.raises(LockLostError, match="k") as info:
        async with locker.lock("k"):
            await backend.steal("k")
            try:
                await anyio.sleep_forever()
            except BaseException:
                body_cancelled = True
                raise
            reached_end = True
    assert body_cancelled
    assert not reached_end
    assert isinstance(info.value.__cause__, LockNotHeldError)


async def test_lock_lost_before_the_refresher_noticed_raises_lock_lost_on_exit(backend: Backend) -> None:
    # The body finishes before the refresher runs again (a stolen key, or a process paused past its TTL):
    # leaving the block finds the lock gone, which is a loss too, not a plain "not held".
    locker = backend.locker(Options(ttl=backend.short_ttl))
    with pytest.raises(LockLostError, match="k") as info:
        async with locker.lock("k"):
            await backend.steal("k")
    assert isinstance(info.value.__cause__, LockNotHeldError)
    await assert_free(backend, "k")


async def test_lock_body_that_released_the_lock_itself_gets_lock_not_held_on_exit(backend: Backend) -> None:
    locker = backend.locker()
    with pytest.raises(LockNotHeldError) as info:
        async with locker.lock("k") as lock:
            await lock.release()
    assert not isinstance(info.value, LockLostError)


async def test_lock_body_exception_propagates_and_the_lock_is_released(backend: Backend) -> None:
    locker = backend.locker()
    with pytest.raises(ZeroDivisionError):
        async with locker.lock("k"):
            1 / 0
    await assert_free(backend, "k")


async def test_lock_propagates_not_obtained(backend: Backend) -> None:
    holder = await backend.locker().obtain("k")
    with pytest.raises(NotObtainedError):
        async with backend.locker().lock("k", max_retries=0):
            pytest.fail("the body must not run")
    await holder.release()


async def test_lock_works_inside_an_anyio_task_group(backend: Backend) -> None:
    locker = backend.locker(Options(max_retries=1000, retry_delay=0.01))
    order: list[int] = []

    async def job(n: int) -> None:
        async with locker.lock("k"):
            order.append(n)
            await anyio.sleep(0.01)
            order.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(job, n)
    # Sections never interleave: each job's two entries are adjacent.
    assert sorted(order[0::2]) == list(range(4))
    assert order[0::2] == order[1::2]


async def test_lock_under_a_timeout_releases_and_raises_timeout(backend: Backend) -> None:
    locker = backend.locker()
    if sys.version_info >= (3, 11):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1), locker.lock("k"):
                await anyio.sleep_forever()
    with pytest.raises(TimeoutError), anyio.fail_after(0.1):
        async with locker.lock("k"):
            await anyio.sleep_forever()
    await assert_free(backend, "k")


async def test_lock_context_manager_cannot_be_entered_twice(backend: Backend) -> None:
    locker = backend.locker()
    context = locker.lock("k")
    async with context:
        pass
    with pytest.raises(RuntimeError, match="twice"):
        async with context:
            pass


# --- Locker: aclose() -------------------------------------------------------------------------------


async def test_aclose_is_idempotent_and_forbids_further_use(backend: Backend) -> None:
    locker = backend.locker()
    await locker.aclose()
    await locker.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await locker.obtain("k")
    with pytest.raises(RuntimeError, match="closed"):
        async with locker.lock("k"):
            pytest.fail("the body must not run")


async def test_async_with_locker_closes_it(backend: Backend) -> None:
    async with backend.locker() as locker:
        lock = await locker.obtain("k")
        await lock.release()
    with pytest.raises(RuntimeError, match="closed"):
        await locker.obtain("k")


async def test_aclose_stops_refreshers_and_leaves_locks_to_expire(backend: Backend) -> None:
    locker = backend.locker(Options(ttl=backend.short_ttl))
    lock = await locker.obtain("k")
    refresher = lock.start_refresh()
    await locker.aclose()
    assert not refresher.running
    # Not released: the key stays held until its TTL runs out, then it is free.
    await assert_held(backend, "k")
    with anyio.fail_after(LIMIT):
        lock2 = await backend.locker().obtain("k", max_retries=1, retry_delay=60)
    await lock2.release()


async def test_aclose_during_a_lock_body_cancels_it_with_lock_lost(backend: Backend) -> None:
    locker = backend.locker()
    entered = anyio.Event()
    raised: list[BaseException] = []

    async def body() -> None:
        try:
            async with locker.lock("k"):
                entered.set()
                await anyio.sleep_forever()
        except LockLostError as exc:
            raised.append(exc)

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(body)
            await entered.wait()
            await locker.aclose()
    assert len(raised) == 1
    assert isinstance(raised[0].__cause__, RuntimeError)


async def test_a_locker_is_bound_to_one_event_loop(backend: Backend) -> None:
    locker = backend.locker()
    lock = await locker.obtain("k")
    with pytest.raises(RuntimeError, match="event loop"):
        await anyio.to_thread.run_sync(asyncio.run, locker.obtain("other"))
    await lock.release()


# --- Lock -------------------------------------------------------------------------------------------


async def test_release_frees_the_key(backend: Backend) -> None:
    lock = await backend.locker().obtain("k")
    await lock.release()
    await assert_free(backend, "k")


async def test_second_release_raises_lock_not_held(backend: Backend) -> None:
    lock = await backend.locker().obtain("k")
    await lock.release()
    with pytest.raises(LockNotHeldError, match="k"):
        await lock.release()


async def test_release_of_an_expired_lock_raises_and_leaves_the_new_owner_alone(backend: Backend) -> None:
    old = await backend.locker().obtain("k", ttl=backend.short_ttl)
    with anyio.fail_after(LIMIT):
        new = await backend.locker().obtain("k", max_retries=1, retry_delay=60)
    with pytest.raises(LockNotHeldError):
        await old.release()
    with pytest.raises(LockNotHeldError):
        await old.refresh()
    assert await old.ttl() == 0.0
    assert await new.ttl() > 0
    await assert_held(backend, "k")
    await new.release()


async def test_release_completes_even_if_the_caller_is_cancelled(backend: Backend) -> None:
    for _ in range(10):
        lock = await backend.locker().obtain("k")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await lock.release()  # cancelled at its first await: the release must still happen
        assert scope.cancelled_caught
        await assert_free(backend, "k")


async def test_refresh_resets_the_remaining_time_to_the_ttl(backend: Backend) -> None:
    ttl = max(10.0, 5 * backend.resolution)
    lock = await backend.locker().obtain("k", ttl=ttl)
    await anyio.sleep(2 * backend.resolution + 0.01)
    before = await lock.ttl()
    await lock.refresh()
    after = await lock.ttl()
    assert before < after <= ttl
    await lock.release()


async def test_refresh_of_a_deleted_lock_raises_lock_not_held(backend: Backend) -> None:
    lock = await backend.locker().obtain("k")
    await backend.steal("k")
    with pytest.raises(LockNotHeldError):
        await lock.refresh()
    with pytest.raises(LockNotHeldError):
        await lock.release()


async def test_refresh_after_expiry_raises_lock_not_held(backend: Backend) -> None:
    lock = await backend.locker().obtain("k", ttl=backend.short_ttl)
    await anyio.sleep(backend.short_ttl + backend.resolution + 0.05)
    with pytest.raises(LockNotHeldError):
        await lock.refresh()
    await assert_free(backend, "k")


async def test_refresh_after_release_raises_lock_not_held(backend: Backend) -> None:
    lock = await backend.locker().obtain("k")
    await lock.release()
    with pytest.raises(LockNotHeldError):
        await lock.refresh()


async def test_ttl_reports_the_remaining_time_and_zero_once_gone(backend: Backend) -> None:
    lock = await backend.locker().obtain("k", ttl=30)
    remaining = await lock.ttl()
    assert 30 - 2 * backend.resolution - 5 < remaining <= 30
    await lock.release()
    assert await lock.ttl() == 0.0
    expired = await backend.locker().obtain("k", ttl=backend.short_ttl)
    await anyio.sleep(backend.short_ttl + backend.resolution + 0.05)
    assert await expired.ttl() == 0.0


async def test_async_with_lock_releases_on_exit(backend: Backend) -> None:
    lock = await backend.locker().obtain("k")
    async with lock as entered:
        assert entered is lock
    await assert_free(backend, "k")


async def test_async_with_lock_propagates_the_release_failure_after_a_clean_body(backend: Backend) -> None:
    lock = await backend.locker().obtain("k")
    with pytest.raises(LockNotHeldError):
        async with lock:
            await backend.steal("k")


async def test_async_with_lock_keeps_the_body_exception_and_logs_the_failed_release(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    lock = await backend.locker().obtain("k")
    with pytest.raises(KeyError):
        async with lock:
            await backend.steal("k")
            raise KeyError("body")
    assert any("release of lock 'k' failed" in r.getMessage() for r in caplog.records)


# --- Lock: start_refresh ----------------------------------------------------------------------------


async def test_refresher_keeps_the_lock_alive_over_several_ttls(backend: Backend) -> None:
    lock = await backend.locker(Options(ttl=backend.short_ttl)).obtain("k")
    refresher = lock.start_refresh()
    assert isinstance(refresher, Refresher)
    running_at_start = refresher.running
    await anyio.sleep(4 * backend.short_ttl)
    await assert_held(backend, "k")
    await refresher.stop()
    assert running_at_start
    assert not refresher.running
    await lock.release()


async def test_refresher_stop_is_idempotent_and_safe_concurrently(backend: Backend) -> None:
    lock = await backend.locker().obtain("k")
    refresher = lock.start_refresh()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(refresher.stop)
    assert not refresher.running
    await refresher.stop()
    assert not refresher.running
    await lock.release()


async def test_second_start_refresh_while_running_raises(backend: Backend) -> None:
    lock = await backend.locker().obtain("k")
    refresher = lock.start_refresh()
    with pytest.raises(RuntimeError, match="already running"):
        lock.start_refresh()
    await refresher.stop()
    again = lock.start_refresh()  # allowed once the first one stopped
    assert again.running
    await lock.release()
    assert not again.running  # release stops the lock's refresher first


async def test_start_refresh_after_release_raises(backend: Backend) -> None:
    lock = await backend.locker().obtain("k")
    await lock.release()
    with pytest.raises(LockNotHeldError):
        lock.start_refresh()


async def test_start_refresh_rejects_a_non_callable_on_error(backend: Backend) -> None:
    lock = await backend.locker().obtain("k")
    with pytest.raises(TypeError, match="on_error"):
        lock.start_refresh("not callable")  # type: ignore[arg-type]
    await lock.release()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_on_error_is_called_exactly_once_when_the_lock_is_lost(backend: Backend, kind: str) -> None:
    lock = await backend.locker(Options(ttl=backend.short_ttl)).obtain("k")
    errors: list[BaseException] = []
    called = anyio.Event()

    def on_error(exc: BaseException) -> bool:
        errors.append(exc)
        called.set()
        return True  # whatever it returns, the refresher exits

    async def on_error_async(exc: BaseException) -> None:
        await anyio.lowlevel.checkpoint()
        on_error(exc)

    refresher = lock.start_refresh(on_error if kind == "sync" else on_error_async)
    await backend.steal("k")
    with anyio.fail_after(LIMIT):
        await called.wait()
    await refresher.stop()  # waits for the task: no second call can follow
    assert not refresher.running
    assert len(errors) == 1
    assert isinstance(errors[0], LockNotHeldError)


async def test_refresh_failure_without_on_error_logs_a_warning(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    lock = await backend.locker(Options(ttl=backend.short_ttl)).obtain("k")
    with log_event("refreshing stopped") as failed:
        refresher = lock.start_refresh()
        await backend.steal("k")
        with anyio.fail_after(LIMIT):
            await failed.wait()
    await refresher.stop()
    assert any(r.levelno == logging.WARNING and "refresh of lock 'k' failed" in r.getMessage() for r in caplog.records)


async def test_on_error_may_release_the_lock_without_deadlocking(backend: Backend) -> None:
    locker = backend.locker(Options(ttl=backend.short_ttl))
    lock = await locker.obtain("k")
    outcomes: list[BaseException | None] = []
    done = anyio.Event()

    async def on_error(exc: BaseException) -> None:
        try:
            await lock.release()  # stops the refresher it runs in: must not wait for itself
        except LockNotHeldError as err:
            outcomes.append(err)
        done.set()

    lock.start_refresh(on_error)
    await backend.steal("k")
    with anyio.fail_after(LIMIT):
        await done.wait()
    assert len(outcomes) == 1


# --- Safety rules -----------------------------------------------------------------------------------


async def test_fencing_tokens_strictly_increase_across_release_expiry_and_lockers(backend: Backend) -> None:
    lockers = [backend.locker(), backend.locker()]
    tokens: list[int] = []
    for i in range(6):
        lock = await lockers[i % 2].obtain("k")
        tokens.append(lock.fencing_token)
        await lock.release()
    expiring = await lockers[0].obtain("k", ttl=backend.short_ttl)
    tokens.append(expiring.fencing_token)
    with anyio.fail_after(LIMIT):
        after_expiry = await lockers[1].obtain("k", max_retries=1, retry_delay=60)
    tokens.append(after_expiry.fencing_token)
    await after_expiry.release()
    assert all(a < b for a, b in itertools.pairwise(tokens)), tokens


async def test_mutual_exclusion_under_contention_of_16_tasks(backend: Backend) -> None:
    lockers = [backend.locker(Options(max_retries=100_000, retry_delay=0.05)) for _ in range(4)]
    seen = await contend(lambda n: lockers[n % 4].obtain("hot"), tasks=16, rounds=5)
    assert seen.most_inside == 1
    assert len(seen.tokens) == 16 * 5
    assert seen.tokens == sorted(seen.tokens)
    assert len(set(seen.tokens)) == len(seen.tokens)


async def test_cancelled_obtain_leaves_no_orphan_lock(backend: Backend) -> None:
    rng = random.Random(20261124)
    locker = backend.locker(Options(max_retries=1000, retry_delay=0.002))
    outcomes = {"obtained": 0, "cancelled": 0}
    for i in range(150):
        contended = i % 3 == 0
        holder = await backend.locker().obtain("k", ttl=5) if contended else None
        task = asyncio.ensure_future(locker.obtain("k"))
        for _ in range(rng.randrange(0, 8)):
            await asyncio.sleep(0)
        if rng.random() < 0.5:
            await asyncio.sleep(rng.uniform(0, 0.004))
        if holder is not None and rng.random() < 0.5:
            await holder.release()
            holder = None
        if await cancel(task):
            outcomes["cancelled"] += 1
        else:
            outcomes["obtained"] += 1
            await task.result().release()
        if holder is not None:
            await holder.release()
        await assert_free(backend, "k")
    assert outcomes["cancelled"] > 20, outcomes
