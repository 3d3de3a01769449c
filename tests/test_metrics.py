"""SPEC "Metrics": what the library records through OpenTelemetry, read back with the SDK's in-memory
reader, on every backend (the ``backend`` fixture: real servers).

Each test gets a meter provider of its own, set as the global one as an application would set it; the
API allows that once per process, so the fixture resets the API's globals around each test (what
opentelemetry-test-utils' ``reset_metrics_globals`` does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry import metrics
from opentelemetry.metrics import _internal as metrics_globals
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.util._once import Once

from distlock_async import BackendError, LockLostError, LockNotHeldError, NotObtainedError, Options, from_url
from distlock_async._core._metrics import HOLD_BUCKETS, OBTAIN_BUCKETS
from distlock_async.testing.servers import free_port

from .helpers import Backend, log_event

pytestmark = pytest.mark.anyio

LIMIT = 20.0

#: A key that must never show up in an attribute.
KEY = "invoice:42"


def _reset_global_provider() -> None:
    metrics_globals._METER_PROVIDER_SET_ONCE = Once()
    metrics_globals._METER_PROVIDER = None
    metrics_globals._PROXY_METER_PROVIDER = metrics_globals._ProxyMeterProvider()


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    _reset_global_provider()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(provider)
    try:
        yield reader
    finally:
        provider.shutdown()
        _reset_global_provider()


class Measured:
    """What the reader collected from the ``distlock_async`` meter, by instrument."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.metrics: dict[str, Any] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                if scope.scope.name == "distlock_async":
                    self.metrics.update({metric.name: metric for metric in scope.metrics})

    def points(self, name: str) -> list[Any]:
        metric = self.metrics.get(name)
        return [] if metric is None else list(metric.data.data_points)

    def histogram(self, name: str, **attributes: str) -> list[HistogramDataPoint]:
        wanted = {f"distlock.{k}": v for k, v in attributes.items()}
        return [p for p in self.points(name) if dict(p.attributes or {}) == wanted]

    def lost(self, **attributes: str) -> int:
        wanted = {f"distlock.{k}": v for k, v in attributes.items()}
        points: list[NumberDataPoint] = self.points("distlock.lost")
        return sum(int(p.value) for p in points if dict(p.attributes or {}) == wanted)

    def attributes(self) -> list[dict[str, Any]]:
        return [dict(p.attributes or {}) for name in self.metrics for p in self.points(name)]


def label(backend: Backend) -> str:
    """``distlock.backend`` of a backend under test: Redis Cluster and Sentinel are Redis."""
    return backend.name.partition("-")[0]


def only(points: list[HistogramDataPoint]) -> HistogramDataPoint:
    assert len(points) == 1, points
    return points[0]


async def test_an_obtain_and_its_hold_are_recorded_with_their_durations(
    backend: Backend, reader: InMemoryMetricReader
) -> None:
    name = label(backend)
    lock = await backend.locker().obtain(KEY)
    await anyio.sleep(0.3)
    await lock.release()
    measured = Measured(reader)
    obtained = only(measured.histogram("distlock.obtain.duration", backend=name, kind="lock", outcome="acquired"))
    assert obtained.count == 1
    assert 0 <= obtained.sum < LIMIT
    held = only(measured.histogram("distlock.hold.duration", backend=name, kind="lock"))
    assert held.count == 1
    assert held.sum >= 0.9 * 0.3  # a lower bound only: the machine may be slow
    assert measured.lost(backend=name, kind="lock") == 0
    # Keys are never attributes: these are all the attributes there are.
    for attributes in measured.attributes():
        assert KEY not in attributes.values()
        assert set(attributes) <= {"distlock.backend", "distlock.kind", "distlock.outcome"}


async def test_a_busy_key_records_not_obtained(backend: Backend, reader: InMemoryMetricReader) -> None:
    holder = await backend.locker().obtain(KEY)
    with pytest.raises(NotObtainedError):
        await backend.locker().obtain(KEY, timeout=0.2)
    await holder.release()
    measured = Measured(reader)
    name = label(backend)
    refused = only(measured.histogram("distlock.obtain.duration", backend=name, kind="lock", outcome="not_obtained"))
    assert refused.count == 1
    assert refused.sum >= 0.9 * 0.2
    assert (
        only(measured.histogram("distlock.obtain.duration", backend=name, kind="lock", outcome="acquired")).count == 1
    )


