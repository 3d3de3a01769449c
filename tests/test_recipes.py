"""The recipes of ``docs/howto/`` (leader election, jobs at most one at a time, rate limiting), run as
several replicas or workers, each on a locker of its own, on every backend with semaphores and elections
(the ``coordination`` fixture). What they promise is asserted by order and by counting, never by timing:
time only bounds the waits."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from fastapi import FastAPI

from distlock_async import Options
from examples import leader_scheduler

from .helpers import Backend

pytestmark = pytest.mark.anyio

#: Bounds every wait of a test: a hang fails the test instead of the whole run.
LIMIT = 20.0

_unique = itertools.count()


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (bounded) until ``condition()`` holds; fail naming ``what`` if it never does."""
    try:
        with anyio.fail_after(LIMIT):
            while not await condition():  # noqa: ASYNC110 - other replicas' state, read over HTTP
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
        """The leader that every running replica reports, once it has run ``ticks`` ticks; else ``None``."""
        leaders = {report["leader"] for report in (await self.reports()).values()}
        if len(leaders) != 1:
            return None
        (leader,) = leaders
        return leader if leader is not None and self.ticks_of(leader) >= ticks else None

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
