"""Test harness: the ``backend`` fixture every contract test runs over, and the hygiene checks.

Every async test runs on asyncio in debug mode (anyio's pytest plugin), with warnings as errors, and
fails if it leaves a task pending.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib.metadata import version
from typing import Any

import aetcd
import pytest
import redis
import redis.asyncio
from redis.asyncio.sentinel import Sentinel

import distlock_async
from distlock_async import EtcdOptions, MemoryLocker, MemoryStore, RedisLocker
from distlock_async.testing.servers import (
    EtcdCluster,
    EtcdServer,
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    describe_binaries,
    running,
)

from .etcd_helpers import EtcdAudit, TracingEtcdLocker
from .helpers import Backend


def pytest_report_header() -> list[str]:
    """The servers and client libraries of this run: a cell of the version matrix shows here."""
    clients = ", ".join(f"{name} {version(name)}" for name in ("redis", "aetcd", "anyio"))
    return [*describe_binaries(), f"clients: {clients}"]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "asyncio", {"debug": True}


#: Fixtures that start a cluster: a test that uses one is tier 2 (``pytest -m "not tier2"`` skips it).
_CLUSTER_FIXTURES = {"etcd_cluster"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.fixturenames.insert(0, "_no_pending_tasks")  # type: ignore[attr-defined]
        if _CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tier2)


#: Seconds after which a test that is still running prints every task's stack (a hang's post-mortem).
_DUMP_AFTER = 60.0


def _dump_tasks() -> None:
    print(f"\n--- still running after {_DUMP_AFTER:.0f} s; the tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        try:
            task.print_stack(file=sys.stderr)
        except Exception as exc:  # a frame of compiled code (gRPC's) can break linecache: show the task anyway
            print(f"{task!r} (no stack: {exc!r})", file=sys.stderr)


@pytest.fixture
async def _no_pending_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    watchdog = asyncio.get_running_loop().call_later(_DUMP_AFTER, _dump_tasks)
    yield
    watchdog.cancel()
    for _ in range(10):
        await asyncio.sleep(0)
    left = _tasks_since(before)
    # gRPC ends a cancelled stream's own status task when its poller thread reports the call finished,
    # which on a busy machine can take more than a few loop turns; give those (and only those) time.
    deadline = asyncio.get_running_loop().time() + _GRPC_WIND_DOWN
    while left and all(_is_grpc_wind_down(task) for task in left):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
        left = _tasks_since(before)
    assert not left, f"tasks left pending: {left}"


#: Seconds gRPC's status task of a cancelled call may take to end (it normally ends at once).
_GRPC_WIND_DOWN = 5.0


def _tasks_since(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    return {
        task
        for task in asyncio.all_tasks() - before
        # anyio's runner drives each fixture and test from a task of its own
        if task is not asyncio.current_task() and "_call_in_runner_task" not in repr(task.get_coro())
    }


def _is_grpc_wind_down(task: asyncio.Task[Any]) -> bool:
    return getattr(task.get_coro(), "__qualname__", "") == "_AioCall._handle_status_once_received"


# --- servers, started once per test session ---------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield from running(RedisServer())


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    yield from running(RedisClusterServers())


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelServers]:
    servers = RedisSentinelServers()
    # Sync the replica at once, not after Redis 7's 5 s diskless-sync delay, and hand the deployment out
    # only once the replica is online: a locker with ``replicas=1`` (a docs example) needs it.
    servers.master.extra += ["--repl-diskless-sync-delay", "0"]
    for started in running(servers):
        _wait_for_replica(started.master.port)
        yield started


def _wait_for_replica(master_port: int) -> None:
    with redis.Redis(host="127.0.0.1", port=master_port, socket_timeout=5) as master:
        deadline = time.monotonic() + 30
        while master.info("replication").get("slave0", {}).get("state") != "online":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica did not come online: {master.info('replication')}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    yield from running(EtcdServer())


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    yield from running(EtcdCluster())


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer | EtcdServer]:
    """A server of the test's own, since the test kills or pauses it (the fault tests): ``"etcd"``, or
    Redis with the given extra arguments (the parameter, given indirectly)."""
    param = getattr(request, "param", ())
    srv: RedisServer | EtcdServer = EtcdServer() if param == "etcd" else RedisServer(*param)
    yield from running(srv)


# --- the backends of the contract suite ---------------------------------------------------------------
# Each factory yields a Backend whose lockers contend with each other, isolated from other tests
# (a fresh store, or a fresh namespace on a shared server), then checks what it leaves behind.


async def _memory(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    store = MemoryStore()

    async def steal(key: str) -> None:
        await asyncio.sleep(0)
        store._names[("lock", key)].holders.clear()

    yield Backend(
        "memory",
        short_ttl=0.2,
        resolution=0.001,
        factory=lambda options: MemoryLocker(options, store=store),
        steal=steal,
    )
    queued = {name: entry.queue for name, entry in store._names.items() if entry.queue}
    assert not queued, f"waiters stayed queued after their obtain ended: {queued}"


_namespaces = itertools.count()


async def _redis_backend(
    name: str,
    admin: Any,
    make_client: Callable[[], tuple[Any, list[Any]]],
    check: Callable[[str], Awaitable[None]] | None = None,
) -> AsyncIterator[Backend]:
    """What every Redis deployment shares: a fresh namespace, lockers over clients of their own, steal by
    DEL. ``make_client`` returns a client and everything to close with it; once they are closed,
    ``check(namespace)`` looks at what the test left on the server."""
    namespace = f"test{next(_namespaces)}"
    closables: list[Any] = []

    def factory(options: distlock_async.Options | None) -> RedisLocker:
        client, extra = make_client()
        closables.extend([client, *extra])
        return RedisLocker(client, options, namespace=namespace)

    async def steal(key: str) -> None:
        await admin.delete(f"{namespace}:{{{key}}}")

    try:
        # 0.5 s: a refresher must confirm a refresh within two thirds of the TTL or report the lock lost,
        # and a long test session's garbage collection can stall the loop for 0.2 s.
        yield Backend(name, short_ttl=0.5, resolution=0.002, factory=factory, steal=steal)
        for closable in closables:
            await closable.aclose()
        if check is not None:
            await check(namespace)
    finally:
        await admin.aclose()


async def _redis(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    server: RedisServer = request.getfixturevalue("redis_server")
    admin = redis.asyncio.Redis(host="127.0.0.1", port=server.port)

    async def check(namespace: str) -> None:
        assert await admin.pubsub_channels(f"{namespace}:*") == [], "a waiter's subscription outlived its obtain"
        await wait_for_connections(admin, 1)

    def make_client() -> tuple[Any, list[Any]]:
        return redis.asyncio.Redis(host="127.0.0.1", port=server.port, socket_timeout=5), []

    async for backend in _redis_backend("redis", admin, make_client, check):
        yield backend


async def wait_for_connections(admin: redis.asyncio.Redis, expected: int) -> None:
    """Wait (bounded) until the server sees ``expected`` clients: a closed socket takes it a moment."""
    clients: list[dict[str, str]] = []
    for _ in range(200):
        clients = await admin.client_list()
        if len(clients) <= expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"connections left open: {clients}")


async def _redis_cluster(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    port = cluster.ports[0]
    admin = redis.asyncio.RedisCluster(host="127.0.0.1", port=port)

    def make_client() -> tuple[Any, list[Any]]:
        return redis.asyncio.RedisCluster(host="127.0.0.1", port=port, socket_timeout=5), []

    async for backend in _redis_backend("redis-cluster", admin, make_client):
        yield backend


async def _redis_sentinel(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    servers: RedisSentinelServers = request.getfixturevalue("redis_sentinel")

    def make_client() -> tuple[Any, list[Any]]:
        sentinel = Sentinel([("127.0.0.1", servers.sentinel.port)], socket_timeout=5)  # type: ignore[no-untyped-call,unused-ignore]
        return sentinel.master_for(servers.master_name, socket_timeout=5), list(sentinel.sentinels)

    async for backend in _redis_backend("redis-sentinel", redis.asyncio.Redis(port=servers.master.port), make_client):
        yield backend


async def _etcd(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    server: EtcdServer = request.getfixturevalue("etcd_server")
    namespace = f"test{next(_namespaces)}/"
    admin = aetcd.Client(host="127.0.0.1", port=server.port, timeout=5)
    audit = EtcdAudit(admin, server.port)
    await audit.start()

    def factory(options: distlock_async.Options | None) -> TracingEtcdLocker:
        locker = TracingEtcdLocker.from_url(
            f"etcd://{server.endpoint}", options, EtcdOptions(session_timeout=5), namespace=namespace
        )
        audit.track(locker)
        return locker

    async def steal(key: str) -> None:
        await admin.delete_prefix(f"{namespace}{key}/".encode())

    try:
        # etcd counts lease TTLs in whole seconds, and these members' minimum is 1 s.
        yield Backend("etcd", short_ttl=1.0, resolution=1.0, factory=factory, steal=steal)
        await audit.check()
    finally:
        await admin.close()


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], AsyncIterator[Backend]]] = {
    "etcd": _etcd,
    "memory": _memory,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
    "redis-sentinel": _redis_sentinel,
}


#: The backends with semaphores and elections (SPEC, "Coordination beyond the mutex").
COORDINATION_BACKENDS = ("etcd", "memory", "redis", "redis-cluster", "redis-sentinel")


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for b in _backend(request):
        yield b


@pytest.fixture(params=COORDINATION_BACKENDS)
async def coordination(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """A backend, for the semaphore and election suites."""
    async for b in _backend(request):
        yield b


async def _backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    gen = BACKENDS[request.param](request)
    b = await gen.__anext__()
    try:
        yield b
    finally:
        await b.aclose()
        async for _ in gen:
            pass


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """What a mutual-exclusion checker test saw (see tests/test_faults.py), filled in by the test.

    Printed after the test, failed or not, as one ``FIGURES {json}`` line (``pytest -s`` or ``-rA`` show
    it), and appended to the file named by ``DISTLOCK_FIGURES`` if that is set.
    """
    record: dict[str, Any] = {}
    yield record
    if record:
        line = json.dumps({"test": request.node.nodeid, **record})
        print(f"FIGURES {line}")
        if path := os.environ.get("DISTLOCK_FIGURES"):
            with open(path, "a") as out:
                out.write(line + "\n")


@pytest.fixture
def caplog_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level("DEBUG", logger=distlock_async.__name__)
    return caplog
