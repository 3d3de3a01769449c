"""A FastAPI app run as several replicas: one of them, the leader, runs a periodic job; every one of them
answers ``GET /leader`` with who leads.

Run it with ``DISTLOCK_URL=redis://localhost:6379 REPLICA=a uvicorn examples.leader_scheduler:app --port 8000``
(and ``REPLICA=b ... --port 8001``, ...).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request

from distlock_async import BackendError, Leader, Locker, LockLostError, Options, from_url

log = logging.getLogger(__name__)

#: The job the leader runs every period, given its term's fencing token.
Job = Callable[[int], Awaitable[None]]


async def report(fencing_token: int) -> None:
    # Pass the fencing token to whatever the job writes, so a deposed leader's late write is refused.
    log.info("running the scheduled report as leader #%d", fencing_token)


async def lead(locker: Locker, election: str, replica: str, job: Job, period: float) -> None:
    """Campaign; while leading, run ``job`` every ``period`` seconds; campaign again if leadership is lost."""
    while True:
        try:
            # Waits here, as long as it takes, while another replica leads.
            async with locker.election(election).campaign(replica) as term:
                log.info("%s leads (term #%d)", replica, term.fencing_token)
                while True:
                    try:
                        await job(term.fencing_token)
                    except Exception:
                        log.exception("the scheduled job failed; it runs again next period")
                    await anyio.sleep(period)
        except LockLostError:
            # The leadership expired (the server was unreachable for a TTL, or this replica stalled):
            # the job was cancelled where it stood, and another replica may lead by now.
            log.warning("%s lost the leadership; campaigning again", replica)
        except BackendError:
            log.exception("the server failed; campaigning again in a second")
            await anyio.sleep(1.0)


async def follow(locker: Locker, election: str, app: FastAPI) -> None:
    """Keep ``app.state.leader`` up to date: one watch per replica, not one server round trip per request."""
    while True:
        try:
            async with locker.election(election).observe() as leaders:
                async for leader in leaders:
                    app.state.leader = leader
        except BackendError:
            log.exception("the server failed; observing again in a second")
            app.state.leader = None  # unknown, rather than stale
            await anyio.sleep(1.0)
        else:
            return  # the locker was closed


def create_app(
    make_locker: Callable[[], Locker],
    replica: str,
    *,
    job: Job = report,
    period: float = 1.0,
    election: str = "scheduler",
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.leader = None
        # The task group closes before the locker: shutdown cancels both tasks, which resigns the
        # leadership (if this replica has it) and ends the watch, then closes the connection.
        async with make_locker() as locker, anyio.create_task_group() as tasks:
            tasks.start_soon(lead, locker, election, replica, job, period)
            tasks.start_soon(follow, locker, election, app)
            yield
            tasks.cancel_scope.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/leader")
    async def leader(request: Request) -> dict[str, str | int | bool | None]:
        current: Leader | None = request.app.state.leader
        return {
            "leader": current.value if current else None,
            "fencing_token": current.fencing_token if current else None,
            "me": replica,
            "leading": current is not None and current.value == replica,
        }

    return app


REPLICA = os.environ.get("REPLICA", f"{socket.gethostname()}:{os.getpid()}")
app = create_app(
    # The holder label makes `distlock status` and the observers name this replica too.
    lambda: from_url(os.environ.get("DISTLOCK_URL", "redis://localhost:6379"), Options(holder=REPLICA)),
    REPLICA,
)
