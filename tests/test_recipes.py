"""The recipes of ``docs/howto/`` (leader election, jobs at most one at a time, rate limiting), run as
several replicas or workers, each on a locker of its own, on every backend with semaphores and elections
(the ``coordination`` fixture). What they promise is asserted by order and by counting, never by timing:
time only bounds the waits."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from apscheduler import AsyncScheduler
from fastapi import FastAPI

from distlock_async import Options
from distlock_async.testing.servers import RedisServer
from examples import apscheduler_job_once, leader_scheduler, rate_limit

from .helpers import Backend, log_event

pytestmark = pytest.mark.anyio

#: Bounds every wait of a test: a hang fails the test instead of the whole run.
LIMIT = 20.0

_unique = itertools.count()


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Wait (bounded) until ``condition()`` holds; fail naming ``what`` if it never does."""

    async def holds() -> bool:
        result = condition()
        return await result if inspect.isawaitable(result) else result

    try:
        with anyio.fail_after(LIMIT):
            while not await holds():  # noqa: ASYNC110 - other replicas' state, read over HTTP
                await anyio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


# --- leader election: examples/leader_scheduler.py -------------------------------------------------------


class Replicas:
    """Replicas of the leader_scheduler app, each with its own locker; their job records who ran each tick."""

    def __init__(self, coordination: Backend, names: list[str]) -> None:
        self.election = f"scheduler{next(_unique)}"
        #: (replica, fencing token) of every tick, in the order they ran.
        self.ticks: list[tuple[str, int]] = []
        self.running: set[str] = set()
        self.overlaps = 0
        self.apps = {name: self._app(coordination, name) for name in names}
        self.clients: dict[str, httpx.AsyncClient] = {}
        self._stop: dict[str, anyio.Event] = {}
        self._stopped: dict[str, anyio.Event] = {}

    def _app(self, coordination: Backend, name: str) -> FastAPI:
        async def job(fencing_token: int) -> None:
            self.overlaps += bool(self.running)
            self.running.add(name)
            self.ticks.append((name, fencing_token))
            try:
                await anyio.lowlevel.checkpoint()  # a shutdown may cancel the job here
            finally:
                self.running.discard(name)

        return leader_scheduler.create_app(
            lambda: coordination.locker(Options(holder=name)), name, job=job, period=0.01, election=self.election
        )

    async def serve(self, name: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """One replica, from startup to shutdown, in a task of its own (as a process of its own would be)."""
        app = self.apps[name]
        self._stop[name], self._stopped[name] = anyio.Event(), anyio.Event()
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client,
            ):
                self.clients[name] = client
                task_status.started()
                await self._stop[name].wait()
                del self.clients[name]
        finally:
            self._stopped[name].set()

    async def stop(self, name: str) -> None:
        """Shut the replica down (its lifespan exits), and wait until it has."""
        self._stop[name].set()
        with anyio.fail_after(LIMIT):
            await self._stopped[name].wait()

    async def reports(self) -> dict[str, dict[str, Any]]:
        """Every running replica's answer to ``GET /leader``."""
        answers = {}
        for name, client in self.clients.items():
            response = await client.get("/leader")
            assert response.status_code == 200, response.text
            answers[name] = response.json()
        return answers

    async def leader_with_ticks(self, ticks: int) -> str | None:
        """The running replica that every running replica reports as leader, once it has run ``ticks`` ticks."""
        leaders = {report["leader"] for report in (await self.reports()).values()}
        if len(leaders) != 1:
            return None
        (leader,) = leaders
        # A replica that shut down may still be reported for a moment: observations follow, they do not poll.
        return leader if leader in self.clients and self.ticks_of(leader) >= ticks else None

    async def wait_for_leader(self, ticks: int = 3) -> str:
        found: list[str] = []

        async def agreed() -> bool:
            leader = await self.leader_with_ticks(ticks)
            found[:] = [leader] if leader else []
            return bool(found)

        await until(agreed, f"the replicas {sorted(self.clients)} agree on a leader that ran {ticks} ticks")
        return found[0]

    def ticks_of(self, name: str) -> int:
        return sum(1 for ran, _ in self.ticks if ran == name)


