"""Many processes, each with its own locker, on one key: what users running N replicas rely on.

Every contender here is a worker process (``tests/contender.py``) with a locker of its own, on a real
server: single Redis, Sentinel, Cluster, etcd. Order is asserted by order: each worker is started only
once the one before it has said it found the lock taken (it is in the queue), and the workers write
down, while they hold the lock, that they got it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from distlock_async import Lock, Locker, Options, RedisLocker, from_url
from distlock_async.testing.servers import EtcdServer, RedisClusterServers, RedisSentinelServers, RedisServer

from .fencing import Run, check

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a test waits for a worker to say something or to finish: liveness, not a timing claim.
LIMIT = 30.0


@pytest.fixture(params=["redis", "redis-sentinel", "redis-cluster", "etcd"])
def target(request: pytest.FixtureRequest) -> str:
    """What a contender process connects to (see ``tests/contender.py``)."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    if request.param == "redis-sentinel":
        servers: RedisSentinelServers = request.getfixturevalue("redis_sentinel")
        return f"sentinel:127.0.0.1:{servers.sentinel.port}:{servers.master_name}"
    if request.param == "redis-cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        return f"cluster:127.0.0.1:{cluster.ports[0]}"
    etcd: EtcdServer = request.getfixturevalue("etcd_server")
    return f"etcd://{etcd.endpoint}"


@pytest.fixture
async def holder_locker(target: str) -> AsyncIterator[Locker]:
    """A locker of the test process on the same server, with long TTLs: it holds the lock while workers queue."""
    options = Options(ttl=60)
    kind, _, rest = target.partition(":")
    clients: list[Any] = []
    locker: Locker
    if kind == "sentinel":
        host, port, master = rest.split(":")
        sentinel = Sentinel([(host, int(port))], socket_timeout=5)  # type: ignore[no-untyped-call,unused-ignore]
        client = sentinel.master_for(master, socket_timeout=5)
        locker, clients = RedisLocker(client, options), [client, *sentinel.sentinels]
    elif kind == "cluster":
        host, port = rest.split(":")
        cluster = RedisCluster(host=host, port=int(port), socket_timeout=5)
        locker, clients = RedisLocker(cluster, options), [cluster]
    else:
        locker = from_url(target, options)
    async with locker:
        yield locker
    for client in clients:
        await client.aclose()


class Workers:
    """Contender processes sharing one log; none outlives the test."""

    def __init__(self, target: str, key: str, log: Path) -> None:
        self.target = target
        self.key = key
        self.log = log
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, *extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.contender", self.target, self.key, name, "--log", str(self.log), *extra],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs[name] = proc
        return proc

    async def queued(self, name: str) -> None:
        """Wait until worker ``name`` says it found the lock taken (its first attempt is behind it)."""
        await anyio.to_thread.run_sync(self._read_queued, self.procs[name])

    async def holding(self, name: str) -> None:
        """Wait until worker ``name`` says it holds (after it said it was queued)."""
        await anyio.to_thread.run_sync(self._read, self.procs[name], "holding")

    @staticmethod
    def _read_queued(proc: subprocess.Popen[str]) -> None:
        Workers._read(proc, "queued")

    @staticmethod
    def _read(proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], LIMIT)
        assert ready, f"the worker never said {line!r}"
        assert proc.stdout.readline().strip() == line, f"the worker exited with {proc.poll()}"

    async def finish(self, *names: str) -> dict[str, int]:
        """Wait for the workers to exit; their exit codes."""
        return {name: await anyio.to_thread.run_sync(self._wait, self.procs[name]) for name in names}

    @staticmethod
    def _wait(proc: subprocess.Popen[str]) -> int:
        return proc.wait(LIMIT)

    def served(self) -> list[dict[str, Any]]:
        """Who got the lock, in the order they got it."""
        text = self.log.read_text() if self.log.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def workers(target: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workers]:
    group = Workers(target, f"processes-{request.node.name}-{os.getpid()}", tmp_path / "served.jsonl")
    try:
        yield group
    finally:
        group.kill_all()


async def _hold(locker: Locker, key: str) -> Lock:
    return await locker.obtain(key, max_retries=0)


async def test_waiters_in_several_processes_get_the_lock_in_the_order_they_queued(
    holder_locker: Locker, workers: Workers
) -> None:
    """Five processes queue one after another behind a holder; the lock goes round in that order, with
    a higher fencing token each time."""
    lock = await _hold(holder_locker, workers.key)
    names = [f"w{n}" for n in range(5)]
    for name in names:
        workers.start(name)
        await workers.queued(name)
    await lock.release()
    assert await workers.finish(*names) == dict.fromkeys(names, 0)
    served = workers.served()
    assert [s["name"] for s in served] == names
    tokens = [lock.fencing_token] + [s["fencing_token"] for s in served]
    assert tokens == sorted(set(tokens))


