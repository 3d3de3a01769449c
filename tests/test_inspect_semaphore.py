"""``locker.inspect_semaphore(name)``, behind ``distlock status --semaphore``, over every backend with
semaphores (the ``coordination`` fixture). Order is asserted by order, never by timing."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from distlock_async import MemoryLocker, Options, SemaphoreState

from .helpers import Backend, driverless_locker, log_event

pytestmark = pytest.mark.anyio

#: Bounds every wait of a test: a hang fails the test instead of the whole run.
LIMIT = 20.0

#: Labels with spaces and a multi-byte character: stored after the token, they must come back whole.
FIRST = "pool worker 1 ü"
SECOND = "pool worker 2"
THIRD = "the waiter"


async def state(backend: Backend, name: str) -> SemaphoreState:
    return await backend.locker().inspect_semaphore(name)


async def test_a_free_semaphore_has_no_permits_and_no_waiters(coordination: Backend) -> None:
    free = await state(coordination, "pool")
    assert (free.held, free.holders, free.waiting) == (0, (), 0)
    assert free.fencing_counter is None or free.fencing_counter >= 0


async def test_permits_show_their_holders_in_grant_order_and_the_waiter_queued_behind_them(
    coordination: Backend,
) -> None:
    before = (await state(coordination, "pool")).fencing_counter or 0
    first = await coordination.locker(Options(holder=FIRST)).obtain_permit("pool", 2, ttl=10)
    second = await coordination.locker(Options(holder=SECOND)).obtain_permit("pool", 2, ttl=10)
    seen = await state(coordination, "pool")
    assert (seen.held, seen.holders, seen.waiting) == (2, (FIRST, SECOND), 0)
    assert seen.fencing_counter is not None
    assert seen.fencing_counter >= second.fencing_token > first.fencing_token > before

    # A third caller queues (its retry is a minute off: only the release lets it in).
    with log_event("is held by another owner; waiting") as queued, anyio.fail_after(LIMIT):
        waiter = asyncio.ensure_future(
            coordination.locker(Options(holder=THIRD)).obtain_permit("pool", 2, ttl=10, max_retries=1, retry_delay=60)
        )
        await queued.wait()
    seen = await state(coordination, "pool")
    assert (seen.held, seen.holders, seen.waiting) == (2, (FIRST, SECOND), 1), "a waiter is not a holder"

    await first.release()
    with anyio.fail_after(LIMIT):
        third = await waiter
    seen = await state(coordination, "pool")
    assert (seen.held, seen.holders, seen.waiting) == (2, (SECOND, THIRD), 0)
    assert seen.fencing_counter is not None
    assert seen.fencing_counter >= third.fencing_token > second.fencing_token

    await second.release()
    seen = await state(coordination, "pool")
    assert (seen.held, seen.holders, seen.waiting) == (1, (THIRD,), 0)
    await third.release()
    seen = await state(coordination, "pool")
    assert (seen.held, seen.holders, seen.waiting) == (0, (), 0)


async def test_an_expired_permit_is_no_longer_counted(coordination: Backend) -> None:
    ttl = coordination.short_ttl
    kept = await coordination.locker(Options(holder=FIRST)).obtain_permit("pool", 3, ttl=10)
    await coordination.locker(Options(holder=SECOND)).obtain_permit("pool", 3, ttl=ttl)  # its holder "crashes"
    assert (await state(coordination, "pool")).holders == (FIRST, SECOND)
    await asyncio.sleep(ttl + coordination.resolution + 0.05)  # expiry is the subject here
    seen = await state(coordination, "pool")
    assert (seen.held, seen.holders) == (1, (FIRST,))
    await kept.release()


async def test_callers_with_other_limits_are_counted_by_their_own(coordination: Backend) -> None:
    """A caller with a larger limit holds beside a queued one with a smaller limit: both counted right."""
    held = [await coordination.locker(Options(holder=f"h{n}")).obtain_permit("mixed", 2) for n in range(2)]
    with log_event("is held by another owner; waiting") as queued, anyio.fail_after(LIMIT):
        small = asyncio.ensure_future(
            coordination.locker(Options(holder="small")).obtain_permit("mixed", 2, max_retries=1, retry_delay=60)
        )
        await queued.wait()
    # Two held plus one waiting ahead: a caller with limit 4 gets the fourth place.
    large = await coordination.locker(Options(holder="large")).obtain_permit("mixed", 4, max_retries=0)
    seen = await state(coordination, "mixed")
    assert (seen.held, seen.holders, seen.waiting) == (3, ("h0", "h1", "large"), 1)
    for permit in [*held, large]:
        await permit.release()
    with anyio.fail_after(LIMIT):
        await (await small).release()


async def test_a_semaphore_and_a_lock_of_the_same_name_are_inspected_apart(coordination: Backend) -> None:
    lock = await coordination.locker().obtain("shared")
    assert (await state(coordination, "shared")).held == 0
    permit = await coordination.locker(Options(holder=FIRST)).obtain_permit("shared", 1)
    assert (await state(coordination, "shared")).holders == (FIRST,)
    await lock.release()
    await permit.release()


@pytest.mark.parametrize(("name", "error"), [("", ValueError), (b"pool", TypeError), ("x" * 1025, ValueError)])
async def test_a_bad_name_is_refused_naming_it(name: object, error: type[Exception]) -> None:
    locker = MemoryLocker()
    with pytest.raises(error, match=r"^name must"):
        await locker.inspect_semaphore(name)  # type: ignore[arg-type]


async def test_a_closed_locker_refuses_to_inspect() -> None:
    locker = MemoryLocker()
    await locker.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await locker.inspect_semaphore("pool")


async def test_a_driver_without_semaphores_says_so() -> None:
    locker = driverless_locker()
    with pytest.raises(NotImplementedError, match="MemoryLocker has no semaphores"):
        await locker.inspect_semaphore("pool")
