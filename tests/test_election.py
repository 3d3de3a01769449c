"""The election contract of SPEC ("Coordination beyond the mutex", Election), on every backend that has
it (the ``coordination`` fixture). Order is asserted by order, never by timing."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import anyio
import pytest

from distlock_async import (
    Election,
    Leader,
    Lock,
    LockLostError,
    LockNotHeldError,
    NotObtainedError,
    Observation,
    Term,
)

from .helpers import Backend, waiting

pytestmark = pytest.mark.anyio

#: Bounds every wait of a test: a hang fails the test instead of the whole run.
LIMIT = 20.0


async def next_leader(observation: Observation) -> Leader | None:
    with anyio.fail_after(LIMIT):
        return await observation.__anext__()


async def test_a_campaign_leads_with_its_value_and_resigns_on_exit(coordination: Backend) -> None:
    election = coordination.locker().election("jobs")
    assert isinstance(election, Election)
    assert election.name == "jobs"
    assert await election.leader() is None
    async with election.campaign("replica-1") as term:
        assert isinstance(term, Term)
        assert isinstance(term, Lock)
        assert term.key == "jobs"
        assert term.value == "replica-1"
        assert term.fencing_token >= 1
        assert await coordination.locker().election("jobs").leader() == Leader("replica-1", term.fencing_token)
    assert await election.leader() is None


async def test_candidates_lead_one_at_a_time_in_the_order_they_campaigned(coordination: Backend) -> None:
    """Three candidates on lockers of their own campaign one after another behind a leader; as each resigns,
    the next leads, with a higher fencing token."""
    leader_term = coordination.locker().election("order").campaign("first")
    first = await leader_term.__aenter__()
    try:
        terms: list[tuple[str, int]] = []
        leading: list[str] = []

        async def candidate(n: int) -> None:
            async with coordination.locker().election("order").campaign(f"c{n}") as term:
                leading.append(term.value)
                assert len(leading) == 1, leading
                terms.append((term.value, term.fencing_token))
                await asyncio.sleep(0.01)
                leading.remove(term.value)

        tasks = []
        for n in range(3):
            tasks.append(await waiting(candidate(n), LIMIT))
    except BaseException:  # a failed test still ends the campaign it entered by hand
        with contextlib.suppress(Exception):
            await leader_term.__aexit__(None, None, None)
        raise
    await leader_term.__aexit__(None, None, None)
    with anyio.fail_after(LIMIT):
        await asyncio.gather(*tasks)
    assert [value for value, _ in terms] == ["c0", "c1", "c2"]
    tokens = [first.fencing_token] + [token for _, token in terms]
    assert tokens == sorted(set(tokens))


async def test_proclaim_changes_the_value_and_keeps_the_fencing_token(coordination: Backend) -> None:
    election = coordination.locker().election("proclaim")
    async with election.campaign("v1") as term:
        await term.proclaim("v2")
        assert term.value == "v2"
        assert await election.leader() == Leader("v2", term.fencing_token)
    with pytest.raises(LockNotHeldError):
        await term.proclaim("v3")
    assert await election.leader() is None


async def test_a_replaced_leaders_proclaim_raises_and_changes_nothing(coordination: Backend) -> None:
    """A leader whose term expired (its process stalled past the TTL) cannot overwrite its successor's value."""
    campaign = coordination.locker().election("stale").campaign("old", ttl=coordination.short_ttl)
    stalled = await campaign.__aenter__()
    try:
        # The process stalls: its refresher stops refreshing (no public API stops a campaign's refresher).
        await stalled._refresher.stop()  # type: ignore[attr-defined]
        with anyio.fail_after(LIMIT):
            async with coordination.locker().election("stale").campaign("new") as successor:
                with pytest.raises(LockNotHeldError):
                    await stalled.proclaim("overwrite")
                assert await coordination.locker().election("stale").leader() == Leader("new", successor.fencing_token)
    except BaseException:  # a failed test still ends the campaign it entered by hand
        with contextlib.suppress(Exception):
            await campaign.__aexit__(None, None, None)
        raise
    with pytest.raises(LockLostError):  # the stalled process wakes up and leaves its block
        await campaign.__aexit__(None, None, None)


async def test_observe_yields_the_current_leader_then_every_change(coordination: Backend) -> None:
    observer = coordination.locker().election("watched")
    candidate = coordination.locker().election("watched")
    async with observer.observe() as leaders:
        assert await next_leader(leaders) is None
        async with candidate.campaign("a") as term:
            assert await next_leader(leaders) == Leader("a", term.fencing_token)
            await term.proclaim("b")
            assert await next_leader(leaders) == Leader("b", term.fencing_token)
        assert await next_leader(leaders) is None


async def test_observe_starts_with_a_leader_already_in_place(coordination: Backend) -> None:
    present = coordination.locker().election("present")
    async with present.campaign("here") as term, coordination.locker().election("present").observe() as leaders:
        assert await next_leader(leaders) == Leader("here", term.fencing_token)