@asynccontextmanager
async def replicas(coordination: Backend, n: int) -> AsyncIterator[Replicas]:
    group = Replicas(coordination, [f"replica-{i}" for i in range(n)])
    async with anyio.create_task_group() as tasks:
        for name in group.apps:
            await tasks.start(group.serve, name)
        try:
            yield group
        finally:
            for name in list(group.clients):
                await group.stop(name)


async def test_leader_scheduler_runs_each_tick_on_one_replica_and_every_replica_reports_it(
    coordination: Backend,
) -> None:
    async with replicas(coordination, 3) as group:
        leader = await group.wait_for_leader(ticks=5)
        reports = await group.reports()
        # Every tick so far ran on the leader, in one term, one at a time.
        assert {name for name, _ in group.ticks} == {leader}
        assert len({token for _, token in group.ticks}) == 1
        assert group.overlaps == 0
        # All three replicas report that leader and its term's token; only the leader says it leads.
        [(_, token)] = set(group.ticks)
        assert {(r["leader"], r["fencing_token"]) for r in reports.values()} == {(leader, token)}
        assert [name for name, r in reports.items() if r["leading"]] == [leader]


async def test_leader_scheduler_hands_over_when_the_leader_shuts_down(coordination: Backend) -> None:
    """Each leader in turn shuts down (its lifespan resigns); another replica takes over the ticks, and the
    replicas still running report the new leader."""
    async with replicas(coordination, 3) as group:
        order = [await group.wait_for_leader()]
        for _ in range(2):
            await group.stop(order[-1])
            stopped_at = len(group.ticks)
            order.append(await group.wait_for_leader())
            # The stopped replica ran no tick after its shutdown, and no longer answers.
            assert all(name != order[-2] for name, _ in group.ticks[stopped_at:])
            assert order[-2] not in group.clients
        reports = await group.reports()
    assert len(set(order)) == 3, order
    assert [r["leader"] for r in reports.values()] == [order[-1]]
    # The ticks ran leader after leader, never two at once, each leader in one term whose fencing token
    # exceeds its predecessor's.
    assert group.overlaps == 0
    runs = [(name, token) for (name, token), _ in itertools.groupby(group.ticks)]
    assert [name for name, _ in runs] == order
    tokens = [token for _, token in runs]
    assert tokens == sorted(set(tokens))


# --- rate limiting: examples/rate_limit.py ----------------------------------------------------------------


class Partner:
    """A stand-in for the partner's API: counts the requests it has open at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.peak = 0
        self.served: list[str] = []
        self.reached = anyio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            if self.open == self.limit:
                self.reached.set()
            # The first requests stay open until ``limit`` are open at once: a semaphore that let fewer
            # through would fail the test here, without depending on how fast anything runs.
            with anyio.fail_after(LIMIT):
                await self.reached.wait()
            await anyio.sleep(0.002)  # stay open a little, so that later requests overlap too
        finally:
            self.open -= 1
        self.served.append(request.query_string)
        return web.json_response({"page": request.query["page"]})


async def test_rate_limit_keeps_at_most_k_calls_in_flight_across_replicas(coordination: Backend) -> None:
    """Three replicas, each with its own locker and HTTP client, send ten requests each, all at once; the
    partner never has more than three open, has three open at some point, and serves every request once."""
    k = 3
    partner = Partner(k)
    app = web.Application()
    app.router.add_get("/", partner.handle)
    name = f"partner{next(_unique)}"
    async with TestServer(app) as server:
        base_url = str(server.make_url(""))

        async def replica(n: int) -> None:
            locker = coordination.locker()
            async with httpx.AsyncClient(base_url=base_url) as client:
                pages = [f"/?page={n}-{i}" for i in range(10)]
                responses = await rate_limit.fetch_all(locker, client, pages, limit=k, name=name)
            assert [r.json()["page"] for r in responses] == [f"{n}-{i}" for i in range(10)]

        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as replicas_:
                for n in range(3):
                    replicas_.start_soon(replica, n)
    assert partner.peak == k
    assert sorted(partner.served) == sorted(f"page={n}-{i}" for n in range(3) for i in range(10))


# --- arq: examples/arq_job_once.py ------------------------------------------------------------------------


class Runs:
    """What the jobs' work did: every run's fencing token in order, and how often two ran at once."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.running = 0
        self.overlaps = 0

    @asynccontextmanager
    async def run(self, fencing_token: int) -> AsyncIterator[None]:
        self.overlaps += self.running > 0
        self.running += 1
        self.tokens.append(fencing_token)
        try:
            yield
        finally:
            self.running -= 1


