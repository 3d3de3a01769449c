"""What the Redis backend promises beyond the contract: wire cost, script cache, faults, cancellation
through a slow network, key layout, fairness. Each test that restarts, pauses or counts commands on a
server gets a server of its own."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import statistics
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.crc import key_slot

from distlock_async import (
    BackendError,
    LockLostError,
    LockNotHeldError,
    NotObtainedError,
    Options,
    RedisLocker,
    from_url,
)
from distlock_async._backends.redis.errors import REPLY_ERRORS, map_errors
from distlock_async.testing.servers import (
    RedisClusterServers,
    RedisServer,
    TLSRedisServer,
    _Sentinel,
    free_port,
    running,
)

from .helpers import OPERATIONS, cancel, lock_operation, log_event, running_or_skip
from .proxy import FaultProxy

pytestmark = pytest.mark.anyio


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    yield from running(RedisServer())


@pytest.fixture
async def admin(own_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis(port=own_redis.port, decode_responses=True)
    yield client
    await client.aclose()


def client_for(port: int, **kwargs: Any) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(host="127.0.0.1", port=port, **kwargs)


@contextlib.asynccontextmanager
async def lockers_with_own_clients(
    port: int, *options: Options, namespace: str = "distlock"
) -> AsyncIterator[tuple[RedisLocker, ...]]:
    """A locker in ``namespace`` for each of ``options``, each on a client of its own to the server at
    ``port`` (connections and wake-ups of its own, as in separate processes); closed, clients and all,
    at the end."""
    lockers = tuple(RedisLocker(client_for(port), each, namespace=namespace) for each in options)
    try:
        yield lockers
    finally:
        for locker in lockers:
            await locker.aclose()
            await locker.client.aclose()


#: What the scripts run inside Redis; commandstats counts these too, but the locker never sends them itself.
SCRIPT_INTERNAL = {
    *("get", "set", "del", "publish", "pexpire", "pexpireat", "pttl", "time", "exists"),
    *("zadd", "zrange", "zrangebyscore", "zrem", "zscore"),
}


async def command_calls(admin: redis.asyncio.Redis) -> dict[str, int]:
    """Client commands since the last CONFIG RESETSTAT, without the test's own INFO and RESETSTAT."""
    stats = await admin.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    skip = {"info", "config|resetstat", "config", *SCRIPT_INTERNAL}
    return {name: n for name, n in calls.items() if name not in skip}


async def lock_keys(admin: redis.asyncio.Redis, namespace: str) -> list[str]:
    return [k async for k in admin.scan_iter(f"{namespace}:*") if not k.endswith(":fence")]


# --- wire cost ---------------------------------------------------------------------------------------


async def test_an_uncontended_cycle_is_two_commands_and_an_idle_locker_sends_nothing(
    own_redis: RedisServer, admin: redis.asyncio.Redis
) -> None:
    client = client_for(own_redis.port)
    async with RedisLocker(client) as locker:
        await (await locker.obtain("warm-up")).release()  # the server learns the scripts here
        await admin.config_resetstat()
        for i in range(10):
            lock = await locker.obtain(f"k{i}")
            await lock.release()
        assert await command_calls(admin) == {"evalsha": 20}

        await admin.config_resetstat()
        await anyio.sleep(0.3)  # an observation window, not a synchronisation
        assert await command_calls(admin) == {}
        names = [c["name"] for c in await admin.client_list()]
        assert len(names) == 2, "the locker keeps exactly one connection while idle (plus this admin's)"
    await client.aclose()


async def test_scripts_are_reloaded_transparently_after_script_flush(
    own_redis: RedisServer, admin: redis.asyncio.Redis
) -> None:
    async with RedisLocker(client_for(own_redis.port)) as locker:
        await (await locker.obtain("k")).release()
        await admin.script_flush()
        await admin.config_resetstat()
        lock = await locker.obtain("k")
        await lock.refresh()
        await lock.release()
        calls = await command_calls(admin)
        # Each script is EVALSHA (NOSCRIPT), then EVAL once; afterwards EVALSHA hits again.
        assert calls == {"evalsha": 3, "eval": 3}
        await admin.config_resetstat()
        await (await locker.obtain("k")).release()
        assert await command_calls(admin) == {"evalsha": 2}
    await locker.client.aclose()


# --- keys --------------------------------------------------------------------------------------------


async def test_keys_share_a_hash_slot_and_hold_the_token(own_redis: RedisServer, admin: redis.asyncio.Redis) -> None:
    locker = RedisLocker(client_for(own_redis.port), namespace="app")
    async with await locker.obtain("invoice:{42 ü", ttl=10) as lock:
        # The token, then the holder label: no other key, no other command.
        assert await admin.get("app:{invoice:{42 ü}") == f"{lock.token} {lock.holder}"
        assert 9000 < await admin.pttl("app:{invoice:{42 ü}") <= 10000
        assert await admin.get("app:{invoice:{42 ü}:fence") == str(lock.fencing_token)
    assert await lock_keys(admin, "app") == []
    # "}" would end the hash tag early, or leave it empty so that the two keys hash whole into different
    # slots: it is escaped, with "%" too, so that no two lock names meet.
    for key, name in [("}", "app:{%7D}"), ("a}b", "app:{a%7Db}"), ("%7D", "app:{%257D}"), ("100%", "app:{100%25}")]:
        async with await locker.obtain(key, ttl=10) as lock:
            assert await admin.get(name) == f"{lock.token} {lock.holder}"
            assert key_slot(name.encode()) == key_slot(f"{name}:fence".encode())
    await locker.aclose()
    await locker.client.aclose()


