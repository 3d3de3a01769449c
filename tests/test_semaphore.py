"""The semaphore contract of SPEC ("Coordination beyond the mutex", Semaphore), on every backend that has
it (the ``coordination`` fixture). Order is asserted by order, never by timing."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import anyio
import pytest

from distlock_async import Lock, LockLostError, LockNotHeldError, NotObtainedError, Options

from .helpers import Backend, cancel, contend, log_event, waiting

pytestmark = pytest.mark.anyio

#: Bounds every wait of a test: a hang fails the test instead of the whole run.
LIMIT = 20.0


async def held_permits(backend: Backend, name: str, limit: int) -> int:
    """How many of ``limit`` permits are held, found by taking the free ones (and giving them back)."""
    probe = backend.locker()
    taken = []
    try:
        for _ in range(limit):
            try:
                taken.append(await probe.obtain_permit(name, limit, max_retries=0))
            except NotObtainedError:
                break
    finally:
        for permit in taken:
            await permit.release()
    return limit - len(taken)


async def test_up_to_limit_permits_are_held_at_once_and_one_more_is_not_obtained(coordination: Backend) -> None:
    permits = [await coordination.locker().obtain_permit("pool", 3) for _ in range(3)]
    for permit in permits:
        assert isinstance(permit, Lock)
        assert permit.key == "pool"
        assert permit.fencing_token >= 1
    assert all(a.fencing_token < b.fencing_token for a, b in itertools.pairwise(permits))
    assert len({permit.token for permit in permits}) == 3
    with pytest.raises(NotObtainedError, match="pool"):
        await coordination.locker().obtain_permit("pool", 3, max_retries=0)
    for permit in permits:
        await permit.release()
    assert await held_permits(coordination, "pool", 3) == 0


async def test_a_release_lets_the_next_caller_in_with_a_higher_fencing_token(coordination: Backend) -> None:
    first, second = [await coordination.locker().obtain_permit("pool", 2) for _ in range(2)]
    await first.release()
    third = await coordination.locker().obtain_permit("pool", 2, max_retries=0)
    assert third.fencing_token > second.fencing_token
    await second.release()
    await third.release()


async def test_waiters_are_served_in_the_order_they_queued(coordination: Backend) -> None:
    """Four waiters, each on a locker of its own, queue one after another behind two held permits; as
    permits come free they get them in that order. Each waiter has one attempt per minute, so only
    wake-ups move them."""
    holders = [await coordination.locker().obtain_permit("fifo", 2) for _ in range(2)]
    served: list[int] = []

    async def wait(n: int) -> None:
        permit = await coordination.locker().obtain_permit("fifo", 2, max_retries=2, retry_delay=60)
        served.append(n)
        await permit.release()

    tasks = [await waiting(wait(n)) for n in range(4)]  # one after another
    await holders[0].release()
    with anyio.fail_after(LIMIT):
        await asyncio.gather(*tasks)
    assert served == [0, 1, 2, 3]
    await holders[1].release()


async def test_a_newcomer_does_not_overtake_a_queued_waiter(coordination: Backend) -> None:
    holder = await coordination.locker().obtain_permit("queue", 1)
    with log_event("is held by another owner; waiting") as queued, anyio.fail_after(LIMIT):
        waiter = asyncio.ensure_future(coordination.locker().obtain_permit("queue", 1, max_retries=2, retry_delay=60))
        await queued.wait()
    await holder.release()
    with anyio.fail_after(LIMIT):
        permit = await waiter
    with pytest.raises(NotObtainedError):
        await coordination.locker().obtain_permit("queue", 1, max_retries=0)
    await permit.release()


async def test_callers_that_disagree_on_limit_count_against_their_own(coordination: Backend) -> None:
    held = [await coordination.locker().obtain_permit("mixed", 3) for _ in range(2)]
    with pytest.raises(NotObtainedError):
        await coordination.locker().obtain_permit("mixed", 2, max_retries=0)
    third = await coordination.locker().obtain_permit("mixed", 3, max_retries=0)
    for permit in [*held, third]:
        await permit.release()


async def test_a_semaphore_and_a_lock_of_the_same_name_do_not_interfere(coordination: Backend) -> None:
    locker = coordination.locker()
    lock = await locker.obtain("shared")
    permit = await locker.obtain_permit("shared", 1, max_retries=0)
    with pytest.raises(NotObtainedError):
        await locker.obtain("shared", max_retries=0)
    with pytest.raises(NotObtainedError):
        await locker.obtain_permit("shared", 1, max_retries=0)
    await lock.release()
    assert await held_permits(coordination, "shared", 1) == 1
    await permit.release()
    state = await locker.inspect("shared")
    assert not state.held


async def test_a_crashed_holders_permit_comes_back_after_its_ttl(coordination: Backend) -> None:
    """A holder that never releases (its process died) holds its permit until the TTL, no longer."""
    crashed = await coordination.locker().obtain_permit("crash", 1, ttl=coordination.short_ttl)
    with anyio.fail_after(LIMIT):
        permit = await coordination.locker().obtain_permit("crash", 1, max_retries=1, retry_delay=60)
    assert permit.fencing_token > crashed.fencing_token
    with pytest.raises(LockNotHeldError):
        await crashed.release()
    await permit.release()


async def test_permit_refresh_ttl_and_release(coordination: Backend) -> None:
    permit = await coordination.locker().obtain_permit("p", 2, ttl=5 * coordination.short_ttl)
    await permit.refresh()
    assert 0 < await permit.ttl() <= 5 * coordination.short_ttl + coordination.resolution
    await permit.release()
    assert await permit.ttl() == 0.0
    with pytest.raises(LockNotHeldError):
        await permit.release()
    with pytest.raises(LockNotHeldError):
        await permit.refresh()


async def test_semaphore_holds_its_permit_over_several_ttls_and_releases_on_exit(coordination: Backend) -> None:
    ttl = coordination.short_ttl
    async with coordination.locker().semaphore("ctx", 1, ttl=ttl) as permit:
        assert permit.key == "ctx"
        await asyncio.sleep(3 * ttl)
        with pytest.raises(NotObtainedError):
            await coordination.locker().obtain_permit("ctx", 1, max_retries=0)
    assert await held_permits(coordination, "ctx", 1) == 0


async def test_semaphore_body_is_cancelled_with_lock_lost_when_the_locker_closes(coordination: Backend) -> None:
    locker = coordination.locker()
    reached_end = False
    with pytest.raises(LockLostError), anyio.fail_after(LIMIT):
        async with locker.semaphore("closing", 2):
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(locker.aclose()))
            await asyncio.sleep(LIMIT)
            reached_end = True
    assert not reached_end


async def test_semaphore_propagates_not_obtained(coordination: Backend) -> None:
    holder = await coordination.locker().obtain_permit("busy", 1)
    with pytest.raises(NotObtainedError, match="busy"):
        async with coordination.locker().semaphore("busy", 1, max_retries=0):
            pytest.fail("the body ran without a permit")
    await holder.release()


async def test_a_cancelled_wait_leaves_nothing_behind(coordination: Backend) -> None:
    rng = random.Random(20261207)
    locker = coordination.locker(Options(max_retries=1000, retry_delay=0.002))
    cancelled = 0
    for _ in range(60):
        holder = await coordination.locker().obtain_permit("c", 1, ttl=5)
        task = asyncio.ensure_future(locker.obtain_permit("c", 1))
        for _ in range(rng.randrange(0, 8)):
            await asyncio.sleep(0)
        if rng.random() < 0.5:
            await asyncio.sleep(rng.uniform(0, 0.004))
        if rng.random() < 0.5:
            await holder.release()
        if await cancel(task):
            cancelled += 1
        else:
            await task.result().release()
        if await holder.ttl() > 0:
            await holder.release()
        # Nothing of the cancelled waiter is left: the permit is free for a newcomer at once.
        assert await held_permits(coordination, "c", 1) == 0
    assert cancelled > 10


async def test_never_more_than_limit_holders_under_contention(coordination: Backend) -> None:
    lockers = [coordination.locker(Options(max_retries=100_000, retry_delay=0.05)) for _ in range(4)]
    seen = await contend(lambda n: lockers[n % 4].obtain_permit("hot", 3), tasks=12, rounds=4)
    assert seen.most_inside <= 3
    assert len(seen.tokens) == 12 * 4
    assert len(set(seen.tokens)) == len(seen.tokens)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (("s", 0), ValueError, "limit must be >= 1"),
        (("s", -2), ValueError, "limit must be >= 1"),
        (("s", True), TypeError, "limit must be an int"),
        (("s", 1.5), TypeError, "limit must be an int"),
        (("s", "2"), TypeError, "limit must be an int"),
        (("", 2), ValueError, "name must not be empty"),
        ((b"s", 2), TypeError, "name must be a str"),
        (("x" * 1025, 2), ValueError, "name must be at most 1024 bytes"),
    ],
)
async def test_bad_arguments_raise_naming_the_argument(
    coordination: Backend, arguments: tuple[Any, Any], error: type[Exception], message: str
) -> None:
    locker = coordination.locker()
    with pytest.raises(error, match=message):
        await locker.obtain_permit(*arguments)
    with pytest.raises(error, match=message):
        locker.semaphore(*arguments)
    with pytest.raises(TypeError, match="max_retries and timeout"):
        await locker.obtain_permit("s", 2, max_retries=1, timeout=1)
