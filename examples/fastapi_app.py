"""A FastAPI app that pays an invoice at most once at a time, whichever replica gets the request.

Run it with ``DISTLOCK_URL=redis://localhost:6379 uvicorn examples.fastapi_app:app``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from distlock_async import Lock, Locker, NotObtainedError, from_url


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One locker for the life of the app: it keeps one connection per Redis server, shared by all requests.
    async with from_url(os.environ.get("DISTLOCK_URL", "redis://localhost:6379")) as locker:
        # Fail at startup, not at the first request, if the server cannot be reached (BackendError).
        await locker.inspect("invoice:startup-check")
        app.state.locker = locker
        yield


app = FastAPI(lifespan=lifespan)


@app.exception_handler(NotObtainedError)
async def busy(request: Request, exc: NotObtainedError) -> JSONResponse:
    return JSONResponse({"detail": f"{exc.key} is being processed, try again later"}, status_code=409)


@dataclass
class LockedInvoice:
    id: int
    lock: Lock


async def locked_invoice(invoice_id: int, request: Request) -> AsyncIterator[LockedInvoice]:
    """The invoice, locked for the duration of the request; 409 if another request holds it."""
    locker: Locker = request.app.state.locker
    lock = await locker.obtain(f"invoice:{invoice_id}", ttl=30, max_retries=0)
    try:
        yield LockedInvoice(invoice_id, lock)
    finally:
        await lock.release()


@app.post("/invoices/{invoice_id}/pay")
async def pay(invoice: Annotated[LockedInvoice, Depends(locked_invoice)]) -> dict[str, int]:
    # Pass the fencing token to whatever you write, so a stale holder's late write can be refused.
    return {"invoice": invoice.id, "fencing_token": invoice.lock.fencing_token}