def arq_on_new_redis(test: Callable[..., Any]) -> Callable[..., Any]:
    """arq calls redis-py in ways that redis-py 5.0.1 and 6 deprecated (it pins redis<6: see
    docs/howto/jobs.md); the suite turns warnings into errors, so these two are let through."""
    closing = pytest.mark.filterwarnings("ignore:Call to deprecated close.:DeprecationWarning")
    connecting = pytest.mark.filterwarnings(
        "ignore:Call to '__init__' function with deprecated usage of input argument/s 'retry_on_timeout'"
        ":DeprecationWarning"
    )
    marked: Callable[..., Any] = connecting(closing(test))
    return marked


async def run_arq_workers(
    coordination: Backend, redis_server: RedisServer, jobs: list[tuple[str, tuple[Any, ...]]], **worker: Any
) -> list[Any]:
    """Enqueue ``jobs`` on a fresh queue, run three arq workers (each with a locker of its own) until the queue is
    empty, and return each job's result, in the order enqueued."""
    pytest.importorskip("arq", reason="arq goes in with --no-deps (pyproject.toml, group arq-no-deps)")
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker

    from examples import arq_job_once

    settings = RedisSettings(host="127.0.0.1", port=redis_server.port)
    queue_name = f"arq:queue{next(_unique)}"
    queue = await create_pool(settings, default_queue_name=queue_name)
    try:
        enqueued = [await queue.enqueue_job(function, *args) for function, args in jobs]
        workers = [
            Worker(
                functions=[arq_job_once.rebuild_search_index, arq_job_once.settle_account],
                queue_name=queue_name,
                redis_settings=settings,
                burst=True,  # stop once the queue is empty
                handle_signals=False,
                poll_delay=0.01,
                ctx={"locker": coordination.locker()},
                **worker,
            )
            for _ in range(3)
        ]
        try:
            with anyio.fail_after(LIMIT):
                async with anyio.create_task_group() as tasks:
                    for w in workers:
                        tasks.start_soon(w.async_run)
        finally:
            for w in workers:
                await w.close()
        return [await job.result(timeout=LIMIT) for job in enqueued if job is not None]
    finally:
        await queue.aclose()


