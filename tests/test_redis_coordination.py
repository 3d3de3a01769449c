"""What the Redis backend promises for semaphores and elections beyond their contract suites: the key
layout (spaces that never meet, one Cluster slot per name), the queue's behaviour when a waiter dies or
gives up as a permit comes free, and observation across Cluster nodes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from distlock_async import Leader, Lock, LockNotHeldError, NotObtainedError, Options, RedisLocker
from distlock_async._backends.redis import driver as redis_driver
from distlock_async._backends.redis.scripts import WAITER_TTL_MS
from distlock_async._core._driver import Granted
from distlock_async.testing.servers import RedisClusterServers, RedisServer

from .helpers import log_event, waiting

pytestmark = pytest.mark.anyio

#: Bounds every wait of a test: a hang fails the test instead of the whole run.
LIMIT = 20.0

_namespaces = itertools.count()


class _Made:
    """The lockers of a test, on a namespace of its own, for its fixture to close with their clients."""

    def __init__(self) -> None:
        self.namespace = f"coord{next(_namespaces)}-{secrets.token_hex(3)}"
        self.lockers: list[RedisLocker] = []

    def locker(self, client: Any, options: Options | None) -> RedisLocker:
        locker = RedisLocker(client, options, namespace=self.namespace)
        self.lockers.append(locker)
        return locker

    async def aclose(self) -> None:
        for locker in self.lockers:
            await locker.aclose()
            await locker.client.aclose()


@pytest.fixture
async def lockers(redis_server: RedisServer) -> AsyncIterator[tuple[Any, Any]]:
    """An admin client, and a maker of lockers on a namespace of this test's own (closed at the end)."""
    made = _Made()

    def make(options: Options | None = None) -> RedisLocker:
        return made.locker(redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=5), options)

    admin = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    try:
        yield admin, make
    finally:
        await made.aclose()
        assert await admin.pubsub_channels(f"{made.namespace}:*") == [], "a subscription outlived its user"
        await admin.aclose()


async def test_locks_permits_and_leaders_of_related_names_never_meet(
    lockers: tuple[Any, Any],
) -> None:
    """Semaphore ``x``, election ``x``, lock ``x`` and the locks, semaphores and elections named like the
    others' keys (``x:permits``, ``x:leader``, ``x}:permits``...) are all held at once, each in keys of its
    own: the keys a holder of one writes are exactly its own, and releasing one leaves the others held."""
    admin, make = lockers
    locker = make()
    ns = locker.namespace
    names = ["x", "x:permits", "x:leader", "x}:permits", "x:fence", "x:permits:queue"]
    locks: dict[str, Lock] = {}
    permits: dict[str, Lock] = {}
    terms = {}
    # Campaign blocks nest, so they are left in the reverse order: "x:permits" last in, first out.
    order = sorted(names, key=lambda name: name == "x:permits")
    campaigns = {name: locker.election(name).campaign(f"v-{name}") for name in order}
    for name in names:
        locks[name] = await locker.obtain(name, max_retries=0)
        permits[name] = await locker.obtain_permit(name, 1, max_retries=0)
    for name in order:
        terms[name] = await campaigns[name].__aenter__()
    expected = set()
    for name in names:
        base = f"{ns}:{{{name.replace('}', '%7D')}}}"
        expected |= {base, f"{base}:fence"}
        for space in (":permits", ":leader"):
            expected |= {f"{base}{space}", f"{base}{space}:fence", f"{base}{space}:tokens"}
    assert set(await admin.keys(f"{ns}:*")) == expected
    assert len(expected) == 8 * len(names)
    # Each excludes a second holder of its own kind, and only of its kind.
    other = make()
    for name in names:
        with pytest.raises(NotObtainedError):
            await other.obtain(name, max_retries=0)
        with pytest.raises(NotObtainedError):
            await other.obtain_permit(name, 1, max_retries=0)
        assert await other.election(name).leader() == Leader(f"v-{name}", terms[name].fencing_token)
    # The lock, the semaphore and the election named "x:permits" go; semaphore "x" stays held, and so on.
    await locks["x:permits"].release()
    await permits["x:permits"].release()
    await campaigns["x:permits"].__aexit__(None, None, None)
    with pytest.raises(NotObtainedError):
        await other.obtain_permit("x", 1, max_retries=0)
    with pytest.raises(NotObtainedError):
        await other.obtain("x", max_retries=0)
    assert await other.election("x").leader() == Leader("v-x", terms["x"].fencing_token)
    assert await admin.type(f"{ns}:{{x}}:permits") == "zset"
    for name in reversed(order[:-1]):
        await locks[name].release()
        await permits[name].release()
        await campaigns[name].__aexit__(None, None, None)
    assert all(key.endswith(":fence") for key in await admin.keys(f"{ns}:*"))