async def test_fencing_tokens_are_never_below_the_server_clock_in_microseconds(
    own_redis: RedisServer, admin: redis.asyncio.Redis
) -> None:
    async with RedisLocker(client_for(own_redis.port)) as locker:
        seconds, micros = await admin.time()
        lock = await locker.obtain("k")
        assert lock.fencing_token >= seconds * 1_000_000 + micros
        await lock.release()
    await locker.client.aclose()


async def test_a_client_that_decodes_responses_works(redis_server: RedisServer) -> None:
    client = client_for(redis_server.port, decode_responses=True)
    locker = RedisLocker(client, namespace="decoded")
    async with locker, await locker.obtain("k") as lock:
        assert await lock.ttl() > 0
        with pytest.raises(NotObtainedError):
            await locker.obtain("k", max_retries=0)
    await client.aclose()


# --- faults ------------------------------------------------------------------------------------------


async def test_restart_without_persistence_keeps_tokens_increasing_and_the_same_locker_works(
    own_redis: RedisServer,
) -> None:
    async with RedisLocker(client_for(own_redis.port, socket_timeout=2)) as locker:
        before = await locker.obtain("k")
        await before.release()
        await anyio.to_thread.run_sync(own_redis.restart)  # data and scripts are gone
        after = await locker.obtain("k")
        assert after.fencing_token > before.fencing_token
        await after.release()
    await locker.client.aclose()


async def test_a_waiter_resubscribes_after_a_restart_and_checks_again(own_redis: RedisServer) -> None:
    """The restart loses the holder's key; the waiter's subscription comes back and makes it look at once."""
    holder_locker = RedisLocker(client_for(own_redis.port, socket_timeout=2))
    waiter_locker = RedisLocker(client_for(own_redis.port, socket_timeout=2))
    await holder_locker.obtain("k", ttl=60)
    with log_event("subscribed to 'distlock:{k}'") as subscribed:
        waiter = asyncio.ensure_future(waiter_locker.obtain("k", max_retries=1, retry_delay=60))
        await subscribed.wait()
    await anyio.to_thread.run_sync(own_redis.restart)
    lock = await asyncio.wait_for(waiter, 30)  # far below the 60 s the waiter would sleep otherwise
    await lock.release()
    for locker in (holder_locker, waiter_locker):
        await locker.aclose()
        await locker.client.aclose()


async def test_a_dead_server_gives_backend_error_and_the_locker_recovers(own_redis: RedisServer) -> None:
    async with RedisLocker(client_for(own_redis.port, socket_timeout=1, socket_connect_timeout=1)) as locker:
        lock = await locker.obtain("k")
        own_redis.kill()
        with pytest.raises(BackendError) as info:
            await locker.obtain("other", max_retries=0)
        assert info.value.__cause__ is not None
        assert type(info.value) is BackendError
        with pytest.raises(BackendError):
            await lock.refresh()
        own_redis.start()
        fresh = await locker.obtain("k")
        assert fresh.fencing_token > lock.fencing_token
        await fresh.release()
    await locker.client.aclose()


async def test_the_error_boundary_reports_client_errors_and_lets_the_rest_pass() -> None:
    boundary = map_errors("redis at here", passing=REPLY_ERRORS)
    failure = redis.exceptions.ConnectionError("refused")
    with pytest.raises(BackendError, match=r"^redis at here: refused$") as caught, boundary:
        raise failure
    assert caught.value.__cause__ is failure
    for passing in (redis.exceptions.NoScriptError("NOSCRIPT"), asyncio.CancelledError(), RuntimeError("closed")):
        with pytest.raises(type(passing)) as left, boundary:
            raise passing
        assert left.value is passing


async def test_an_unreachable_server_is_a_plain_backend_error_with_nothing_to_undo(
    caplog_debug: pytest.LogCaptureFixture,
) -> None:
    async with from_url(f"redis://127.0.0.1:{free_port()}") as locker:
        with pytest.raises(BackendError, match=r"redis at 127\.0\.0\.1:") as obtained:
            await locker.obtain("k")
        with pytest.raises(BackendError, match=r"redis at 127\.0\.0\.1:") as inspected:
            await locker.inspect("k")
    for exc in (obtained.value, inspected.value):
        # What users catch, print and read in a traceback is the public class, not a private subclass.
        assert type(exc) is BackendError
        assert traceback.format_exception_only(exc)[0].startswith("distlock_async.BackendError: redis at")
        assert isinstance(exc.__cause__, (OSError, redis.exceptions.ConnectionError))
        assert "TLS" not in str(exc)
    # Nothing was written, so there is no undo that could fail and warn (asyncio's debug mode may warn of
    # slow callbacks on a busy machine: only the library's records count).
    assert not [r for r in caplog_debug.records if r.name == "distlock_async" and r.levelname == "WARNING"]


async def test_rediss_against_a_plain_text_server_hints_at_tls(redis_server: RedisServer) -> None:
    # The server reads the TLS hello as the start of a command and answers nothing: the handshake waits
    # out the deadline (the URL's socket_timeout), and the error says what is likely wrong.
    async with from_url(f"rediss://127.0.0.1:{redis_server.port}/0?socket_timeout=1") as locker:
        with (
            anyio.fail_after(20),
            pytest.raises(BackendError, match=r"no connection within 1 s; is the server speaking TLS\?") as info,
        ):
            await locker.obtain("k")
    assert type(info.value) is BackendError


