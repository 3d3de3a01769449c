"""What the etcd backend makes of gRPC's and aetcd's errors: which are worth another try, and the one
boundary, ``map_errors``, where the others become ``BackendError``.

``with map_errors("etcd txn failed"):`` reports an error of the client raised in its block as
``BackendError("etcd txn failed: DEADLINE_EXCEEDED: ...")`` with the error as ``__cause__``. Which
errors are worth another try, or mean "no such lease" rather than a failure, the callers decide inside
the block; what leaves it is reported. Nothing but the client's errors is touched: a cancellation, a
``RuntimeError`` of a closed locker, a ``BackendError`` made in the block, all leave it as they came.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aetcd.exceptions
import grpc

from .._boundary import ErrorBoundary

__all__ = [
    "CLIENT_ERRORS",
    "StreamFailed",
    "code",
    "detail",
    "details",
    "is_lease_not_found",
    "is_token_rejected",
    "is_transient",
    "map_errors",
]


CLIENT_ERRORS = (grpc.RpcError, aetcd.exceptions.ClientError, OSError, asyncio.TimeoutError)


class StreamFailed(Exception):
    """A shared stream broke under a pending request; the request may be sent again on a new stream.

    Its ``__cause__`` is the stream's own error, which ``map_errors`` chains in its place.
    """


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
    """gRPC's status and its text (``UNAVAILABLE: ...``), or the repr of another error."""
    return f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)


def details(exc: BaseException) -> str:
    """gRPC's text alone, or the repr of another error."""
    return exc.details() if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)


class map_errors(ErrorBoundary):
    """``with map_errors(what, describe=detail, hint=None):`` -- see the module docstring.

    A client error leaves the block as ``BackendError(f"{what}: {describe(exc)}")``, followed by
    `` ({hint(exc)})`` when ``hint`` has something to say about it; a ``StreamFailed`` likewise, with the
    stream's own error as the cause. Named in lower case, as it reads in ``with``.
    """

    __slots__ = ("_describe", "_hint", "_what")

    def __init__(
        self,
        what: str,
        *,
        describe: Callable[[BaseException], str] = detail,
        hint: Callable[[BaseException], str | None] | None = None,
    ) -> None:
        self._what = what
        self._describe = describe
        self._hint = hint

    def translate(self, exc: BaseException) -> tuple[str, BaseException] | None:
        if isinstance(exc, StreamFailed):
            cause = exc.__cause__ or exc
        elif isinstance(exc, CLIENT_ERRORS):
            cause = exc
        else:
            return None
        hint = self._hint(exc) if self._hint is not None else None
        return f"{self._what}: {self._describe(exc)}" + (f" ({hint})" if hint else ""), cause
