"""What the etcd backend makes of gRPC's and aetcd's errors: which are worth another try, and the
``BackendError`` that the others become."""

from __future__ import annotations

import asyncio

import aetcd.exceptions
import grpc

from ..._errors import BackendError

__all__ = [
    "CLIENT_ERRORS",
    "backend_error",
    "code",
    "detail",
    "is_lease_not_found",
    "is_token_rejected",
    "is_transient",
]


CLIENT_ERRORS = (grpc.RpcError, aetcd.exceptions.ClientError, OSError, asyncio.TimeoutError)


def is_token_rejected(exc: BaseException) -> bool:
    """etcd refused the token a call carried (expired, forgotten, outdated, or none): a new one may do."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    details = exc.details() or ""
    return any(reason in details for reason in _TOKEN_REJECTED)


#: Go's client gets a new token on these (``shouldRefreshToken``); the last means no token was sent.
_TOKEN_REJECTED = ("invalid auth token", "revision of auth store is old", "user name is empty")


def code(exc: BaseException) -> grpc.StatusCode | None:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    return None


def is_lease_not_found(exc: BaseException) -> bool:
    return (
        isinstance(exc, grpc.aio.AioRpcError)
        and exc.code() is grpc.StatusCode.NOT_FOUND
        and "lease not found" in (exc.details() or "")
    )


def is_transient(exc: BaseException) -> bool:
    """The member is gone, unreachable or without a leader: worth trying again, maybe elsewhere."""
    return code(exc) is grpc.StatusCode.UNAVAILABLE


def detail(exc: BaseException) -> str:
    return f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)


def backend_error(what: str, exc: BaseException, hint: str | None = None) -> BackendError:
    return BackendError(f"etcd {what} failed: {detail(exc)}" + (f" ({hint})" if hint else ""))