async def test_an_obtain_that_times_out_on_a_paused_server_is_sent_once_and_undone(
    own_redis: RedisServer, admin: redis.asyncio.Redis
) -> None:
    client = client_for(own_redis.port, socket_timeout=0.5)
    async with RedisLocker(client) as locker:
        await (await locker.obtain("warm-up")).release()
        await admin.config_resetstat()
        own_redis.pause()
        try:
            with pytest.raises(BackendError, match="no reply"):
                await locker.obtain("k", max_retries=0)
        finally:
            own_redis.resume()
        # The paused server finds the obtain and then its undo in the same connection's buffer.
        while (await command_calls(admin)).get("eval", 0) < 1:  # noqa: ASYNC110 - server state, no event to await
            await asyncio.sleep(0.01)
        assert (await command_calls(admin)).get("evalsha") == 1, "the obtain was sent exactly once"
        assert await lock_keys(admin, "distlock") == []
        lock = await locker.obtain("k", max_retries=0)
        await lock.release()
    await client.aclose()


# --- cancellation through a slow network -----------------------------------------------------------


async def test_cancellations_in_flight_leave_no_orphan_lock(redis_server: RedisServer) -> None:
    """1,000 cancellations of obtain, refresh, release and ``lock()`` at random points while commands are
    on the wire: no orphan lock after any of them, and (checked by the suite) no task left pending."""
    rng = random.Random(20261202)
    admin = client_for(redis_server.port, decode_responses=True)
    async with FaultProxy(redis_server.port, delay=0.001) as proxy:
        client = client_for(proxy.port)
        locker = RedisLocker(client, Options(ttl=30, max_retries=1000, retry_delay=0.005), namespace="cancel")
        holder_locker = RedisLocker(client, namespace="cancel")
        cancelled = 0
        for i in itertools.count():
            if cancelled >= 1000:
                break
            assert i < 4000, f"only {cancelled} of {i} cancellations landed"
            holder = await holder_locker.obtain("k") if i % 3 == 0 else None

            task = asyncio.ensure_future(lock_operation(locker, "k", rng.choice(OPERATIONS)))
            await asyncio.sleep(rng.uniform(0, 0.006))
            if holder is not None:
                await holder.release()
            if await cancel(task):
                cancelled += 1
            # A cancelled refresh leaves a held lock behind only until its release, which is shielded.
            assert await lock_keys(admin, "cancel") == [], f"orphan lock after iteration {i}"
        await locker.aclose()
        await holder_locker.aclose()
        await client.aclose()
    await admin.aclose()


# --- fairness and hand-off ---------------------------------------------------------------------------


async def test_a_waiter_that_gives_up_leaves_no_reservation_behind(redis_server: RedisServer) -> None:
    """A waiter that was cancelled leaves the server's queue (in a shielded cleanup), so a release after
    that does not hand the lock to nobody: a try-lock gets it at once. The waiter's wake-up connection
    goes over a slow link (a delay proxy) while its lock commands do not, so its subscription outlives its
    cancellation on the server: what matters is the queue, not who listens."""
    admin = client_for(redis_server.port)
    async with (
        FaultProxy(redis_server.port, delay=0.1) as slow,
        RedisLocker(client_for(redis_server.port)) as far,
        RedisLocker(client_for(redis_server.port)) as near,
    ):
        far._driver.subscriber._make_client = lambda: client_for(slow.port)
        for _ in range(3):
            held = await near.obtain("k")
            waiter = asyncio.create_task(far.obtain("k", retry_delay=60, max_retries=1))
            with anyio.fail_after(20):
                while (await admin.pubsub_numsub("distlock:{k}"))[0][1] == 0:  # noqa: ASYNC110 - server state
                    await asyncio.sleep(0.005)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await held.release()
            free = await near.obtain("k", max_retries=0)  # not reserved for the waiter that left
            await free.release()
        await far.client.aclose()
        await near.client.aclose()
    await admin.aclose()


async def _until_subscribers(admin: redis.asyncio.Redis, channel: str, count: int) -> None:
    """Wait (bounded) until ``channel`` has ``count`` subscribers on the server."""
    with anyio.fail_after(20):
        while int((await admin.pubsub_numsub(channel))[0][1]) != count:  # noqa: ASYNC110 - server state
            await asyncio.sleep(0.005)


async def test_the_wake_up_connection_comes_back_after_it_failed_under_waiters(redis_server: RedisServer) -> None:
    """The waiter's wake-up connection goes through a proxy that is cut (the connection aborted, new ones
    refused) while the waiter waits, then healed: the subscriber connects again by itself and subscribes
    the waiting key, so the next release wakes the waiter (a waiter of a busy key would otherwise learn of
    each hand-off only by its once-a-second touch, until the key has no waiter left). Cut again, the
    waiter gives up while the subscriber is between tries: nothing is left behind. The wake-up client has
    no retries of redis-py's own: theirs end after a few tries, an outage can last longer."""
    admin = client_for(redis_server.port)
    channel = "distlock:{k}"
    async with (
        FaultProxy(redis_server.port) as link,
        RedisLocker(client_for(redis_server.port)) as waiting,
        RedisLocker(client_for(redis_server.port)) as holding,
    ):
        subscriber = waiting._driver.subscriber
        subscriber._make_client = lambda: client_for(link.port, retry=Retry(NoBackoff(), 0))
        held = await holding.obtain("k")
        waiter = asyncio.create_task(waiting.obtain("k", retry_delay=60, max_retries=1))
        await _until_subscribers(admin, channel, 1)
        link.cut()
        await _until_subscribers(admin, channel, 0)
        await asyncio.sleep(0.5)  # a few tries to connect again are refused
        assert not waiter.done()
        link.heal()
        await _until_subscribers(admin, channel, 1)
        await held.release()
        with anyio.fail_after(20):
            lock = await waiter
        assert await admin.get(channel) == lock.token.encode() + b" " + lock.holder.encode()
        await lock.release()

        held = await holding.obtain("k")
        waiter = asyncio.create_task(waiting.obtain("k", retry_delay=60, max_retries=1))
        await _until_subscribers(admin, channel, 1)
        link.cut()
        await asyncio.sleep(0.3)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert subscriber.queues == {}
        await held.release()
        await waiting.client.aclose()
        await holding.client.aclose()
    await admin.aclose()


