"""Mutual exclusion under real faults, checked by tests/fencing.py's worker processes and invariants.

Each test states what the fault may cost (an overlap that fencing must catch, a typed error) and what
it must never cost (a lost update, a token going backwards, a hang, an orphaned lock).

Figures: every test here (and in test_faults_cluster.py) records what it saw -- sections run, accepted
and rejected writes, overlaps, stale writes accepted, faults injected by kind, lock keys and leases left
behind -- as one ``FIGURES {json}`` line on stdout, shown with ``pytest -s`` or ``-rA``, and appended to
the file named by the ``DISTLOCK_FIGURES`` environment variable if it is set (see the ``figures``
fixture in conftest.py)::

    DISTLOCK_FIGURES=figures.jsonl pytest tests/test_faults.py tests/test_faults_cluster.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aetcd
import pytest
import redis
from aetcd import rpc

from distlock_async.testing.servers import EtcdServer, RedisServer

from .etcd_helpers import leases
from .fencing import Figures, Run, check

TTL = 1.0
FINISH = 60.0  # seconds every worker gets to finish its sections once the fault has healed


Server = RedisServer | EtcdServer


BACKENDS = pytest.mark.parametrize("server", [(), "etcd"], ids=["redis", "etcd"], indirect=True)

#: The deadline of one request: Redis's socket_timeout, etcd's session_timeout.
DEADLINE = 0.5


def _backend(server: Server) -> str:
    if isinstance(server, EtcdServer):
        return "etcd"
    return "redis-aof-always" if "--appendonly" in server.extra else "redis"


def _run(server: Server, tmp_path: Path, **kwargs: object) -> Run:
    url = server.url + f"?socket_timeout={DEADLINE}" if isinstance(server, RedisServer) else server.url
    return Run(url, tmp_path, ttl=TTL, **kwargs)  # type: ignore[arg-type]


def _await_holder(run: Run, after_token: int = 0) -> dict[str, Any]:
    """The worker that holds the lock now (it logged the grant), with a token above ``after_token``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        holder = run.holder()
        if holder is not None and int(holder["token"]) > after_token:
            return holder
        time.sleep(0.002)  # another process's progress: there is no event to await
    raise AssertionError(f"no worker obtained the lock: {run.records()[-5:]}")


def _restart_twice_while_held(server: Server, run: Run, figures: Figures) -> None:
    """kill -9 and restart ``server`` twice, each time once a worker holds; then let the workers finish."""
    for _ in range(2):
        _await_holder(run)
        server.restart()
        figures["faults"]["server_kill9_restart"] += 1
    run.wait(FINISH)


#: Where the checker's name lives on the server, by what the workers take: the Redis key of its holders,
#: and the etcd prefix of its keys.
NAMES = {
    "lock": ("distlock:{checked}", b"distlock/checked/"),
    "permit": ("distlock:{checked}:permits", b"distlock.semaphore/checked/"),
    "election": ("distlock:{checked}:leader", b"distlock.election/checked/"),
}


def _assert_no_lock_left(server: Server, figures: dict[str, Any], kind: str = "lock", expiring: bool = False) -> None:
    """No lock key is left (``orphans``), nor, on etcd, a lease beyond its TTL (``leaked_leases``).

    ``kind``: ``"permit"`` or ``"election"`` look for a semaphore's permits or an election's leader.
    ``expiring``: a holder went without releasing (killed, or its release failed while the server was
    down), so its entry may stay until its TTL has run out (reset to full by an etcd restart)."""
    key, prefix = NAMES[kind]
    if isinstance(server, EtcdServer):
        asyncio.run(assert_no_etcd_lock_left(server.endpoint, figures, prefix, expiring))
        return
    client = redis.Redis.from_url(server.url)
    try:
        deadline = time.monotonic() + (2 * TTL + 2 if expiring else 0)
        while (left := client.exists(key)) and time.monotonic() < deadline:
            time.sleep(0.1)  # the server's expiry: time passing is the point
        figures["orphans"] = left
    finally:
        client.close()
    assert figures["orphans"] == 0, "a lock was left behind"


