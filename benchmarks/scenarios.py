"""The scenarios: each runs one adapter once and returns plain numbers (see ``docs/benchmarks.md``)."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio

from distlock_async.testing.servers import etcd_metrics

from .adapters import Adapter, etcd_client

_fresh = itertools.count()


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


@dataclass
class Throughput:
    cycles: int
    seconds: float
    cpu_us_per_cycle: float

    @property
    def per_second(self) -> float:
        return self.cycles / self.seconds


async def uncontended(adapter: Adapter, *, tasks: int, seconds: float) -> Throughput:
    """Scenarios A (one task) and B (many): obtain + release on fresh keys, as fast as possible."""
    stop = False
    cycles = 0

    async def loop() -> None:
        nonlocal cycles
        while not stop:
            handle = await adapter.acquire(f"bench-{next(_fresh)}")
            await adapter.release(handle)
            cycles += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    runners = [asyncio.create_task(loop()) for _ in range(tasks)]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*runners)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Throughput(cycles, elapsed, cpu / max(cycles, 1) * 1e6)


@dataclass
class Contention:
    seconds: float
    acquisitions: int
    handoffs: int
    violations: int
    per_task: list[int]
    gap_ms: list[float] = field(repr=False)
    wait_ms: list[float] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        del out["gap_ms"], out["wait_ms"]
        out.update(
            acquisitions_per_s=self.acquisitions / self.seconds,
            handoffs_per_s=self.handoffs / self.seconds,
            gap_p50_ms=_quantile(self.gap_ms, 0.5),
            gap_p99_ms=_quantile(self.gap_ms, 0.99),
            wait_p50_ms=_quantile(self.wait_ms, 0.5),
            wait_p99_ms=_quantile(self.wait_ms, 0.99),
            # A lock that starves a few tasks hides them below the p99: the longest wait shows them.
            wait_max_ms=max(self.wait_ms, default=float("nan")),
            min_over_max=min(self.per_task) / max(max(self.per_task), 1),
        )
        return out


async def contended(adapter: Adapter, *, tasks: int = 8, seconds: float = 3.0, hold: float = 0.001) -> Contention:
    """Scenario C: ``tasks`` tasks on one key, each holding ``hold`` seconds, then contending again.

    A hand-off is an acquisition by another task than the one that released last; the gap is the time
    from the start of a release to the next acquisition; the wait is the time an ``acquire`` took (also one that ended
    after the deadline).
    A violation is an acquisition while another task of this process holds the lock.
    """
    key = f"bench-c-{next(_fresh)}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    holder: int | None = None
    last: tuple[int, float] | None = None  # who released last, and when the release began
    result = Contention(seconds, 0, 0, 0, [0] * tasks, [], [])

    async def worker(me: int) -> None:
        nonlocal holder, last
        while loop.time() < deadline:
            asked = loop.time()
            handle = await adapter.acquire(key)
            got = loop.time()
            if holder is not None:
                result.violations += 1
            holder = me
            # Every wait counts, also one that ends after the deadline: leaving those out would hide the
            # tasks a lock starves.
            result.wait_ms.append((got - asked) * 1000)
            if got <= deadline:
                result.acquisitions += 1
                result.per_task[me] += 1
                if last is not None:
                    result.gap_ms.append((got - last[1]) * 1000)
                    if last[0] != me:
                        result.handoffs += 1
            await asyncio.sleep(hold)
            holder = None
            last = (me, loop.time())
            await adapter.release(handle)

    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return result


async def redis_wire_cost(adapter: Adapter, url: str, *, cycles: int = 200, idle: float = 1.0) -> dict[str, float]:
    """Scenario D on Redis: client commands per uncontended cycle, and per second while idle.

    Counted by the server: ``MONITOR`` shows every command a client sent (commands run by a script are
    marked ``lua`` and not counted). A warm-up cycle first keeps handshakes and script loading out; an
    ``ECHO`` from another connection marks the end of each phase.
    """
    await adapter.release(await adapter.acquire(f"bench-d-{next(_fresh)}"))
    monitor_client = redis.asyncio.Redis.from_url(url)
    marker = redis.asyncio.Redis.from_url(url)
    try:
        async with monitor_client.monitor() as monitor:

            async def count_until(tag: str) -> int:
                await marker.echo(tag)
                seen = 0
                while True:
                    command = await monitor.next_command()
                    if command["client_type"] == "lua":
                        continue
                    if command["command"] == f"ECHO {tag}":
                        return seen
                    seen += 1

            await count_until("bench-d-start")
            for _ in range(cycles):
                await adapter.release(await adapter.acquire(f"bench-d-{next(_fresh)}"))
            busy = await count_until("bench-d-cycles")
            await asyncio.sleep(idle)
            quiet = await count_until("bench-d-idle")
    finally:
        await monitor_client.aclose()
        await marker.aclose()
    return {"commands_per_cycle": busy / cycles, "commands_while_idle": quiet / idle}


def _etcd_counts(port: int) -> tuple[float, float]:
    m = etcd_metrics(port)
    rpcs = sum(v for k, v in m.items() if k.startswith("grpc_server_handled_total{"))
    return rpcs, m.get("etcd_server_proposals_committed_total", 0.0)


async def etcd_leases(endpoint: str) -> set[int]:
    """The IDs of the leases the server has now."""
    import aetcd.rpc

    client = etcd_client(endpoint)
    try:
        await client.connect()
        reply = await client.leasestub.LeaseLeases(aetcd.rpc.LeaseLeasesRequest(), timeout=5)
        return {lease.ID for lease in reply.leases}
    finally:
        await client.close()


async def revoke_unused_leases(endpoint: str) -> int:
    """What an operator does with leases that look leaked: revoke every lease that backs no key. The
    lockers' kept leases go too, so their next obtains meet leases that are gone. How many were revoked."""
    import aetcd.rpc

    client = etcd_client(endpoint)
    revoked = 0
    try:
        await client.connect()
        reply = await client.leasestub.LeaseLeases(aetcd.rpc.LeaseLeasesRequest(), timeout=5)
        for lease in reply.leases:
            request = aetcd.rpc.LeaseTimeToLiveRequest(ID=lease.ID, keys=True)
            if not (await client.leasestub.LeaseTimeToLive(request, timeout=5)).keys:
                try:
                    await client.leasestub.LeaseRevoke(aetcd.rpc.LeaseRevokeRequest(ID=lease.ID), timeout=5)
                    revoked += 1
                except Exception as exc:  # gone meanwhile (expired): nothing left to clean
                    if "lease not found" not in str(exc):
                        raise
        return revoked
    finally:
        await client.close()


async def etcd_wire_cost(adapter: Adapter, endpoint: str, port: int, *, cycles: int = 100) -> dict[str, float]:
    """Scenario D on etcd: RPCs the server handled and raft proposals committed per uncontended cycle
    (from its ``/metrics``, after a warm-up cycle), and the leases left afterwards beyond those before."""
    await adapter.release(await adapter.acquire(f"bench-d-{next(_fresh)}"))
    leases_before = await etcd_leases(endpoint)
    rpcs0, proposals0 = _etcd_counts(port)
    for _ in range(cycles):
        await adapter.release(await adapter.acquire(f"bench-d-{next(_fresh)}"))
    rpcs1, proposals1 = _etcd_counts(port)
    await asyncio.sleep(1.0)
    rpcs2, _ = _etcd_counts(port)
    # etcd counts an RPC when it finishes: the two LeaseLeases calls are not in the window above.
    return {
        "rpcs_per_cycle": (rpcs1 - rpcs0) / cycles,
        "proposals_per_cycle": (proposals1 - proposals0) / cycles,
        "rpcs_while_idle": rpcs2 - rpcs1,
        "leases_left": len(await etcd_leases(endpoint) - leases_before),
    }