async def test_a_lock_whose_refresh_hangs_is_lost_when_its_ttl_may_have_run_out(own_redis: RedisServer) -> None:
    """The server freezes (SIGSTOP) under a ``lock()`` with a TTL of 1 s and a deadline of 60 s per command:
    its refresh hangs. The body is cancelled once the lock may have expired (a second after the last
    refresh was sent), not when the refresh's deadline passes a minute later: by then another process
    could have held the lock for most of that minute. The server resumes once the body is cancelled, so
    that the release on the way out is answered (the lock has expired meanwhile: ``LockLostError``)."""
    locker = RedisLocker(client_for(own_redis.port, socket_timeout=60), Options(ttl=1.0))
    try:
        with anyio.fail_after(15), pytest.raises(LockLostError):
            async with locker.lock("hanging"):
                own_redis.pause()
                try:
                    await asyncio.sleep(120)
                finally:
                    own_redis.resume()
    finally:
        own_redis.resume()
        await locker.aclose()
        await locker.client.aclose()


async def test_a_long_wait_keeps_the_waiters_place_in_the_queue(redis_server: RedisServer) -> None:
    """A waiter whose attempts are a minute apart keeps its place by touching it every second, so the
    queue does not drop it after 3 s: a waiter that queued after it does not overtake it. (Were it
    dropped, the later waiter would get the lock and this test would wait for the first in vain.)"""
    async with lockers_with_own_clients(redis_server.port, Options(), Options(), Options()) as (holder, one, two):
        held = await holder.obtain("long", ttl=30)
        tasks = []
        for locker in (one, two):
            with log_event("is held by another owner; waiting") as queued, anyio.fail_after(20):
                tasks.append(asyncio.create_task(locker.obtain("long", retry_delay=60, max_retries=1)))
                await queued.wait()
        await asyncio.sleep(4.5)  # longer than a place lasts without keep-alives: time passing is the point
        await held.release()
        first, second = tasks
        with anyio.fail_after(20):
            lock = await first
        assert not second.done()
        await lock.release()
        with anyio.fail_after(20):
            await (await second).release()


async def test_eight_tasks_on_one_key_take_turns(redis_server: RedisServer) -> None:
    """8 tasks re-contend at once after holding 1 ms: the locker's FIFO hand-off lets none of them starve."""
    client = client_for(redis_server.port)
    locker = RedisLocker(client, Options(ttl=5, max_retries=10_000, retry_delay=0.1), namespace="fair")
    counts = [0] * 8
    gaps: list[float] = []
    holders: list[int] = []
    released_at: list[float] = []
    loop = asyncio.get_running_loop()
    total = 400

    async def worker(n: int) -> None:
        while sum(counts) < total:
            async with locker.lock("k"):
                now = loop.time()
                if released_at:
                    gaps.append(now - released_at[-1])
                holders.append(n)
                counts[n] += 1
                await asyncio.sleep(0.001)
                released_at.append(loop.time())

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(worker, n)
    await locker.aclose()
    await client.aclose()
    handoffs = sum(1 for a, b in itertools.pairwise(holders) if a != b)
    gaps_ms = sorted(g * 1000 for g in gaps)
    print(
        f"\nfairness: counts={counts} min/max={min(counts) / max(counts):.2f} "
        f"hand-offs to another task={handoffs}/{len(holders) - 1} "
        f"release->next acquire p50={statistics.median(gaps_ms):.2f} ms "
        f"p99={gaps_ms[int(len(gaps_ms) * 0.99)]:.2f} ms"
    )
    assert min(counts) / max(counts) >= 0.5, counts
    assert handoffs >= 0.9 * (len(holders) - 1)


async def test_a_release_wakes_a_waiter_in_another_locker(redis_server: RedisServer) -> None:
    async with lockers_with_own_clients(redis_server.port, Options(), Options(), namespace="wake") as (a, b):
        lock = await a.obtain("k")
        with log_event("subscribed to 'wake:{k}'") as subscribed:
            waiter = asyncio.ensure_future(b.obtain("k", max_retries=1, retry_delay=30))
            await subscribed.wait()
        await lock.release()
        got = await asyncio.wait_for(waiter, 10)  # far below the 30 s retry delay: the release woke it
        await got.release()


