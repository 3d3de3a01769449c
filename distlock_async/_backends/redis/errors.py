"""The Redis backend's one error boundary: where an error of redis-py or the socket layer becomes
``BackendError``.

``with map_errors("what failed"):`` reports such an error raised in its block as
``BackendError("what failed: <the error>")`` with the error as ``__cause__``. Which errors it reports
is the caller's choice among the kinds below; error replies (``ResponseError``) are answers rather
than failures to get one, so a caller that decides about them lets them pass. Nothing but those kinds
is touched: a cancellation, a ``RuntimeError`` of a closed locker, a ``BackendError`` made in the
block, all leave it as they came.
"""

from __future__ import annotations

import redis.exceptions

from .._boundary import ErrorBoundary

__all__ = ["CLIENT_ERRORS", "REPLY_ERRORS", "map_errors"]


#: Errors of redis-py and the socket layer that mean "the server could not be reached or answered badly".
CLIENT_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError, EOFError)

#: An error reply: the server ran the command and answered an error (NOSCRIPT, TRYAGAIN, MOVED, ...).
REPLY_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.ResponseError,)


class map_errors(ErrorBoundary):
    """``with map_errors(what, errors=CLIENT_ERRORS, passing=()):`` -- see the module docstring.

    An exception of ``errors`` and not of ``passing`` leaves the block as ``BackendError(f"{what}: {exc}")``
    from it. Stateless, so one instance can serve every call (each lock connection keeps one); the
    message is built only when an error happens. Named in lower case, as it reads in ``with``.
    """

    __slots__ = ("_errors", "_passing", "_what")

    def __init__(
        self,
        what: str,
        errors: tuple[type[BaseException], ...] = CLIENT_ERRORS,
        *,
        passing: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._what = what
        self._errors = errors
        self._passing = passing

    def translate(self, exc: BaseException) -> tuple[str, BaseException] | None:
        if not isinstance(exc, self._errors) or isinstance(exc, self._passing):
            return None
        return f"{self._what}: {exc}", exc