async def assert_no_etcd_lock_left(
    endpoint: str, figures: dict[str, Any], prefix: bytes = NAMES["lock"][1], expiring: bool = False
) -> None:
    host, port = endpoint.rsplit(":", 1)
    admin = aetcd.Client(host=host, port=int(port), timeout=5)
    try:
        await admin.connect()
        # The key of a holder that went without releasing goes with its lease, once its TTL has run out.
        deadline = time.monotonic() + 2 * TTL + 2
        keys_deadline = deadline if expiring else 0
        while True:
            keys = await admin.kvstub.Range(rpc.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"), timeout=5)
            if not keys.kvs or time.monotonic() > keys_deadline:
                break
            await asyncio.sleep(0.1)  # the server's lease expiry: time passing is the point
        figures["orphans"] = len(keys.kvs)
        assert not keys.kvs, f"a lock was left behind: {[kv.key for kv in keys.kvs]}"
        # The workers closed their lockers, revoking every lease they could. One whose revoke failed during
        # the fault (logged) expires with its TTL -- reset to full by a restart, checked on a 500 ms tick.
        while (left := await leases(admin)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # the server's lease expiry: time passing is the point
        figures["leaked_leases"] = len(left)
        assert left == set(), "a lease outlived its TTL"
    finally:
        await admin.close()


def test_without_faults_every_section_is_accepted(server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    figures.update(backend="redis", faults={})
    with _run(server, tmp_path, workers=3, sections=6) as run:
        run.wait(FINISH)
    counts = check(run, figures)
    assert counts["accepted"] == 18, counts
    assert counts["overlaps"] == 0, counts
    assert counts["errors"] == 0, counts
    _assert_no_lock_left(server, figures)


@BACKENDS
@pytest.mark.parametrize("mode", ["obtain", "lock"])
def test_holder_paused_past_its_ttl_is_fenced_off(server: Server, tmp_path: Path, mode: str, figures: Figures) -> None:
    """A holder frozen for 2x TTL (a GC pause, a stopped VM) loses the lock to another worker.

    Overlap is possible and expected; the store must refuse the stale holder, and on resuming the
    holder learns it lost the lock: its release raises ``LockNotHeldError`` (``obtain`` mode), or
    ``locker.lock()`` cancels its body with ``LockLostError``.
    """
    # In lock mode the body goes on working after its write, as real code does: the refresher finds
    # the lock gone while the body still runs, and cancels it.
    linger = 0.3 if mode == "lock" else 0.0
    figures.update(backend=_backend(server), faults={"holder_sigstop_2ttl": 0})
    with _run(server, tmp_path, workers=3, sections=4, mode=mode, linger=linger) as run:
        token = 0
        for _ in range(2):
            holder = _await_holder(run, token)
            token, pid = int(holder["token"]), int(holder["pid"])
            os.kill(pid, signal.SIGSTOP)
            figures["faults"]["holder_sigstop_2ttl"] += 1
            time.sleep(2 * TTL)  # the fault's length, not a wait for something
            os.kill(pid, signal.SIGCONT)
        run.wait(FINISH)
    counts = check(run, figures)
    if mode == "obtain":
        assert counts["not_held"] >= 2, counts
    else:
        assert counts["lost"] >= 2, counts
    _assert_no_lock_left(server, figures)


@pytest.mark.parametrize(
    "server",
    [(), ("--appendonly", "yes", "--appendfsync", "always"), "etcd"],
    ids=["redis-no-persistence", "redis-aof-always", "etcd"],
    indirect=True,
)
def test_server_killed_and_restarted(server: Server, tmp_path: Path, figures: Figures) -> None:
    """kill -9 and restart: workers get typed errors while it is down and carry on after.

    Redis without persistence loses the lock and the fence counter; tokens must keep increasing anyway
    (they never fall below the server clock in microseconds), so the store keeps refusing anyone who held
    the lock before the crash. etcd keeps its data and its leases (their TTLs reset to full).
    """
    figures.update(backend=_backend(server), faults={"server_kill9_restart": 0})
    with _run(server, tmp_path, workers=3, sections=6) as run:
        _restart_twice_while_held(server, run, figures)
    counts = check(run, figures)
    assert counts["sections"] >= 18, counts
    _assert_no_lock_left(server, figures)


@BACKENDS
def test_server_paused_longer_than_ttl(server: Server, tmp_path: Path, figures: Figures) -> None:
    """A frozen server: commands fail with typed errors within the client's deadline, nothing hangs, and
    nothing is orphaned -- an obtain that timed out queued its undo, which the server runs on waking."""
    figures.update(backend=_backend(server), faults={"server_sigstop_1.5ttl": 1})
    with _run(server, tmp_path, workers=3, sections=6) as run:
        _await_holder(run)
        server.pause()
        time.sleep(1.5 * TTL)
        server.resume()
        run.wait(FINISH)
    counts = check(run, figures)
    assert counts["errors"] >= 1, counts
    slowest = max(r.get("error_after_ms", 0) for r in run.records())
    # The deadline is 0.5 s on Redis (redis-py's own retries would take 5 s and more) and 1 s on etcd,
    # where an abandoned obtain may take two (its grant, then its revoke). Loose on purpose.
    assert slowest < 4000, slowest
    _assert_no_lock_left(server, figures)