async def test_a_waiter_that_arrives_while_the_wake_up_connection_is_dropped_is_still_woken(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last waiter of a locker leaves (it got its lock) and the locker drops its wake-up connection;
    a new waiter arrives while that is under way. Its subscription must go out on a new connection, not on
    the closing one, or no release ever wakes it (it used to wait for its retry slot: about 1 in 50 waits of
    the four-process semaphore benchmark took the whole retry delay). The drop is held open by the test so
    that the new waiter arrives inside it; its retry slot is a minute away, so only a wake-up serves it."""
    async with lockers_with_own_clients(redis_server.port, Options(), Options(), namespace="churn") as (holder, mine):
        first, second = await holder.obtain("k1"), await holder.obtain("k2")
        with log_event("subscribed to 'churn:{k1}'") as subscribed:
            a = asyncio.ensure_future(mine.obtain("k1", max_retries=1, retry_delay=60))
            await asyncio.wait_for(subscribed.wait(), 10)

        subscriber = mine._driver.subscriber
        dropping, proceed = asyncio.Event(), asyncio.Event()
        drop = subscriber._drop_pubsub

        async def held_drop() -> None:
            dropping.set()
            await proceed.wait()
            await drop()

        monkeypatch.setattr(subscriber, "_drop_pubsub", held_drop)
        await first.release()  # a gets k1; the locker's last waiter is gone, so it drops its connection
        await asyncio.wait_for(dropping.wait(), 10)  # (a's obtain ends once the drop is over)
        with log_event("is held by another owner; waiting") as queued:
            b = asyncio.ensure_future(mine.obtain("k2", max_retries=1, retry_delay=60))
            await asyncio.wait_for(queued.wait(), 10)
        for _ in range(20):
            await asyncio.sleep(0)  # b asks to subscribe now, while the old connection is being dropped
        with log_event("subscribed to 'churn:{k2}'") as resubscribed:
            proceed.set()
            got_a = await asyncio.wait_for(a, 10)
            await asyncio.wait_for(resubscribed.wait(), 10)
        await second.release()
        got_b = await asyncio.wait_for(b, 10)  # far below the 60 s retry slot: the release woke it
        for lock in (got_a, got_b):
            await lock.release()


async def test_a_release_hands_the_lock_to_the_queued_waiter_with_its_holder_label(redis_server: RedisServer) -> None:
    """The hand-off writes the head waiter's owner string (token and label) as the lock's value, and the
    message on the lock's channel names it whole, spaces in the label included."""
    async with lockers_with_own_clients(
        redis_server.port, Options(holder="a holder"), Options(holder="the waiter, 2 words+"), namespace="handoff"
    ) as (a, b):
        lock = await a.obtain("k")
        with (
            log_event("is held by another owner; waiting") as queued,
            log_event("subscribed to 'handoff:{k}'") as ready,
        ):
            waiter = asyncio.ensure_future(b.obtain("k", max_retries=1, retry_delay=30))
            await asyncio.wait_for(asyncio.gather(queued.wait(), ready.wait()), 10)
        with log_event("'handoff:{k}' was handed to a waiter of this locker") as woken:
            await lock.release()
            # Handed over on the server by the release itself, before the waiter has confirmed it.
            state = await a.inspect("k")
            assert (state.held, state.holder) == (True, "the waiter, 2 words+")
            await asyncio.wait_for(woken.wait(), 10)  # the message named the waiter, label and all
        got = await asyncio.wait_for(waiter, 10)
        assert got.holder == "the waiter, 2 words+"
        assert got.fencing_token == state.fencing_counter  # the token the hand-off issued
        await got.release()


async def test_a_lock_value_without_a_label_shows_no_holder(redis_server: RedisServer) -> None:
    """A value of an older release (the bare token) or written by hand: held, by nobody we can name."""
    client = client_for(redis_server.port)
    locker = RedisLocker(client, namespace="bare")
    for value in ("0123456789abcdef0123456789abcdef", "someone-else"):
        await client.set("bare:{k}", value, px=10_000)
        state = await locker.inspect("k")
        assert (state.held, state.holder) == (True, None)
    await client.delete("bare:{k}")
    await locker.aclose()
    await client.aclose()


# --- construction and bad input -------------------------------------------------------------------


async def test_bad_arguments_are_refused_with_their_names() -> None:
    with pytest.raises(TypeError, match="client"):
        RedisLocker(object())
    client = redis.asyncio.Redis()
    with pytest.raises(TypeError, match="namespace"):
        RedisLocker(client, namespace=b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace"):
        RedisLocker(client, namespace="")
    with pytest.raises(ValueError, match="braces"):
        RedisLocker(client, namespace="a{b}")
    with pytest.raises(TypeError, match="options"):
        RedisLocker(client, {"ttl": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Redis URL"):
        RedisLocker.from_url("redis://localhost:notaport")


async def test_a_locker_closes_the_client_it_made_but_never_one_it_was_given(redis_server: RedisServer) -> None:
    given = client_for(redis_server.port)
    async with RedisLocker(given) as locker:
        await (await locker.obtain("k")).release()
    assert await given.ping()
    await given.aclose()

    owned = from_url(redis_server.url)
    assert isinstance(owned, RedisLocker)
    await (await owned.obtain("k")).release()
    pool = owned.client.connection_pool
    await owned.aclose()
    assert all(not c.is_connected for c in pool._available_connections)
    with pytest.raises(RuntimeError, match="closed"):
        await owned.obtain("k")


async def test_a_lock_of_a_closed_locker_cannot_be_released_and_opens_no_connection(
    own_redis: RedisServer, admin: redis.asyncio.Redis
) -> None:
    client = client_for(own_redis.port)
    locker = RedisLocker(client)
    lock = await locker.obtain("k", ttl=30)
    await locker.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await lock.release()
    assert len(await admin.client_list()) == 1, "only the admin connection is left"
    assert await admin.pttl("distlock:{k}") > 0, "the lock expires with its TTL"
    await client.aclose()


async def test_unix_socket_url(tmp_path: Any) -> None:
    server = RedisServer("--unixsocket", str(tmp_path / "redis.sock"))
    server.start()
    try:
        locker = from_url(f"unix://{tmp_path / 'redis.sock'}", Options(ttl=5))
        async with locker, await locker.obtain("k") as lock:
            assert 4 < await lock.ttl() <= 5
    finally:
        server.cleanup()


async def test_a_lock_released_by_someone_else_is_not_held(redis_server: RedisServer) -> None:
    client = client_for(redis_server.port)
    async with RedisLocker(client, namespace="other") as locker:
        lock = await locker.obtain("k")
        await client.set("other:{k}", "someone else")
        with pytest.raises(LockNotHeldError):
            await lock.refresh()
        with pytest.raises(LockNotHeldError):
            await lock.release()
        assert await client.get("other:{k}") == b"someone else"
        await client.delete("other:{k}")
    await client.aclose()


# --- TLS and authentication ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TLSRedisServer]:
    yield from running_or_skip(TLSRedisServer())


async def test_tls_with_a_password_from_a_rediss_url(tls_redis: TLSRedisServer) -> None:
    async with from_url(tls_redis.tls_url) as first, from_url(tls_redis.tls_url) as second:
        async with first.lock("tls") as lock:
            with pytest.raises(NotObtainedError):
                await second.obtain("tls", max_retries=0)
            assert await lock.ttl() > 0
        # The release woke nobody and freed the key: the wake-up connection authenticates too.
        async with second.lock("tls", max_retries=0):
            pass


async def test_a_wrong_password_is_a_backend_error_with_nothing_to_undo(
    tls_redis: TLSRedisServer, caplog_debug: pytest.LogCaptureFixture
) -> None:
    async with from_url(f"redis://:wrong@127.0.0.1:{tls_redis.port}/0") as locker:
        with pytest.raises(BackendError, match="password") as info:
            await locker.obtain("k")
    assert isinstance(info.value.__cause__, redis.exceptions.AuthenticationError)
    # Nothing was written, so there is no undo that could fail and warn.
    assert not [r for r in caplog_debug.records if r.levelname == "WARNING"]


async def test_a_certificate_from_an_unknown_authority_is_refused(tls_redis: TLSRedisServer) -> None:
    url = f"rediss://:{tls_redis.password}@127.0.0.1:{tls_redis.tls_port}/0"
    async with from_url(url) as locker:
        with pytest.raises(BackendError, match="certificate"):
            await locker.obtain("k")


async def _acl_user(server: TLSRedisServer, name: str, password: str, keys: str) -> None:
    """An ACL user that may run everything but admin commands, on keys and channels matching ``keys``."""
    admin = client_for(server.port, password=server.password)
    try:
        await admin.acl_setuser(
            name,
            enabled=True,
            reset=True,
            passwords=[f"+{password}"],
            keys=[keys],
            channels=[keys],
            commands=["+@all", "-@dangerous"],
        )
    finally:
        await admin.aclose()


async def test_an_acl_user_confined_to_the_namespace_can_lock_and_no_other(tls_redis: TLSRedisServer) -> None:
    """A least-privilege deployment: the user may touch only ``distlock:*`` keys and channels. Locking,
    waking a waiter and refreshing work; a locker whose namespace lies outside gets a clear error."""
    await _acl_user(tls_redis, "locker", "locker-pass", "distlock:*")
    url = f"redis://locker:locker-pass@127.0.0.1:{tls_redis.port}/0"
    async with from_url(url) as first, from_url(url) as second:
        lock = await first.obtain("acl", ttl=5)
        waiter = asyncio.create_task(second.obtain("acl", ttl=5, retry_delay=60, max_retries=1))
        admin = client_for(tls_redis.port, password=tls_redis.password)
        try:
            while (await admin.pubsub_numsub("distlock:{acl}"))[0][1] == 0:  # noqa: ASYNC110 - the server's state
                await asyncio.sleep(0.005)  # the waiter subscribes on a connection of its own
        finally:
            await admin.aclose()
        await lock.refresh()
        await lock.release()
        with anyio.fail_after(30):  # woken over the channel, not by the 60 s retry
            await (await waiter).release()
    async with RedisLocker.from_url(url, namespace="elsewhere") as outside:
        with pytest.raises(BackendError, match=r"NOPERM|permission"):
            await outside.obtain("acl", max_retries=0)


async def test_a_password_never_shows_in_errors_reprs_or_logs(
    tls_redis: TLSRedisServer, caplog_debug: pytest.LogCaptureFixture
) -> None:
    secret = "hunter2-do-not-print"
    await _acl_user(tls_redis, "locker2", "the-right-one", "distlock:*")
    shown: list[str] = []
    for url in (
        f"redis://locker2:{secret}@127.0.0.1:{tls_redis.port}/0",  # a wrong password, in the userinfo
        f"redis://127.0.0.1:{tls_redis.port}/0?username=locker2&password={secret}",  # in the query
    ):
        async with from_url(url) as locker:
            shown.append(repr(locker))
            with pytest.raises(BackendError) as info:
                await locker.obtain("k", max_retries=0)
        error: BaseException | None = info.value
        while error is not None:
            shown += [str(error), repr(error)]
            error = error.__cause__ or error.__context__
        with pytest.raises(ValueError, match="bogus") as bad:
            from_url(url + "&bogus=1" if "?" in url else url + "?bogus=1")
        shown += [str(bad.value), repr(bad.value)]
    shown += [record.getMessage() for record in caplog_debug.records]
    assert "***" in str(bad.value)  # the URL is shown, redacted
    leaks = [text for text in shown if secret in text]
    assert not leaks, leaks


async def _move_slot(
    cluster: RedisClusterServers, slot: int, target_port: int, *, finish: bool = True
) -> tuple[int, int]:
    """Migrate ``slot`` with its keys to the node on ``target_port``, as ``redis-cli --cluster reshard``
    does (IMPORTING/MIGRATING, MIGRATE, then SETSLOT NODE on every node unless not ``finish``ed); the
    source node's port and the number of keys moved."""
    admins = {port: client_for(port) for port in cluster.ports}
    try:
        ids = {port: await admin.execute_command("CLUSTER", "MYID") for port, admin in admins.items()}  # type: ignore[no-untyped-call]
        owners = [
            port
            for port, admin in admins.items()
            if await admin.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0  # type: ignore[no-untyped-call]
        ]
        (source,) = owners
        await admins[target_port].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])  # type: ignore[no-untyped-call]
        await admins[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target_port])  # type: ignore[no-untyped-call]
        keys = await admins[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)  # type: ignore[no-untyped-call]
        await admins[source].execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)  # type: ignore[no-untyped-call]
        if finish:
            await _assign_slot(cluster, slot, target_port)
        return source, len(keys)
    finally:
        for admin in admins.values():
            await admin.aclose()


