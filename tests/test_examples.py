"""The integration examples of ``examples/``, run in-process against the suite's real Redis."""

from __future__ import annotations

import asyncio
import itertools

import anyio
import httpx
import pytest
import redis.asyncio
from aiohttp.test_utils import TestClient, TestServer

from distlock_async import BackendError, RedisLocker
from distlock_async.testing.servers import RedisServer, free_port
from examples import aiohttp_app, cron_singleton, fastapi_app, worker

pytestmark = pytest.mark.anyio

_unique = itertools.count()


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DISTLOCK_URL", redis_server.url)
    return redis_server.url


async def test_fastapi_route_returns_409_while_another_replica_holds_the_invoice(redis_url: str) -> None:
    invoice = next(_unique)
    app = fastapi_app.app
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
        RedisLocker.from_url(redis_url) as other_replica,
    ):
        first = await client.post(f"/invoices/{invoice}/pay")
        assert first.status_code == 200, first.text

        held = await other_replica.obtain(f"invoice:{invoice}")
        busy = await client.post(f"/invoices/{invoice}/pay")
        assert busy.status_code == 409
        assert f"invoice:{invoice}" in busy.json()["detail"]
        await held.release()

        again = await client.post(f"/invoices/{invoice}/pay")
        assert again.status_code == 200
        # The dependency released its lock after each request, and tokens keep rising.
        assert first.json()["fencing_token"] < held.fencing_token < again.json()["fencing_token"]


async def test_fastapi_app_answers_one_422_for_a_bad_invoice_id(redis_url: str) -> None:
    app = fastapi_app.app
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        bad = await client.post("/invoices/forty-two/pay")
    assert bad.status_code == 422
    [error] = bad.json()["detail"]  # declared once: in the dependency, not again in the route
    assert error["loc"] == ["path", "invoice_id"]


async def test_fastapi_app_does_not_start_without_its_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTLOCK_URL", f"redis://127.0.0.1:{free_port()}/0?socket_timeout=1")
    app = fastapi_app.app
    with anyio.fail_after(20), pytest.raises(BackendError):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started without its Redis")


async def test_aiohttp_handler_holds_the_lock_and_answers_409_when_busy(redis_url: str) -> None:
    name = f"idx{next(_unique)}"
    async with TestClient(TestServer(aiohttp_app.make_app())) as client, RedisLocker.from_url(redis_url) as other:
        ok = await client.post(f"/indexes/{name}/rebuild")
        assert ok.status == 200
        async with other.lock(f"index:{name}"):
            busy = await client.post(f"/indexes/{name}/rebuild")
            assert busy.status == 409
        assert (await client.post(f"/indexes/{name}/rebuild")).status == 200


async def test_workers_sharing_a_job_list_run_each_job_once_and_never_together(redis_url: str) -> None:
    store = redis.asyncio.Redis.from_url(redis_url)
    done_key = f"jobs:done:{next(_unique)}"
    jobs = [f"job{next(_unique)}" for _ in range(20)]
    runs: list[str] = []
    running: set[str] = set()
    overlaps = 0

    async def job(job_id: str, fencing_token: int) -> None:
        nonlocal overlaps
        overlaps += job_id in running
        running.add(job_id)
        runs.append(job_id)
        await asyncio.sleep(0.005)
        running.discard(job_id)

    async def is_done(job_id: str) -> bool:
        return bool(await store.sismember(done_key, job_id))

    async def mark_done(job_id: str) -> None:
        await store.sadd(done_key, job_id)

    lockers = [RedisLocker.from_url(redis_url) for _ in range(3)]
    try:
        # Three workers, each with its own locker (as separate processes would have), on the same jobs.
        await asyncio.gather(*(worker.run_jobs(locker, jobs, job, is_done, mark_done) for locker in lockers))
        # A job skipped by every worker (all busy at once) is picked up by the next pass, as a real
        # worker loop would.
        await worker.run_jobs(lockers[0], jobs, job, is_done, mark_done)
    finally:
        for locker in lockers:
            await locker.aclose()
        await store.aclose()
    assert overlaps == 0
    assert sorted(runs) == sorted(jobs)


async def test_cron_singleton_runs_each_tick_on_exactly_one_of_three_replicas(redis_url: str) -> None:
    name = f"report{next(_unique)}"
    ran: list[tuple[str, int]] = []
    lockers = {f"replica{n}": RedisLocker.from_url(redis_url) for n in range(3)}

    def task_of(replica: str) -> cron_singleton.Task:
        async def task(tick: int) -> None:
            ran.append((replica, tick))

        return task

    try:
        for tick in range(5):
            winners = await asyncio.gather(
                *(cron_singleton.run_tick(locker, name, tick, 60.0, task_of(r)) for r, locker in lockers.items())
            )
            assert sum(winners) == 1
        # A replica that comes late to a tick another already ran does not run it again.
        assert not await cron_singleton.run_tick(lockers["replica0"], name, 4, 60.0, task_of("replica0"))
    finally:
        for locker in lockers.values():
            await locker.aclose()
    assert sorted(tick for _, tick in ran) == [0, 1, 2, 3, 4]