async def test_a_dead_waiter_holds_the_permit_queue_up_for_waiter_ttl_at_most(
    lockers: tuple[Any, Any],
) -> None:
    """A waiter whose process died right after queuing (nobody keeps its entry alive) is ahead of a live
    one: while its entry lives the permit stays with it (FIFO), and once ``WAITER_TTL_MS`` ran out the
    live waiter gets the permit by itself -- though its next retry is a minute away and nobody releases."""
    _, make = lockers
    holder = await make().obtain_permit("d", 1, ttl=30)
    dead = make()._driver.permits(1).contender("d", secrets.token_hex(16), 30.0, "dead")
    assert not isinstance(await dead.attempt(), Granted)
    loop = asyncio.get_running_loop()
    died_at = loop.time()
    with log_event("is held by another owner; waiting") as queued, anyio.fail_after(LIMIT):
        live = asyncio.ensure_future(make().obtain_permit("d", 1, max_retries=2, retry_delay=60))
        await queued.wait()
    await holder.release()
    await asyncio.sleep(0.3)
    assert not live.done(), "the live waiter overtook a waiter queued ahead of it whose entry was alive"
    with anyio.fail_after(WAITER_TTL_MS / 1000 + 3):
        permit = await live
    assert loop.time() - died_at >= WAITER_TTL_MS / 1000 - 0.1
    await permit.release()


async def test_a_permit_that_came_free_for_a_waiter_that_gives_up_goes_to_the_next(
    lockers: tuple[Any, Any],
) -> None:
    """The holder releases and, at that moment, the first waiter (the one the release wakes) is cancelled:
    its leaving wakes the second one at once, long before its own timers would (its retry slot is a minute
    away, and the first waiter's entry was alive)."""
    admin, make = lockers
    holder = await make().obtain_permit("o", 1, ttl=30)
    waiters = []
    for _ in range(2):
        waiters.append(await waiting(make().obtain_permit("o", 1, max_retries=2, retry_delay=60), LIMIT))
    first, second = waiters
    await holder.release()
    first.cancel()
    loop = asyncio.get_running_loop()
    gave_up = loop.time()
    with pytest.raises(asyncio.CancelledError):
        await first
    with anyio.fail_after(LIMIT):
        permit = await second
    assert loop.time() - gave_up < 1.0, "the permit waited for a timer instead of going to the next waiter"
    assert permit.fencing_token > holder.fencing_token
    await permit.release()
    assert await admin.exists(f"{make().namespace}:{{o}}:permits:queue") == 0


async def test_an_expired_permit_is_never_brought_back_by_refresh(lockers: tuple[Any, Any]) -> None:
    """redis-semaphore #175: a refresh after the TTL ran out raises, even though nobody took the permit."""
    admin, make = lockers
    permit = await make().obtain_permit("r", 2, ttl=0.2)
    await asyncio.sleep(0.4)
    with pytest.raises(LockNotHeldError):
        await permit.refresh()
    assert await admin.zcard(f"{make().namespace}:{{r}}:permits") == 0
    with pytest.raises(LockNotHeldError):
        await permit.release()


# --- Cluster -----------------------------------------------------------------------------------------


@pytest.fixture
async def cluster_lockers(redis_cluster: RedisClusterServers) -> AsyncIterator[tuple[RedisCluster, Any]]:
    """An admin Cluster client, and a maker of lockers whose clients start from the given node."""
    made = _Made()

    def make(node: int = 0, options: Options | None = None) -> RedisLocker:
        return made.locker(RedisCluster(host="127.0.0.1", port=redis_cluster.ports[node], socket_timeout=5), options)

    admin = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0], decode_responses=True)
    try:
        yield admin, make
    finally:
        await made.aclose()
        await admin.aclose()


async def _cluster_keys(admin: RedisCluster, pattern: str) -> list[str]:
    keys: list[str] = []
    await admin.initialize()
    assert len(admin.get_primaries()) == 3
    for node in admin.get_primaries():
        keys += await admin.execute_command("KEYS", pattern, target_nodes=node)
    return keys


