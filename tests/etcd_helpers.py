"""What the etcd tests look at on the server: leases nobody explains, watches nobody cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aetcd
import grpc
from aetcd import rpc

from distlock_async import EtcdLocker
from distlock_async._backends.etcd.contender import Held
from distlock_async._core._lock import HeldLock
from distlock_async.testing.servers import etcd_metrics

_WATCHERS = re.compile(rb"^etcd_debugging_mvcc_watcher_total (\S+)$", re.MULTILINE)


class TracingEtcdLocker(EtcdLocker):
    """An EtcdLocker that remembers the lease of every lock it handed out, and checks on close that
    no watch of a finished obtain was left registered."""

    granted: set[int]
    leftover_watches: int

    async def _obtain(self, key: str, settings: Any, space: Any) -> Any:
        lock: HeldLock[Held] = await super()._obtain(key, settings, space)
        self.granted.add(lock._handle.lease_id)
        return lock

    async def aclose(self) -> None:
        # Counted once the locker has closed its observations (which hold a watch while open), just
        # before the driver closes its streams.
        driver = self._driver
        close_driver = driver.aclose

        async def audited_close() -> None:
            self.leftover_watches = max(self.leftover_watches, len(driver.watches._watches))
            await close_driver()

        driver.aclose = audited_close  # type: ignore[method-assign]
        try:
            await super().aclose()
        finally:
            del driver.aclose


async def leases(admin: aetcd.Client) -> set[int]:
    await admin.connect()
    reply = await admin.leasestub.LeaseLeases(rpc.LeaseLeasesRequest(), timeout=5)
    return {lease.ID for lease in reply.leases}


async def keys(admin: aetcd.Client, prefix: str) -> list[Any]:
    """Every key under ``prefix``, oldest first (nested names' included)."""
    raw = prefix.encode()
    request = rpc.RangeRequest(
        key=raw,
        range_end=raw[:-1] + bytes([raw[-1] + 1]),
        sort_order=rpc.RangeRequest.SortOrder.ASCEND,
        sort_target=rpc.RangeRequest.SortTarget.CREATE,
    )
    reply = await admin.kvstub.Range(request, timeout=5)
    return list(reply.kvs)


async def has_keys(admin: aetcd.Client, prefix: str, n: int) -> bool:
    """Whether ``n`` or more keys are under ``prefix`` (for :func:`poll_until`)."""
    return len(await keys(admin, prefix)) >= n


async def revoke(admin: aetcd.Client, lease_id: int) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):  # gone already
        await admin.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=5)


async def poll_until(condition: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    """Wait (bounded) for a state that only the server can show: an outside process's key, say."""
    for _ in range(int(within / 0.01)):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server never reached the expected state")


def watchers(port: int) -> int:
    """The member's count of open watches (from its Prometheus metrics)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        match = _WATCHERS.search(conn.getresponse().read())
    finally:
        conn.close()
    assert match is not None, "etcd exposes no etcd_debugging_mvcc_watcher_total"
    return int(float(match.group(1)))


class EtcdAudit:
    """After a test: every lease created meanwhile belongs to a lock that was handed out; no watch is open."""

    def __init__(self, admin: aetcd.Client, port: int) -> None:
        self.admin = admin
        self.port = port
        self.before: set[int] = set()
        self.lockers: list[TracingEtcdLocker] = []

    async def start(self) -> None:
        self.before = await leases(self.admin)

    def track(self, locker: TracingEtcdLocker) -> None:
        locker.granted = set()
        locker.leftover_watches = 0
        self.lockers.append(locker)

    async def check(self) -> None:
        for locker in self.lockers:
            assert locker.leftover_watches == 0, "a watch outlived its obtain"
        granted = set().union(*(locker.granted for locker in self.lockers))
        leaked = await leases(self.admin) - self.before - granted
        assert not leaked, f"leases no lock explains: {sorted(leaked)}"
        for _ in range(200):
            if watchers(self.port) == 0:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"etcd still has {watchers(self.port)} watches open")


def metrics(port: int) -> dict[str, float]:
    """The member's Prometheus metrics, ``name{labels}`` to value."""
    return etcd_metrics(port)


def unary_calls(snapshot: dict[str, float]) -> dict[str, int]:
    """Unary RPCs the member has started, by method."""
    calls = {}
    for name, value in snapshot.items():
        if name.startswith("grpc_server_started_total{") and 'grpc_type="unary"' in name:
            method = re.search(r'grpc_method="(\w+)"', name)
            assert method is not None
            calls[method.group(1)] = int(value)
    return calls
