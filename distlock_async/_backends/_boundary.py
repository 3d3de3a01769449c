"""What each backend's error boundary (its ``errors.map_errors``) shares: a ``with`` block whose client
errors leave it as ``BackendError`` with the original as ``__cause__``; anything else passes untouched."""

from __future__ import annotations

from types import TracebackType

from .._errors import BackendError

__all__ = ["ErrorBoundary"]


class ErrorBoundary:
    """A context manager that reports the errors :meth:`translate` knows as ``BackendError``.

    A class rather than a generator context manager: no generator to make and run per command. The
    message is built only when an error happens.
    """

    __slots__ = ()

    def translate(self, exc: BaseException) -> tuple[str, BaseException] | None:
        """The message and cause of the ``BackendError`` that ``exc`` becomes; ``None`` to let it pass."""
        raise NotImplementedError

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is None:
            return
        reported = self.translate(exc)
        if reported is not None:
            message, cause = reported
            raise BackendError(message) from cause