async def _assign_slot(cluster: RedisClusterServers, slot: int, port: int) -> None:
    """End a slot's migration: every node learns that the node on ``port`` owns it."""
    admins = [client_for(p) for p in cluster.ports]
    try:
        owner = await admins[cluster.ports.index(port)].execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
        for admin in admins:
            await admin.execute_command("CLUSTER", "SETSLOT", slot, "NODE", owner)  # type: ignore[no-untyped-call]
    finally:
        for admin in admins:
            await admin.aclose()


async def test_a_held_lock_follows_its_slot_to_another_cluster_node() -> None:
    """Resharding moves a held lock's slot to another node. Half way (keys moved, slot not yet
    reassigned) the old node answers ASK and the locker sends the call after ASKING to the new one; once
    the slot is reassigned, MOVED makes it reload the slot map. The lock keeps its key, token, TTL and
    fencing counter throughout, so it still excludes others and the next holder's token is higher."""
    cluster = RedisClusterServers()
    cluster.start()
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0], socket_timeout=5)
    try:
        async with RedisLocker(client) as locker, RedisLocker(client) as other:
            lock = await locker.obtain("moving", ttl=30)
            name = "distlock:{moving}"
            owner = client.get_node_from_key(name)
            assert owner is not None
            target = next(port for port in cluster.ports if port != owner.port)
            slot = key_slot(name.encode())
            # Half way: the keys are on the new node, the slot still belongs to the old one, which answers
            # ASK; the locker asks the new node, as the protocol wants.
            assert await _move_slot(cluster, slot, target, finish=False) == (owner.port, 2)  # lock, counter
            with log_event("asked to") as asked:
                await lock.refresh()
            assert asked.is_set(), "the refresh was not sent to the importing node"
            assert 29 < await lock.ttl() <= 30
            # An obtain needs every key of the lock, its queue's too (which exist only while someone
            # waits): the importing node answers TRYAGAIN until the slot is its own, and the obtain
            # tries again until then -- and then finds the lock held.
            with log_event("trying again in") as refused:
                pending = asyncio.ensure_future(other.obtain("moving", max_retries=0))
                with anyio.fail_after(10):
                    await refused.wait()
            assert not pending.done()
            with log_event("moved") as redirected:
                await _assign_slot(cluster, slot, target)
                with pytest.raises(NotObtainedError):
                    await pending
                await lock.refresh()
            assert redirected.is_set(), "neither the obtain nor the refresh was redirected"
            moved_to = client.get_node_from_key(name)
            assert moved_to is not None
            assert moved_to.port == target
            assert 29 < await lock.ttl() <= 30
            with pytest.raises(NotObtainedError):
                await other.obtain("moving", max_retries=0)
            await lock.release()
            nxt = await other.obtain("moving", max_retries=0)
            assert nxt.fencing_token > lock.fencing_token
            await nxt.release()
    finally:
        await client.aclose()
        cluster.cleanup()