async def test_processes_exclude_each_other_and_every_fenced_write_is_accepted(target: str, tmp_path: Path) -> None:
    """The fencing checker (``tests/fencing.py``): three worker processes, each with its own locker, take
    turns writing through a fenced store. No faults: no two sections overlap, every write is accepted,
    tokens rise in grant order."""
    with Run(target, tmp_path, workers=3, sections=6, ttl=5.0) as run:
        await anyio.to_thread.run_sync(run.wait, LIMIT * 2)
    figures = check(run)
    assert figures["sections"] == 18
    assert figures["accepted"] == 18
    assert figures["overlaps"] == 0


async def test_a_waiter_killed_at_the_head_of_the_queue_does_not_hold_it_up(
    holder_locker: Locker, workers: Workers
) -> None:
    """The first waiter is killed (SIGKILL) while it waits; the holder releases. The others get the lock,
    in their order. On Redis that is long before the 60 s the dead waiter's lock would last had it been
    handed to it for good: its entry expires unless kept alive, and a hand-off lasts only until the
    waiter confirms it. On etcd a waiter's key lives as long as its lease, the lock's TTL (as with Go's
    ``concurrency.Mutex``): 5 s here."""
    lock = await _hold(holder_locker, workers.key)
    names = ["w0", "w1", "w2"]
    ttl = "5" if workers.target.startswith("etcd") else "60"
    for name in names:
        workers.start(name, "--ttl", ttl)
        await workers.queued(name)
    workers.procs["w0"].send_signal(signal.SIGKILL)
    workers.procs["w0"].wait()
    await lock.release()
    assert await workers.finish("w1", "w2") == {"w1": 0, "w2": 0}
    assert [s["name"] for s in workers.served()] == ["w1", "w2"]


async def test_a_waiter_that_gives_up_leaves_nothing_behind(holder_locker: Locker, workers: Workers) -> None:
    """A waiting process cancels its obtain and exits; once the holder releases, the lock is free for
    the next obtain at once (no entry of the waiter is left to hand the lock to)."""
    lock = await _hold(holder_locker, workers.key)
    workers.start("quitter", "--give-up-after", "0.5")
    await workers.queued("quitter")
    assert await workers.finish("quitter") == {"quitter": 3}
    await lock.release()
    again = await holder_locker.obtain(workers.key, max_retries=0)
    assert again.fencing_token > lock.fencing_token
    await again.release()
    assert workers.served() == []


# --- semaphores and elections across processes -------------------------------------------------------------


async def test_permit_waiters_in_several_processes_are_served_in_the_order_they_queued(
    holder_locker: Locker, workers: Workers
) -> None:
    """Two permits held by the test; four processes queue one after another for a permit of the same
    semaphore; as the permits come free they are served in that order, each with a higher fencing token."""
    held = [await holder_locker.obtain_permit(workers.key, 2, max_retries=0) for _ in range(2)]
    names = [f"w{n}" for n in range(4)]
    for name in names:
        workers.start(name, "--limit", "2")
        await workers.queued(name)
    await held[0].release()
    assert await workers.finish(*names) == dict.fromkeys(names, 0)
    served = workers.served()
    assert [s["name"] for s in served] == names
    tokens = [held[1].fencing_token] + [s["fencing_token"] for s in served]
    assert tokens == sorted(set(tokens))
    await held[1].release()


async def test_candidates_in_several_processes_lead_in_the_order_they_campaigned(
    holder_locker: Locker, workers: Workers
) -> None:
    election = holder_locker.election(workers.key)
    async with election.campaign("test") as term:
        names = [f"c{n}" for n in range(3)]
        for name in names:
            workers.start(name, "--campaign", name)
            await workers.queued(name)
    assert await workers.finish(*names) == dict.fromkeys(names, 0)
    served = workers.served()
    assert [s["name"] for s in served] == names
    tokens = [term.fencing_token] + [s["fencing_token"] for s in served]
    assert tokens == sorted(set(tokens))
    assert await election.leader() is None


async def test_a_killed_leader_is_replaced_and_observers_see_the_new_one(
    holder_locker: Locker, workers: Workers
) -> None:
    """The leader's process is killed (SIGKILL: it resigns nothing); once its TTL has run out the next
    candidate, in another process, leads, and an observer in a third sees it."""
    election = holder_locker.election(workers.key)
    ttl = "2"
    leader = workers.start("first", "--campaign", "first", "--hold", "600", "--ttl", ttl)
    async with election.observe() as leaders:
        with anyio.fail_after(LIMIT):
            async for seen in leaders:
                if seen is not None and seen.value == "first":
                    break
        # It leads for long: observe() may coalesce a short term into the changes around it.
        second = workers.start("second", "--campaign", "second", "--hold", "600", "--ttl", ttl)
        await workers.queued("second")
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        values = []
        with anyio.fail_after(LIMIT):
            async for seen in leaders:
                values.append(None if seen is None else seen.value)
                if values[-1] == "second":
                    break
    await workers.holding("second")  # it has written down its term (the observer may see it lead first)
    assert [s["name"] for s in workers.served()] == ["first", "second"]
    assert "first" not in values, f"a dead leader was reported after a change: {values}"
    second.send_signal(signal.SIGTERM)