async def test_cluster_keys_of_a_semaphore_and_an_election_share_the_names_slot(
    cluster_lockers: tuple[RedisCluster, Any],
) -> None:
    """With a holder and a queued waiter each, a semaphore and an election of one name have all their keys
    (holders, counter, tokens, queue, waiters) in the slot of the name, on its node; and they work there."""
    admin, make = cluster_lockers
    locker = make()
    ns = locker.namespace
    permit = await locker.obtain_permit("slot", 1)
    async with contextlib.AsyncExitStack() as stack:  # the term ends even if an assertion fails
        term_context = locker.election("slot").campaign("leader")
        term = await term_context.__aenter__()
        stack.push_async_exit(term_context.__aexit__)
        # Each log names its kind: a waiter logs again after it subscribed, which must not be mistaken
        # for the next waiter's.
        with log_event("permit 'slot' is held by another owner; waiting") as queued, anyio.fail_after(LIMIT):
            waiting_permit = asyncio.ensure_future(make(1).obtain_permit("slot", 1, max_retries=2, retry_delay=60))
            await queued.wait()
        elected: asyncio.Future[Lock] = asyncio.get_running_loop().create_future()
        done = asyncio.Event()

        async def campaign() -> None:
            async with make(2).election("slot").campaign("next") as second:
                elected.set_result(second)
                await done.wait()

        with log_event("leader 'slot' is held by another owner; waiting") as queued, anyio.fail_after(LIMIT):
            candidate = asyncio.ensure_future(campaign())
            await queued.wait()
        keys = await _cluster_keys(admin, f"{ns}:*")
        expected = {
            f"{ns}:{{slot}}{space}{suffix}"
            for space in (":permits", ":leader")
            for suffix in ("", ":fence", ":tokens", ":queue", ":waiters")
        }
        assert set(keys) == expected
        assert {key_slot(key.encode()) for key in keys} == {key_slot(b"slot")}
        await permit.release()
    with anyio.fail_after(LIMIT):
        second_permit = await waiting_permit
        second_term = await elected
    assert second_permit.fencing_token > permit.fencing_token
    assert second_term.fencing_token > term.fencing_token
    await second_permit.release()
    done.set()
    await candidate


async def test_cluster_observe_through_another_node_sees_every_change(
    cluster_lockers: tuple[RedisCluster, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The observer's pub/sub connection is on a node that does not own the election's slot; every change
    (a leader, a proclaimed value, a resignation) reaches it through the Cluster's bus, within seconds,
    though its periodic re-read is set to a minute and the leader's TTL is a minute too."""
    _, make = cluster_lockers
    monkeypatch.setattr(redis_driver, "OBSERVE_REREAD", 60.0)
    observer = make(1)
    client: RedisCluster = observer.client
    await client.initialize()
    owner = client.get_node_from_key(f"{observer.namespace}:{{watched}}:leader")
    assert owner is not None
    other = next(node for node in client.get_primaries() if node.name != owner.name)
    client.set_default_node(other)
    candidate = make(0).election("watched")
    subscriber = observer._driver.subscriber
    async with observer.election("watched").observe() as leaders:
        with anyio.fail_after(10):
            assert await leaders.__anext__() is None
        assert subscriber._pubsub.connection.port == other.port != owner.port
        async with candidate.campaign("a", ttl=60) as term:
            with anyio.fail_after(10):
                assert await leaders.__anext__() == Leader("a", term.fencing_token)
            await term.proclaim("b")
            with anyio.fail_after(10):
                assert await leaders.__anext__() == Leader("b", term.fencing_token)
        with anyio.fail_after(10):
            assert await leaders.__anext__() is None
    assert subscriber._pubsub is None, "the observation's subscription outlived it"
    assert not subscriber.queues


async def test_an_observation_is_woken_by_changes_after_a_server_restart(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is killed and restarted under an open observation. A locker from a URL makes its client
    without redis-py's retries, so the wake-up connection fails for good; once the server is back the
    observer subscribes again on its next wake-up, and every change after that still wakes it, though its
    periodic re-read is set to a minute and the leader's TTL is a minute too. (It used to fall back to
    its timers for the rest of the observation: the fault tests' observer saw 3 changes in 12 terms.)"""
    monkeypatch.setattr(redis_driver, "OBSERVE_REREAD", 60.0)
    observer, candidate = (RedisLocker.from_url(server.url) for _ in range(2))
    async with observer, candidate, observer.election("restarted").observe() as leaders:
        with anyio.fail_after(10):
            assert await leaders.__anext__() is None
        server.restart()  # blocking the loop: the observer notices once the server is back
        async with candidate.election("restarted").campaign("a", ttl=60) as term:
            with anyio.fail_after(10):
                assert await leaders.__anext__() == Leader("a", term.fencing_token)
        with anyio.fail_after(10):  # the resignation, announced on the channel
            assert await leaders.__anext__() is None
        async with candidate.election("restarted").campaign("b", ttl=60) as term:
            with anyio.fail_after(10):
                assert await leaders.__anext__() == Leader("b", term.fencing_token)