# --- replicas ----------------------------------------------------------------------------------------


async def test_the_replicas_option_releases_a_lock_that_no_replica_has() -> None:
    """With replication cut, a lock on the master alone would be lost by a failover: with ``replicas=1``
    the obtain releases it and raises instead; without the option it succeeds (what the docs warn of)."""
    master = RedisServer("--repl-diskless-sync-delay", "0")  # sync the replica at once, not after 5 s
    master.start()
    replica: RedisServer | None = None
    admin = client_for(master.port)
    try:
        async with FaultProxy(master.port) as link:
            replica = RedisServer("--replicaof", "127.0.0.1", str(link.port))
            replica.start()
            replica_admin = client_for(replica.port)
            with anyio.fail_after(20):
                while (await replica_admin.info("replication"))["master_link_status"] != "up":  # noqa: ASYNC110
                    await asyncio.sleep(0.02)  # the replica's full sync: no event to await
            await replica_admin.aclose()
            async with (
                # WAIT returns as soon as the replica acknowledges: a generous timeout costs nothing here,
                # and a busy machine may need it.
                RedisLocker.from_url(master.url, replicas=1, replica_timeout=10) as patient,
                RedisLocker.from_url(master.url, replicas=1, replica_timeout=0.2) as careful,
                RedisLocker.from_url(master.url) as plain,
            ):
                lock = await patient.obtain("k")
                await lock.release()

                link.blackhole()
                with pytest.raises(BackendError, match="reached 0 of 1 replicas"):
                    await careful.obtain("k")
                assert await admin.exists("distlock:{k}") == 0, "the unreplicated lock was not released"

                unsafe = await plain.obtain("k")
                await unsafe.release()
                link.heal()
    finally:
        await admin.aclose()
        if replica is not None:
            replica.cleanup()
        master.cleanup()


