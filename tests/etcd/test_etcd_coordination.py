"""Semaphores and elections on etcd: the key layout, interop with ``etcdctl elect``, nested names, an
observation across a compaction, a semaphore queue that moves on when an operator revokes a waiter's lease.

After every test, the package's lease audit (``conftest.py``) checks that the server has no lease that a
handed-out permit, term or lock does not explain, and no watch left open.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aetcd
import anyio
import pytest
from aetcd import rpc

from distlock_async import Election, EtcdLocker, Leader, Lock, NotObtainedError, Observation, Options, Term
from distlock_async._backends.etcd.streams import Watch
from distlock_async.testing.servers import EtcdServer, find_binary

from ..etcd_helpers import TracingEtcdLocker, has_keys, keys, leases, poll_until, revoke, watchers
from ..helpers import WAITING, log_event

pytestmark = pytest.mark.anyio

LIMIT = 20.0
SEMAPHORES = "distlock.semaphore/"
ELECTIONS = "distlock.election/"


async def next_leader(observation: Observation, within: float = LIMIT) -> Leader | None:
    with anyio.fail_after(within):
        return await observation.__anext__()


@asynccontextmanager
async def observe_unled(election: Election) -> AsyncIterator[Observation]:
    """An observation of ``election`` that has reported its first state: nobody leads."""
    async with election.observe() as leaders:
        assert await next_leader(leaders) is None
        yield leaders


async def test_inspect_semaphore_counts_each_key_by_the_limit_it_records(make: Any, admin: aetcd.Client) -> None:
    """The reader knows no limit: each key's value records its caller's. A key written by hand (no limit)
    counts as holding; a nested name's key is not the name's; a waiter that a release let in counts as
    holding from the release on."""
    locker = make(Options(holder="first"))
    first = await locker.obtain_permit("inspected", 1)
    by_hand = f"{SEMAPHORES}inspected/abc".encode()  # a lease ID's shape: a key of the name
    nested = f"{SEMAPHORES}inspected/sub/1".encode()
    await admin.put(by_hand, b"token-by-hand")
    await admin.put(nested, b"token 5 nested")
    try:
        state = await locker.inspect_semaphore("inspected")
        assert (state.held, state.holders, state.waiting) == (2, ("first", None), 0)
        with log_event(WAITING) as queued, anyio.fail_after(LIMIT):
            waiter = asyncio.ensure_future(
                make(Options(holder="second")).obtain_permit("inspected", 2, max_retries=1, retry_delay=60)
            )
            await queued.wait()
        state = await locker.inspect_semaphore("inspected")
        assert (state.held, state.holders, state.waiting) == (2, ("first", None), 1)
        await first.release()
        state = await locker.inspect_semaphore("inspected")
        assert (state.held, state.holders, state.waiting) == (2, (None, "second"), 0)
        with anyio.fail_after(LIMIT):
            second = await waiter
        assert state.fencing_counter is not None
        assert second.fencing_token < state.fencing_counter, "the waiter's key was created before the read"
        await second.release()
    finally:
        await admin.delete(by_hand)
        await admin.delete(nested)


# --- key layout -----------------------------------------------------------------------------------------


async def test_permits_and_candidates_have_prefixes_of_their_own(make: Any, admin: aetcd.Client) -> None:
    locker = make()
    lock = await locker.obtain("x")
    permit = await locker.obtain_permit("x", 2)
    async with locker.election("x").campaign("me") as term:
        [lock_kv] = await keys(admin, "distlock/")
        [permit_kv] = await keys(admin, SEMAPHORES)
        [term_kv] = await keys(admin, ELECTIONS)
        assert lock_kv.key == f"distlock/x/{lock._handle.lease_id:x}".encode()
        assert permit_kv.key == f"{SEMAPHORES}x/{permit._handle.lease_id:x}".encode()
        # As a lock key's (token, holder), with the caller's limit between: inspect_semaphore reads it.
        assert permit_kv.value == f"{permit.token} 2 {permit.holder}".encode()
        assert permit_kv.create_revision == permit.fencing_token
        assert term_kv.key == f"{ELECTIONS}x/{term._handle.lease_id:x}".encode()
        assert term_kv.value == b"me"  # Go's Election: the key holds the proposal
        assert term_kv.create_revision == term.fencing_token
        assert term_kv.lease == term._handle.lease_id
        await term.proclaim("still me")
        [term_kv] = await keys(admin, ELECTIONS)
        assert term_kv.value == b"still me"
        assert term_kv.lease == term._handle.lease_id  # a proclaim keeps the key on its lease
    assert await keys(admin, ELECTIONS) == []
    await permit.release()
    await lock.release()


async def test_an_empty_namespace_has_no_semaphores_or_elections(etcd_server: EtcdServer) -> None:
    locker = EtcdLocker.from_url(f"etcd://{etcd_server.endpoint}", namespace="")
    with pytest.raises(ValueError, match="empty namespace has no semaphores"):
        locker.semaphore("s", 2)
    with pytest.raises(ValueError, match="empty namespace has no elections"):
        locker.election("e").campaign("v")
    await locker.aclose()


# --- etcdctl elect -------------------------------------------------------------------------------------


#: The TTL of an ``etcdctl elect`` session's lease (Go's ``concurrency`` default); the tests' lockers use 30 s.
ETCDCTL_SESSION_TTL = 60


class Etcdctl:
    """``etcdctl elect`` processes. Their session leases (etcdctl leaves them to expire after 60 s, and
    ``-l`` makes one too) are revoked at the end, so that the lease audit stays exact."""

    def __init__(self, server: EtcdServer, admin: aetcd.Client, before: set[int]) -> None:
        self.server = server
        self.admin = admin
        self.before = before
        self.processes: list[asyncio.subprocess.Process] = []

    async def elect(self, *args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            find_binary("etcdctl"),
            f"--endpoints={self.server.endpoint}",
            "elect",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={"ETCDCTL_API": "3"},
        )
        self.processes.append(proc)
        return proc

    async def aclose(self) -> None:
        for proc in self.processes:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
        for lease_id in await leases(self.admin) - self.before:
            info = await self.admin.leasestub.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease_id), timeout=5)
            if info.grantedTTL == ETCDCTL_SESSION_TTL:
                await revoke(self.admin, lease_id)


@pytest.fixture
async def etcdctl(etcd_server: EtcdServer, admin: aetcd.Client) -> AsyncIterator[Etcdctl]:
    tool = Etcdctl(etcd_server, admin, await leases(admin))
    try:
        yield tool
    finally:
        await tool.aclose()


async def read_line(proc: asyncio.subprocess.Process) -> bytes:
    assert proc.stdout is not None
    with anyio.fail_after(LIMIT):
        return (await proc.stdout.readline()).rstrip(b"\n")


async def test_etcdctl_elect_listen_observes_our_campaign_and_proclaim(make: Any, etcdctl: Etcdctl) -> None:
    listener = await etcdctl.elect("-l", f"{ELECTIONS}jobs")
    async with make().election("jobs").campaign("replica-1") as term:
        key = f"{ELECTIONS}jobs/{term._handle.lease_id:x}".encode()
        assert await read_line(listener) == key
        assert await read_line(listener) == b"replica-1"
        await term.proclaim("replica-1 at v2")
        assert await read_line(listener) == key
        assert await read_line(listener) == b"replica-1 at v2"


async def test_an_etcdctl_leader_is_observed_and_our_candidate_queues_behind_it_until_it_resigns(
    make: Any, admin: aetcd.Client, etcdctl: Etcdctl
) -> None:
    election = make().election("go-first")
    async with observe_unled(election) as leaders:
        go = await etcdctl.elect(f"{ELECTIONS}go-first", "go-1")
        go_key = await read_line(go)  # printed once elected
        assert await read_line(go) == b"go-1"
        [go_kv] = await keys(admin, f"{ELECTIONS}go-first/")
        assert go_kv.key == go_key
        assert await next_leader(leaders) == Leader("go-1", go_kv.create_revision)
        assert await election.leader() == Leader("go-1", go_kv.create_revision)

        elected: asyncio.Future[Term] = asyncio.get_running_loop().create_future()
        resign = asyncio.Event()

        async def candidate() -> None:
            async with election.campaign("py") as term:
                elected.set_result(term)
                await resign.wait()

        task = asyncio.ensure_future(candidate())
        try:
            await poll_until(lambda: has_keys(admin, f"{ELECTIONS}go-first/", 2))  # ours queued behind
            await asyncio.sleep(0.2)
            assert not elected.done(), "our candidate led while etcdctl's did"
            go.send_signal(signal.SIGINT)  # etcdctl resigns: deletes its key
            with anyio.fail_after(LIMIT):
                term = await elected
            assert term.fencing_token > go_kv.create_revision
            assert await next_leader(leaders) == Leader("py", term.fencing_token)
            with anyio.fail_after(LIMIT):
                assert await go.wait() == 0
        finally:
            resign.set()
            with anyio.fail_after(LIMIT):
                await task
        assert await next_leader(leaders) is None  # we report "nobody leads" (Go's observe does not)


async def test_an_etcdctl_candidate_queues_behind_our_leader_and_leads_when_we_resign(
    make: Any, admin: aetcd.Client, etcdctl: Etcdctl
) -> None:
    election = make().election("py-first")
    async with observe_unled(election) as leaders:
        async with election.campaign("py") as term:
            assert await next_leader(leaders) == Leader("py", term.fencing_token)
            go = await etcdctl.elect(f"{ELECTIONS}py-first", "go-2")
            await poll_until(lambda: has_keys(admin, f"{ELECTIONS}py-first/", 2))
            printed = asyncio.ensure_future(read_line(go))
            await asyncio.sleep(0.2)
            assert not printed.done(), "etcdctl was elected while we led"
            assert await election.leader() == Leader("py", term.fencing_token)
        go_key = await printed
        assert await read_line(go) == b"go-2"
        [go_kv] = await keys(admin, f"{ELECTIONS}py-first/")
        assert go_kv.key == go_key
        assert go_kv.create_revision > term.fencing_token
        assert await next_leader(leaders) == Leader("go-2", go_kv.create_revision)


# --- nested names ----------------------------------------------------------------------------------------


async def test_nested_semaphore_names_do_not_count_against_each_other(make: Any) -> None:
    locker = make()
    # Keys of a/b and a/f00d live under a/'s prefix, created before a's: they must not take a's permits.
    nested = [await locker.obtain_permit(name, 1) for name in ("a/b", "a/f00d")]
    first, second = [await locker.obtain_permit("a", 2, max_retries=0) for _ in range(2)]
    with pytest.raises(NotObtainedError):
        await locker.obtain_permit("a", 2, max_retries=0)
    # A waiter on a (rank 2, one deletion ahead needed) is not let in by a nested name's release...
    with log_event(WAITING) as queued, anyio.fail_after(LIMIT):
        waiter = asyncio.ensure_future(make().obtain_permit("a", 2, max_retries=1, retry_delay=60))
        await queued.wait()
    await nested[0].release()
    await asyncio.sleep(0.3)
    assert not waiter.done(), "a nested name's release let a waiter of the parent in"
    # ... but by a's own.
    await first.release()
    with anyio.fail_after(LIMIT):
        permit = await waiter
    assert permit.fencing_token > second.fencing_token
    for held in (permit, second, nested[1]):
        await held.release()


async def test_nested_election_names_do_not_interfere(make: Any) -> None:
    parent, child = make().election("a"), make().election("a/b")
    async with child.campaign("child") as child_term, parent.observe() as leaders:
        # The child's key, under a/'s prefix and created first, is not a's leader.
        assert await parent.leader() is None
        assert await next_leader(leaders) is None
        async with parent.campaign("parent") as parent_term:
            assert await next_leader(leaders) == Leader("parent", parent_term.fencing_token)
            assert await child.leader() == Leader("child", child_term.fencing_token)
            await child_term.proclaim("child 2")
            async with make().election("a/b/c").campaign("grandchild"):
                await parent_term.proclaim("parent 2")
                # Changes of nested names come and go without showing as a's leader.
                assert await next_leader(leaders) == Leader("parent 2", parent_term.fencing_token)
        assert await next_leader(leaders) is None
        assert await child.leader() == Leader("child 2", child_term.fencing_token)


# --- observe across a compaction --------------------------------------------------------------------------


def _compact_now(server: EtcdServer) -> int:
    """Write a key twice and compact the store up to the second write, so that everything before it is
    gone (blocking: it runs inside a synchronous hook); the revision compacted to."""
    etcdctl = [find_binary("etcdctl"), f"--endpoints={server.endpoint}"]
    env = {"ETCDCTL_API": "3"}

    def run(*args: str) -> bytes:
        return subprocess.run([*etcdctl, *args], env=env, capture_output=True, check=True, timeout=10).stdout

    run("put", "compaction-test", "1")
    revision = int(json.loads(run("put", "-w", "json", "compaction-test", "2"))["header"]["revision"])
    run("compact", str(revision))
    run("del", "compaction-test")
    return revision


async def test_observe_goes_on_after_its_watch_start_revision_was_compacted(make: Any, etcd_server: EtcdServer) -> None:
    """etcd issue 7815's class: the store is compacted past the revision the observation's watch starts
    from (between its read and its watch); the watch is cancelled as compacted, and the observation reads
    again and watches anew instead of ending or going deaf."""
    locker: TracingEtcdLocker = make()
    watches = locker._driver.watches
    create = watches.watch
    compacted: list[tuple[Watch, int]] = []

    def watch_after_a_compaction(key: bytes, start_revision: int, **kwargs: Any) -> Watch:
        revision = _compact_now(etcd_server) if not compacted else 0
        watch = create(key, start_revision, **kwargs)
        if not compacted:
            assert revision > start_revision  # compacted past the watch's start
            compacted.append((watch, revision))
        return watch

    watches.watch = watch_after_a_compaction  # type: ignore[method-assign]
    election = locker.election("compacted")
    # The bound is well below the observation's fallback re-read (30 s): only a new watch sees this.
    async with observe_unled(election) as leaders, make().election("compacted").campaign("after") as term:
        assert await next_leader(leaders, within=10.0) == Leader("after", term.fencing_token)
        await term.proclaim("after 2")
        assert await next_leader(leaders, within=10.0) == Leader("after 2", term.fencing_token)
    [(first_watch, _)] = compacted
    assert first_watch.over, "the first watch was not ended by the compaction: the test tested nothing"


# --- a semaphore queue and an operator --------------------------------------------------------------------


async def test_a_semaphore_queue_moves_on_when_an_operator_revokes_a_waiters_lease(
    make: Any, admin: aetcd.Client
) -> None:
    """Two permits held, two waiters queued; an operator revokes the first waiter's lease (its key
    vanishes). The second waiter, which needed two keys ahead of it to go, now needs one: the next
    release lets it in, and the first waiter, which queued again at the back, comes after it."""
    holders = [await make().obtain_permit("ops", 2) for _ in range(2)]
    served: list[tuple[str, Lock]] = []

    async def wait(name: str) -> None:
        permit = await make().obtain_permit("ops", 2, ttl=3, max_retries=1, retry_delay=60)
        served.append((name, permit))

    tasks = []
    for name in ("w1", "w2"):
        with log_event(WAITING) as queued, anyio.fail_after(LIMIT):
            tasks.append(asyncio.ensure_future(wait(name)))
            await queued.wait()
    queue = await keys(admin, f"{SEMAPHORES}ops/")
    assert len(queue) == 4
    w1 = queue[2]
    with log_event("the lease of our key") as requeued:
        await revoke(admin, w1.lease)
        with anyio.fail_after(LIMIT):
            await requeued.wait()  # w1 noticed (its keep-alive) and queued again, behind w2
    assert not any(task.done() for task in tasks)
    await holders[0].release()
    with anyio.fail_after(LIMIT):
        await tasks[1]
    assert [name for name, _ in served] == ["w2"]
    await holders[1].release()
    with anyio.fail_after(LIMIT):
        await tasks[0]
    assert [name for name, _ in served] == ["w2", "w1"]
    assert served[1][1].fencing_token > served[0][1].fencing_token > w1.create_revision
    for _, permit in served:
        await permit.release()


# --- nothing left behind ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["budget spent", "cancelled"])
async def test_a_semaphore_waiter_that_leaves_takes_its_key_lease_and_watch_along(
    make: Any, admin: aetcd.Client, etcd_server: EtcdServer, how: str
) -> None:
    holders = [await make().obtain_permit("leave", 2) for _ in range(2)]
    before = await leases(admin)
    if how == "budget spent":
        with pytest.raises(NotObtainedError):
            await make().obtain_permit("leave", 2, max_retries=2, retry_delay=0.1)
    else:
        with log_event(WAITING) as queued, anyio.fail_after(LIMIT):
            task = asyncio.ensure_future(make().obtain_permit("leave", 2, max_retries=1, retry_delay=60))
            await queued.wait()
        await poll_until(lambda: _watching(etcd_server, 1))  # its range watch is on the server
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [kv.create_revision for kv in await keys(admin, f"{SEMAPHORES}leave/")] == [
        holder.fencing_token for holder in holders
    ]
    assert await leases(admin) == before
    await poll_until(lambda: _watching(etcd_server, 0))
    for holder in holders:
        await holder.release()


async def _watching(server: EtcdServer, n: int) -> bool:
    await asyncio.sleep(0)
    return watchers(server.port) == n


async def test_a_closed_observation_cancels_its_watch_on_the_server(make: Any, etcd_server: EtcdServer) -> None:
    locker = make()
    async with observe_unled(locker.election("seen")):
        await poll_until(lambda: _watching(etcd_server, 1))
    await poll_until(lambda: _watching(etcd_server, 0))
    assert not locker._driver.watches._watches
