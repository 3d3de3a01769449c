"""Mutual exclusion on a 3-member etcd cluster under member faults, checked by tests/fencing.py.

The faults: a follower killed (SIGKILL) and restarted; the leader killed and restarted; the leader
frozen (SIGSTOP) past the election timeout, then resumed; the leader cut off from the other two members
in a network namespace of its own while its clients still reach it (a minority partition). The members
run with fast raft timers (20 ms heartbeat, 200 ms election timeout), the locks with a 1 s TTL, and every
worker talks to the cluster with a 1 s deadline per request.

What etcd promises, and these tests hold it to: losing a minority of members, the leader included, never
lets two workers hold the lock at once (0 overlaps, not merely 0 stale writes accepted), because a lease
is never shortened by a leader change (its TTL is reset to full). A holder cut off in a minority cannot
keep its lease alive, loses the lock at its TTL, and the majority hands it on with a higher fencing
token; the fenced store then refuses the old holder's late writes. In every case each worker finishes its
sections once the fault has healed, and no lock key and no lease is left afterwards.

All of it is tier 2 (``pytest -m "not tier2"`` leaves it out): clusters, and the partition needs root.
Each test prints its figures as a ``FIGURES {json}`` line (see tests/test_faults.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aetcd
import pytest
from aetcd import rpc

from distlock_async import EtcdLocker, EtcdOptions, Options
from distlock_async.testing.servers import EtcdCluster, EtcdServer, running

from . import netns
from .fencing import Figures, Run, check
from .test_faults import FINISH, NAMES, TTL, _await_holder, assert_no_etcd_lock_left

pytestmark = pytest.mark.tier2

#: Seconds within which a cluster must show the state a test waits for (an election, a grant).
SETTLE = 30.0


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    """A cluster of this test's own, since the test kills or pauses its members."""
    yield from running(EtcdCluster())


@pytest.fixture
def partitionable() -> Iterator[netns.PartitionableCluster]:
    """A cluster whose first member sits in a network namespace of its own; skipped when not root."""
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    namespace = netns.Namespace()
    try:
        try:
            namespace.create()
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create a network namespace here (ip {' '.join(exc.cmd[1:])}): {exc.stderr.strip()}")
        cluster = netns.PartitionableCluster(namespace)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.cleanup()
    finally:
        namespace.cleanup()  # the namespace, its links and their addresses: nothing else was touched


# --- the cluster's state, as its members report it --------------------------------------------------------


def _gauge(member: EtcdServer, name: str) -> float | None:
    """A gauge of ``member``'s metrics, read where the member listens (its own address in a namespace)."""
    host, port = member.endpoint.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        match = re.search(rb"^" + name.encode() + rb" (\S+)$", conn.getresponse().read(), re.MULTILINE)
    finally:
        conn.close()
    return None if match is None else float(match.group(1))


def _is_leader(member: EtcdServer) -> bool:
    return _gauge(member, "etcd_server_is_leader") == 1.0


def _has_leader(member: EtcdServer) -> bool:
    """Whether ``member`` believes it has a leader (a member cut off notices only after an election
    timeout without heartbeats; until then its writes wait for a quorum that never answers)."""
    return _gauge(member, "etcd_server_has_leader") == 1.0


def _await_leaderless(member: EtcdServer) -> None:
    deadline = time.monotonic() + SETTLE
    while _has_leader(member):
        assert time.monotonic() < deadline, f"{member.member} still has a leader after {SETTLE} s"
        time.sleep(0.01)  # another process's state: there is no event to await


def _await_leader(members: list[EtcdServer], target: EtcdServer | None = None) -> EtcdServer:
    """The leader among ``members`` (running ones only: a frozen member would not answer), once there is
    exactly one (and it is ``target``, if given)."""
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            leaders = [member for member in members if _is_leader(member)]
            if len(leaders) == 1 and target in (None, leaders[0]):
                return leaders[0]
        time.sleep(0.01)  # another process's state: there is no event to await
    raise AssertionError(f"no leader among {[m.member for m in members]} within {SETTLE} s")


async def _move_leader(cluster: EtcdCluster, target: EtcdServer) -> None:
    leader = _await_leader(cluster.members)
    if leader is target:
        return
    host, port = target.endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port), timeout=5)
    try:
        await client.connect()
        target_id = (await client.maintenancestub.Status(rpc.StatusRequest(), timeout=5)).header.member_id
    finally:
        await client.close()
    host, port = leader.endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port), timeout=5)
    try:
        await client.connect()
        await client.maintenancestub.MoveLeader(rpc.MoveLeaderRequest(targetID=target_id), timeout=5)
    finally:
        await client.close()
    _await_leader(cluster.members, target)