async def test_a_cancelled_wait_records_cancelled(backend: Backend, reader: InMemoryMetricReader) -> None:
    holder = await backend.locker().obtain(KEY)
    waiter = backend.locker()
    with log_event("is held by another owner; waiting") as waiting, anyio.fail_after(LIMIT):
        task = asyncio.ensure_future(waiter.obtain(KEY, timeout=float("inf")))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await holder.release()
    measured = Measured(reader)
    cancelled = measured.histogram("distlock.obtain.duration", backend=label(backend), kind="lock", outcome="cancelled")
    assert only(cancelled).count == 1


async def test_a_dead_redis_records_error(reader: InMemoryMetricReader) -> None:
    async with from_url(f"redis://127.0.0.1:{free_port()}") as locker:
        with pytest.raises(BackendError):
            await locker.obtain(KEY)
    measured = Measured(reader)
    assert (
        only(measured.histogram("distlock.obtain.duration", backend="redis", kind="lock", outcome="error")).count == 1
    )
    assert measured.histogram("distlock.hold.duration", backend="redis", kind="lock") == []


async def test_a_lock_lost_in_its_body_is_counted_once(backend: Backend, reader: InMemoryMetricReader) -> None:
    # The refresher finds the key gone (lost), and the block raises LockLostError: one loss, one hold.
    locker = backend.locker(Options(ttl=backend.short_ttl))
    with anyio.fail_after(LIMIT), pytest.raises(LockLostError):
        async with locker.lock(KEY):
            await backend.steal(KEY)
            await anyio.sleep_forever()
    measured = Measured(reader)
    name = label(backend)
    assert measured.lost(backend=name, kind="lock") == 1
    assert only(measured.histogram("distlock.hold.duration", backend=name, kind="lock")).count == 1


async def test_a_lock_found_gone_by_refresh_is_counted_once(backend: Backend, reader: InMemoryMetricReader) -> None:
    lock = await backend.locker().obtain(KEY)
    await backend.steal(KEY)
    with pytest.raises(LockNotHeldError):
        await lock.refresh()
    with pytest.raises(LockNotHeldError):
        await lock.release()  # finds it gone too: the same loss
    measured = Measured(reader)
    name = label(backend)
    assert measured.lost(backend=name, kind="lock") == 1
    assert only(measured.histogram("distlock.hold.duration", backend=name, kind="lock")).count == 1


async def test_closing_the_locker_during_a_lock_body_is_no_loss(backend: Backend, reader: InMemoryMetricReader) -> None:
    # A shutdown: the body is cancelled with LockLostError, but the application let go of the lock.
    locker = backend.locker()
    entered = anyio.Event()

    async def body() -> None:
        with pytest.raises(LockLostError):
            async with locker.lock(KEY):
                entered.set()
                await anyio.sleep_forever()

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(body)
            await entered.wait()
            await locker.aclose()
    measured = Measured(reader)
    name = label(backend)
    assert measured.lost(backend=name, kind="lock") == 0
    assert only(measured.histogram("distlock.hold.duration", backend=name, kind="lock")).count == 1


async def test_the_instruments_are_named_and_bucketed_for_seconds(reader: InMemoryMetricReader) -> None:
    async with from_url("memory://") as locker, locker.lock(KEY):
        pass
    lock = await from_url("memory://").obtain(KEY)
    await lock.release()
    measured = Measured(reader)
    assert set(measured.metrics) == {"distlock.obtain.duration", "distlock.hold.duration"}  # nothing lost yet
    obtain, hold = measured.metrics["distlock.obtain.duration"], measured.metrics["distlock.hold.duration"]
    assert (obtain.unit, hold.unit) == ("s", "s")
    assert tuple(only(measured.points("distlock.obtain.duration")).explicit_bounds) == OBTAIN_BUCKETS
    assert tuple(only(measured.points("distlock.hold.duration")).explicit_bounds) == HOLD_BUCKETS


async def test_a_provider_set_after_the_first_lock_gets_what_follows() -> None:
    # The application sets its provider late (or replaces one, as these tests do): the library follows.
    _reset_global_provider()
    try:
        first = await from_url("memory://").obtain(KEY)  # recorded into the API's no-op proxy
        await first.release()
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        second = await from_url("memory://").obtain(KEY)
        await second.release()
        measured = Measured(reader)
        assert only(measured.histogram("distlock.obtain.duration", backend="memory", kind="lock", outcome="acquired"))
        assert (
            only(
                measured.histogram("distlock.obtain.duration", backend="memory", kind="lock", outcome="acquired")
            ).count
            == 1
        )
    finally:
        _reset_global_provider()