async def _until(probe: Any, limit: float = 60) -> None:
    """Poll a server's state (there is no event to await) until ``probe()`` is true."""
    with anyio.fail_after(limit):
        while not await probe():  # noqa: ASYNC110 - servers' state
            await asyncio.sleep(0.05)


async def test_a_sentinel_failover_with_replication_cut_loses_the_lock_unless_replicas_is_set() -> None:
    """The failure the Redis docs warn of, on real servers: replication to the replica is cut, a lock is
    granted on the master alone, the master hangs and Sentinel promotes the replica, which never saw the
    lock. A second client then obtains the same key: two holders (with a higher fencing token, which is
    what lets the resource reject the first). The first holder's refresh then fails. With
    ``replicas=1`` the same obtain raises ``BackendError`` at once, leaving no lock."""
    async with contextlib.AsyncExitStack() as stack:
        master = RedisServer("--repl-diskless-sync-delay", "0")
        stack.callback(master.cleanup)
        master.start()
        admin = client_for(master.port)
        stack.push_async_callback(admin.aclose)
        link = await stack.enter_async_context(FaultProxy(master.port))
        replica = RedisServer("--replicaof", "127.0.0.1", str(link.port))
        stack.callback(replica.cleanup)
        replica.start()
        replica_admin = client_for(replica.port)
        stack.push_async_callback(replica_admin.aclose)

        async def replica_synced() -> bool:
            return bool((await replica_admin.info("replication"))["master_link_status"] == "up")

        await _until(replica_synced)
        sentinel = _Sentinel(master.port, "mymaster")
        stack.callback(sentinel.cleanup)
        sentinel.start()
        sentinels = Sentinel([("127.0.0.1", sentinel.port)], socket_timeout=2)  # type: ignore[no-untyped-call,unused-ignore]
        for connection in sentinels.sentinels:
            stack.push_async_callback(connection.aclose)

        async def replica_known() -> bool:
            return bool(await sentinels.discover_slaves("mymaster"))

        async def promoted() -> bool:
            try:
                return bool(await sentinels.discover_master("mymaster") == ("127.0.0.1", replica.port))
            except MasterNotFoundError:
                return False  # Sentinel names no master while the failover runs

        async def locker(**kwargs: Any) -> RedisLocker:
            client = sentinels.master_for("mymaster", socket_timeout=2)
            stack.push_async_callback(client.aclose)
            return await stack.enter_async_context(RedisLocker(client, **kwargs))

        await _until(replica_known)
        first, careful = await locker(), await locker(replicas=1, replica_timeout=0.3)
        link.blackhole()  # the replica hears nothing from the master from now on
        with pytest.raises(BackendError, match="reached 0 of 1 replicas"):
            await careful.obtain("k")
        assert await admin.exists("distlock:{k}") == 0, "the unreplicated lock was not released"
        lock = await first.obtain("k", ttl=60)  # on the master alone

        master.pause()  # Sentinel sees it down after 1 s and promotes the replica
        await _until(promoted)
        other = await (await locker()).obtain("k", max_retries=0)  # the lock was lost with the old master
        assert other.fencing_token > lock.fencing_token
        # The old master never comes back (had it been resumed, the first holder's refreshes would succeed
        # there until Sentinel demoted it, up to 10 s later: the split brain only fencing resolves).
        master.kill()
        with pytest.raises((LockNotHeldError, BackendError)):
            await lock.refresh()
        await other.release()
        link.heal()


async def test_bad_replica_settings_are_refused_with_their_names() -> None:
    client = redis.asyncio.Redis()
    with pytest.raises(TypeError, match="replicas"):
        RedisLocker(client, replicas=True)
    with pytest.raises(ValueError, match="replicas"):
        RedisLocker(client, replicas=-1)
    with pytest.raises(ValueError, match="replica_timeout"):
        RedisLocker(client, replicas=1, replica_timeout=0)
    with pytest.raises(ValueError, match="replicas"):
        RedisLocker.from_url("redis://localhost", replicas=-1)
    await client.aclose()


# --- the network between the locker and the server --------------------------------------------------


async def test_a_blackholed_connection_fails_within_the_deadline_and_the_locker_recovers(
    redis_server: RedisServer,
) -> None:
    async with FaultProxy(redis_server.port) as link:
        client = client_for(link.port, socket_timeout=0.3, socket_connect_timeout=0.3)
        async with RedisLocker(client, namespace="blackhole") as locker:
            lock = await locker.obtain("k")
            link.blackhole()
            with anyio.fail_after(5), pytest.raises(BackendError, match=r"no reply within 0\.3 s"):
                await lock.refresh()
            link.heal()
            # The silent connection was dropped; the next command reconnects, and the lock is still ours.
            await lock.release()
        await client.aclose()


async def test_a_cut_connection_fails_at_once_and_the_locker_reconnects(redis_server: RedisServer) -> None:
    async with FaultProxy(redis_server.port) as link:
        client = client_for(link.port, socket_timeout=5, socket_connect_timeout=5)
        async with RedisLocker(client, namespace="cut") as locker:
            lock = await locker.obtain("k")
            link.cut()
            with anyio.fail_after(2), pytest.raises(BackendError):  # a reset, not the 5 s deadline
                await lock.refresh()
            link.heal()
            await lock.refresh()
            await lock.release()
        await client.aclose()