def _urls(cluster: EtcdCluster, first: EtcdServer) -> list[str]:
    """Every worker gets every endpoint; two of them talk to ``first`` (gRPC's pick_first), one to another."""
    others = [member.endpoint for member in cluster.members if member is not first]
    orders = [[first.endpoint, *others], [first.endpoint, *others[::-1]], [*others, first.endpoint]]
    return ["etcd://" + ",".join(order) for order in orders]


def _run(urls: list[str], tmp_path: Path, **kwargs: Any) -> Run:
    return Run(urls[0], tmp_path, workers=len(urls), ttl=TTL, urls=urls, **kwargs)


def _await_record(run: Run, what: str, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first record any worker logged that ``matches``, waiting (bounded) for one."""
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        for record in run.records():
            if matches(record):
                return record
        time.sleep(0.005)  # another process's progress: there is no event to await
    raise AssertionError(f"{what} within {SETTLE} s: {run.records()[-8:]}")


def _no_lock_left(member: EtcdServer, figures: Figures, kind: str = "lock") -> None:
    asyncio.run(assert_no_etcd_lock_left(member.endpoint, figures, NAMES[kind][1]))


def _assert_exclusive_throughout(counts: dict[str, int]) -> None:
    """What etcd promises through the loss of a minority of members: never two holders at once (0 overlaps,
    not merely 0 stale writes accepted), so the fenced store never had to refuse a write."""
    assert counts["overlaps"] == 0, counts
    assert counts["rejected"] == 0, counts


def _valid_view(run: Run, since: int, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The observer's first record, logged at ``since`` or later, of a leader that was leading when it was
    seen: its worker had logged the grant of that term, and had not yet resigned it (or given up)."""
    granted = {r["token"] for r in records if r["event"] == "obtained"}
    ended = {r["token"]: r["ended_at"] for r in records if r["event"] == "term" and "token" in r}
    for seen in run.seen():
        token = seen.get("token")
        if (
            seen["event"] == "seen"
            and seen["at"] >= since
            and token in granted
            and seen["at"] <= ended.get(token, seen["at"])
        ):
            return seen
    return None


# --- the tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_member_killed_and_restarted(cluster: EtcdCluster, tmp_path: Path, role: str, figures: Figures) -> None:
    """kill -9 of a member while a worker holds the lock, twice; restarted once the lock has changed hands
    without it. ``follower``: a follower that two of the workers talk to, the same one both times.
    ``leader``: the leader (the second time the new leader), restarted once the others have also elected
    a leader.

    Expected: the workers fail over to another member (a typed error at worst); a dead leader costs an
    election (~0.4 s with these timers) during which requests are retried, and the new leader resets
    every lease to its full TTL, so no lock ends early. etcd keeps mutual exclusion throughout -- 0
    overlaps, so 0 writes refused; every worker finishes; nothing left behind.
    """
    leader = _await_leader(cluster.members)
    victim = leader if role == "leader" else next(member for member in cluster.members if member is not leader)
    fault = f"{role}_kill9_restart"
    figures.update(backend="etcd-cluster", faults={fault: 0})
    with _run(_urls(cluster, victim), tmp_path, sections=8) as run:
        token = 0
        for _ in range(2):
            if role == "leader":
                victim = _await_leader(cluster.members)
            holder = _await_holder(run, token)
            victim.kill()
            figures["faults"][fault] += 1
            if role == "leader":
                _await_leader([member for member in cluster.members if member is not victim])  # a new one elected
            token = int(_await_holder(run, int(holder["token"]))["token"])  # granted with the member down
            victim.start()
        run.wait(FINISH)
    counts = check(run, figures)
    assert counts["sections"] == 24, counts
    _assert_exclusive_throughout(counts)
    _no_lock_left(cluster.members[0], figures)


def test_leader_killed_while_an_election_runs(cluster: EtcdCluster, tmp_path: Path, figures: Figures) -> None:
    """kill -9 of the etcd leader while three workers take turns leading a distlock election (each term:
    3 fenced writes) and an observer, whose watch is on that member, follows it; twice (the second time
    the new etcd leader); restarted once the survivors have elected a leader and the observer has seen a
    valid distlock leader.

    Expected: the observer, its stream broken or failed over, again sees a distlock leader that is leading
    when it sees it (the same one, still valid, or its successor); etcd resets leases to their full TTL on
    a leader change, so no term ends early: 0 overlaps, 0 writes refused, one leader per token; the
    observer never sees an older leader after a newer one, and sees nobody lead at the end; every worker
    finishes; nothing is left behind.

    Figures: ``etcd_leader_elected_ms`` (kill to a survivor leading) and ``observer_valid_leader_ms``
    (kill to the observer seeing a valid distlock leader), per kill. Timing is not asserted beyond the
    liveness bound ``SETTLE``: timing claims belong in the benchmarks.
    """
    leader = _await_leader(cluster.members)
    urls = _urls(cluster, leader)
    figures.update(
        backend="etcd-cluster",
        mode="election",
        faults={"leader_kill9_restart": 0},
        etcd_leader_elected_ms=[],
        observer_valid_leader_ms=[],
    )
    # The observer is started with the first worker's endpoints: the leader first.
    with Run(
        urls[0], tmp_path, workers=3, ttl=TTL, urls=urls, mode="election", writes=3, sections=6, observers=1
    ) as run:
        token = 0
        for _ in range(2):
            leader = _await_leader(cluster.members)
            holder = _await_holder(run, token)
            _await_record(run, "no worker ended a term", lambda r: r["event"] == "term" and "token" in r)
            leader.kill()
            killed_at = time.monotonic_ns()
            figures["faults"]["leader_kill9_restart"] += 1
            survivors = [member for member in cluster.members if member is not leader]
            _await_leader(survivors)
            figures["etcd_leader_elected_ms"].append(round((time.monotonic_ns() - killed_at) / 1e6))
            deadline = time.monotonic() + SETTLE
            while (seen := _valid_view(run, killed_at, run.records())) is None:
                assert time.monotonic() < deadline, f"the observer saw no valid leader within {SETTLE} s"
                time.sleep(0.005)  # another process's progress: there is no event to await
            figures["observer_valid_leader_ms"].append(round((seen["at"] - killed_at) / 1e6))
            token = max(int(holder["token"]), int(seen["token"]))
            leader.start()
        run.wait(FINISH)
    counts = check(run, figures)
    assert counts["sections"] == 18, counts
    _assert_exclusive_throughout(counts)
    assert counts["leaders_per_token"] == 1, counts
    _no_lock_left(cluster.members[0], figures, "election")


@pytest.mark.parametrize("mode", ["obtain", "lock"])
def test_leader_paused_past_an_election(cluster: EtcdCluster, tmp_path: Path, mode: str, figures: Figures) -> None:
    """SIGSTOP of the leader while a worker holds the lock, until the others have elected a leader and the
    lock has changed hands (longer than the election timeout, and than the 1 s deadline of the requests
    that two workers had sent to the frozen member); then SIGCONT: the old leader rejoins as a follower.

    In ``lock`` mode the holders keep their leases alive in the background (``locker.lock()``), so
    keep-alives meet the frozen leader, then the resumed one.

    Expected: the workers that talked to the frozen member get typed errors once their requests reach
    the deadline (a holder whose refresh met it would have its ``lock()`` body cancelled); etcd keeps
    mutual exclusion -- 0 overlaps, 0 writes refused; every worker finishes; nothing left behind.
    """
    leader = _await_leader(cluster.members)
    linger = 0.3 if mode == "lock" else 0.0
    figures.update(backend="etcd-cluster", mode=mode, faults={"leader_sigstop": 0})
    with _run(_urls(cluster, leader), tmp_path, sections=6, mode=mode, linger=linger) as run:
        holder = _await_holder(run)
        leader.pause()
        figures["faults"]["leader_sigstop"] += 1
        try:
            survivors = [member for member in cluster.members if member is not leader]
            _await_leader(survivors)
            _await_record(
                run,
                "no worker got the lock under the new leader",
                lambda r: r["event"] == "obtained" and r["token"] > holder["token"],
            )
            # ... and a request sent to the frozen member has run into its deadline.
            _await_record(run, "no worker that talked to the frozen leader gave up on it", lambda r: "error" in r)
        finally:
            leader.resume()
        run.wait(FINISH)
    counts = check(run, figures)
    assert counts["errors"] >= 1, counts
    _assert_exclusive_throughout(counts)
    _no_lock_left(leader, figures)


@pytest.mark.parametrize("mode", ["obtain", "lock"])
def test_old_leader_cut_off_in_a_minority(
    partitionable: netns.PartitionableCluster, tmp_path: Path, mode: str, figures: Figures
) -> None:
    """The leader is cut off from the other two members (its raft link taken down in its network
    namespace) while worker w0, whose only endpoint is that member, holds the lock and is slow to write
    (it holds on until the test has seen the lock change hands). The other two workers have every
    endpoint, the isolated member last, so they talk to the majority. Healed once w0 has finished that
    section.

    Expected: the old leader steps down (no quorum) and answers "no leader", so w0 cannot renew or release
    its lease; the majority elects a leader, w0's lease expires at its TTL, and a majority worker gets the
    lock with a higher token. In ``obtain`` mode w0 still believes it holds the lock (an overlap), its late
    write is refused by the fenced store and its release fails with a typed error. In ``lock`` mode its
    refresher fails and ``lock()`` cancels the body before the write (``LockLostError``; usually before
    the successor's grant, but that is a race, so overlaps are not asserted). 0 stale writes accepted
    either way; after the heal every worker finishes and no lock key or lease is left.
    """
    cluster = partitionable
    isolated, m2, m3 = cluster.members
    asyncio.run(_move_leader(cluster, isolated))
    urls = [
        f"etcd://{isolated.endpoint}",
        f"etcd://{m2.endpoint},{m3.endpoint},{isolated.endpoint}",
        f"etcd://{m3.endpoint},{m2.endpoint},{isolated.endpoint}",
    ]
    hold = tmp_path / "hold"
    hold.touch()
    linger = 0.3 if mode == "lock" else 0.0
    figures.update(backend="etcd-cluster", mode=mode, faults={"leader_cut_off_in_minority": 0})
    with _run(
        urls, tmp_path, sections=6, mode=mode, linger=linger, worker_args={0: ["--hold-while", str(hold)]}
    ) as run:
        holder = _await_record(
            run, "w0 never got the lock from the leader", lambda r: r["client"] == "w0" and r["event"] == "obtained"
        )

        def w0_finished(r: dict[str, Any]) -> bool:
            return bool(r["client"] == "w0" and r["event"] == "section" and r.get("token") == holder["token"])

        cluster.namespace.cut()
        figures["faults"]["leader_cut_off_in_minority"] += 1
        try:
            _await_leader([m2, m3])  # the majority elects a leader of its own
            successor = _await_record(
                run,
                "the majority never handed the lock on",
                lambda r: r["event"] == "section" and bool(r.get("accepted")) and r["token"] > holder["token"],
            )
            if mode == "lock":
                late = _await_record(run, "w0's refresher never gave up", w0_finished)
            hold.unlink()  # w0 gets on with its section: in obtain mode, its write comes too late
            late = _await_record(run, "w0 never finished its section", w0_finished)
        finally:
            hold.unlink(missing_ok=True)
            cluster.namespace.heal()
        run.wait(FINISH)
    counts = check(run, figures)
    assert successor["client"] != "w0"
    if mode == "obtain":
        assert late["accepted"] is False, late  # refused by the store: the successor had read with its token
        assert late["error"] == "BackendError", late  # release through a member without a leader
        assert counts["overlaps"] >= 1, counts
    else:
        assert late["error"] == "LockLostError", late
        assert "accepted" not in late, late  # cancelled before it wrote
    _no_lock_left(m2, figures)


@pytest.mark.anyio
async def test_a_locker_with_every_endpoint_fails_over_from_a_member_cut_off(
    partitionable: netns.PartitionableCluster,
) -> None:
    """A locker given every endpoint, one of them cut off from the other two (up, but without a leader):
    its obtains go through the majority, as they do when that member dies. Calls are spread over the
    members (round robin, as in Go's client), and one answered "no leader" is retried on the next."""
    cluster = partitionable
    m1, m2, m3 = cluster.members
    locker = await EtcdLocker.connect(cluster.endpoints, Options(ttl=TTL), EtcdOptions(session_timeout=1))
    try:
        await (await locker.obtain("failover")).release()  # connected
        cluster.namespace.cut()
        try:
            await asyncio.to_thread(_await_leader, [m2, m3])
            await asyncio.to_thread(_await_leaderless, m1)
            for _ in range(10):  # each one would fail if any call stayed with the cut-off member
                await (await locker.obtain("failover", max_retries=0)).release()
        finally:
            cluster.namespace.heal()
    finally:
        await locker.aclose()