@arq_on_new_redis
async def test_arq_settlements_run_one_at_a_time_across_workers_and_none_is_lost(
    coordination: Backend, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples import arq_job_once

    runs = Runs()
    workers_started: set[int] = set()
    all_started = anyio.Event()

    async def job_started(ctx: dict[str, Any]) -> None:
        workers_started.add(id(ctx["locker"]))
        if len(workers_started) == 3:
            all_started.set()

    async def settle(account: str, fencing_token: int) -> None:
        async with runs.run(fencing_token):
            # The first settlement holds the account until every worker has started one (a worker takes
            # at most 4 of the 12): the others wait for their turn on every worker.
            await all_started.wait()

    monkeypatch.setattr(arq_job_once, "settle", settle)
    results = await run_arq_workers(
        coordination, redis_server, [("settle_account", ("acct-42",))] * 12, max_jobs=4, on_job_start=job_started
    )
    assert len(workers_started) == 3
    assert results == ["settled acct-42"] * 12  # none lost, none failed
    assert runs.overlaps == 0
    assert len(runs.tokens) == 12
    assert runs.tokens == sorted(set(runs.tokens))  # one holder after another


@arq_on_new_redis
async def test_arq_rebuild_runs_once_and_the_jobs_that_find_it_running_skip(
    coordination: Backend, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six rebuilds at once on three workers: the first holds the lock until the other five have ended, which
    all skipped."""
    from examples import arq_job_once

    runs = Runs()
    ended = 0
    others_ended = anyio.Event()

    async def job_ended(ctx: dict[str, Any]) -> None:
        nonlocal ended
        ended += 1
        if ended == 5:
            others_ended.set()

    async def rebuild(fencing_token: int) -> None:
        async with runs.run(fencing_token):
            await others_ended.wait()

    monkeypatch.setattr(arq_job_once, "rebuild", rebuild)
    results = await run_arq_workers(
        coordination, redis_server, [("rebuild_search_index", ())] * 6, on_job_end=job_ended
    )
    assert sorted(results) == ["rebuilt"] + ["skipped: another worker is rebuilding"] * 5
    assert len(runs.tokens) == 1


# --- APScheduler 4: examples/apscheduler_job_once.py ------------------------------------------------------


@asynccontextmanager
async def schedulers(coordination: Backend, period: float) -> AsyncIterator[None]:
    """Three replicas, each an APScheduler of its own with a locker of its own and the example's schedules."""
    stop = anyio.Event()

    async def replica(name: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with coordination.locker(Options(holder=name)) as locker, AsyncScheduler() as scheduler:
            await apscheduler_job_once.add_schedules(scheduler, locker, name, period)
            await scheduler.start_in_background()
            task_status.started()
            await stop.wait()

    async with anyio.create_task_group() as tasks:
        for n in range(3):
            await tasks.start(replica, f"replica-{n}")
        try:
            yield
        finally:
            stop.set()


async def test_apscheduler_refresh_runs_on_one_replica_at_a_time_and_the_others_skip(
    coordination: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = Runs()
    skips = 0
    others_skipped = anyio.Event()

    async def refresh(fencing_token: int) -> None:
        async with runs.run(fencing_token):
            if len(runs.tokens) == 1:
                await others_skipped.wait()  # the first run holds the lock until both other replicas skipped

    async def skipped(job: str) -> None:
        nonlocal skips
        skips += job == "refresh_exchange_rates"
        if skips == 2:
            others_skipped.set()

    monkeypatch.setattr(apscheduler_job_once, "refresh", refresh)
    monkeypatch.setattr(apscheduler_job_once, "skipped", skipped)
    async with schedulers(coordination, period=0.02):
        await until(lambda: len(runs.tokens) >= 4, "four refreshes")
    assert skips >= 2
    assert runs.overlaps == 0
    assert runs.tokens == sorted(set(runs.tokens))


async def test_apscheduler_flushes_wait_their_turn_and_every_replica_flushes(
    coordination: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = Runs()
    flushed: list[str] = []

    async def flush(replica: str, fencing_token: int) -> None:
        async with runs.run(fencing_token):
            flushed.append(replica)
            if len(flushed) == 1:
                with log_event("is held by another owner; waiting") as waiting, anyio.fail_after(LIMIT):
                    await waiting.wait()  # another replica queued behind this flush

    monkeypatch.setattr(apscheduler_job_once, "flush", flush)
    async with schedulers(coordination, period=0.5):
        await until(lambda: len(set(flushed)) == 3, "a flush by every replica")
    # The replica that waited ran right after the holder released, in its own turn, never alongside.
    assert flushed[1] != flushed[0]
    assert runs.overlaps == 0
    assert runs.tokens == sorted(set(runs.tokens))