async def test_observe_sees_a_leader_that_expires_without_resigning(coordination: Backend) -> None:
    """A leader whose process died: observers see nobody lead once its TTL ran out, and the next leader."""
    campaign = coordination.locker().election("expiry").campaign("dead", ttl=coordination.short_ttl)
    term = await campaign.__aenter__()
    try:
        await term._refresher.stop()  # type: ignore[attr-defined]  # the process died: nobody refreshes
        async with coordination.locker().election("expiry").observe() as leaders:
            assert await next_leader(leaders) == Leader("dead", term.fencing_token)
            assert await next_leader(leaders) is None
            async with coordination.locker().election("expiry").campaign("alive") as successor:
                assert await next_leader(leaders) == Leader("alive", successor.fencing_token)
    except BaseException:  # a failed test still ends the campaign it entered by hand
        with contextlib.suppress(Exception):
            await campaign.__aexit__(None, None, None)
        raise
    with pytest.raises(LockLostError):
        await campaign.__aexit__(None, None, None)


async def test_observe_ends_when_the_locker_closes(coordination: Backend) -> None:
    locker = coordination.locker()
    seen: list[Leader | None] = []
    first = asyncio.Event()

    async def follow() -> None:
        async for leader in locker.election("closing").observe():
            seen.append(leader)
            first.set()

    task = asyncio.ensure_future(follow())
    with anyio.fail_after(LIMIT):
        await first.wait()
    await locker.aclose()
    with anyio.fail_after(LIMIT):
        await task
    assert seen == [None]


async def test_a_cancelled_observe_lets_go_and_the_next_one_works(coordination: Backend) -> None:
    locker = coordination.locker()
    election = locker.election("cancel")
    task = asyncio.ensure_future(anext_twice(election))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with election.campaign("x") as term, election.observe() as leaders:
        assert await next_leader(leaders) == Leader("x", term.fencing_token)


async def anext_twice(election: Election) -> None:
    observation = election.observe()
    await observation.__anext__()
    await observation.__anext__()


async def test_a_cancelled_campaign_leaves_nothing_behind(coordination: Backend) -> None:
    election = coordination.locker().election("giveup")
    async with coordination.locker().election("giveup").campaign("leader") as term:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.2):
                async with election.campaign("quitter"):
                    pytest.fail("led while another leader held the term")
        assert await election.leader() == Leader("leader", term.fencing_token)
    assert await election.leader() is None
    # Nobody is queued: a new candidate leads at once.
    with anyio.fail_after(LIMIT):
        async with election.campaign("next") as successor:
            assert successor.fencing_token > term.fencing_token


async def test_the_body_is_cancelled_with_lock_lost_when_the_locker_closes(coordination: Backend) -> None:
    locker = coordination.locker()
    reached_end = False
    with pytest.raises(LockLostError), anyio.fail_after(LIMIT):
        async with locker.election("lost").campaign("me"):
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(locker.aclose()))
            await asyncio.sleep(LIMIT)
            reached_end = True
    assert not reached_end


async def test_leadership_is_kept_over_several_ttls(coordination: Backend) -> None:
    ttl = coordination.short_ttl
    election = coordination.locker().election("long")
    async with election.campaign("steady", ttl=ttl) as term:
        await asyncio.sleep(3 * ttl)
        assert await coordination.locker().election("long").leader() == Leader("steady", term.fencing_token)


async def test_an_election_a_lock_and_a_semaphore_of_one_name_do_not_interfere(coordination: Backend) -> None:
    locker = coordination.locker()
    async with locker.election("same").campaign("v") as term:
        lock = await locker.obtain("same", max_retries=0)
        permit = await locker.obtain_permit("same", 1, max_retries=0)
        with pytest.raises(NotObtainedError):
            await locker.obtain("same", max_retries=0)
        await lock.release()
        await permit.release()
        assert await locker.election("same").leader() == Leader("v", term.fencing_token)
    assert not (await locker.inspect("same")).held


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda e: e.campaign(5), TypeError, "value must be a str"),
        (lambda e: e.campaign("x" * (64 * 1024 + 1)), ValueError, "value must be at most 65536 bytes"),
        (lambda e: e.campaign("v", ttl=0), ValueError, "ttl must be > 0"),
        (lambda e: e.campaign("v", ttl="1"), TypeError, "ttl must be a number"),
    ],
)
async def test_bad_campaign_arguments_raise_naming_the_argument(
    coordination: Backend, call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call(coordination.locker().election("bad"))


async def test_bad_names_and_proclaimed_values_raise_naming_the_argument(coordination: Backend) -> None:
    locker = coordination.locker()
    with pytest.raises(ValueError, match="name must not be empty"):
        locker.election("")
    with pytest.raises(TypeError, match="name must be a str"):
        locker.election(None)  # type: ignore[arg-type]
    async with locker.election("bad").campaign("v") as term:
        with pytest.raises(TypeError, match="value must be a str"):
            await term.proclaim(1)  # type: ignore[arg-type]
        assert term.value == "v"


async def test_an_observation_used_after_aclose_ends_at_once(coordination: Backend) -> None:
    observation = coordination.locker().election("done").observe()
    assert await next_leader(observation) is None
    await observation.aclose()
    await observation.aclose()
    with contextlib.suppress(StopAsyncIteration):
        await observation.__anext__()
        pytest.fail("a closed observation yielded")
