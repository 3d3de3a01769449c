"""The exceptions the library raises on purpose.

::

    Exception
    └── DistlockError
        ├── NotObtainedError        the key is held by someone else; the retry budget is spent
        ├── LockNotHeldError        release/refresh of a lock that is no longer ours
        │   └── LockLostError       raised by ``locker.lock()`` when the lock was lost in its body
        └── BackendError            the server could not be reached or answered an error

Wrong types raise ``TypeError`` and bad values ``ValueError``; use of a closed
locker raises ``RuntimeError``. Errors of the client libraries (redis-py, gRPC, aetcd)
never cross the public boundary: backends translate them into ``BackendError`` with the
original exception as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "DistlockError",
    "LockLostError",
    "LockNotHeldError",
    "NotObtainedError",
]


class DistlockError(Exception):
    """Base class of every error that ``distlock_async`` raises on purpose."""


class NotObtainedError(DistlockError):
    """The key is held by someone else and the retry budget is spent.

    Attributes:
        key: the key that could not be obtained.
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"lock {key!r} not obtained: it is held by another owner")
        self.key = key


class LockNotHeldError(DistlockError):
    """The lock has expired, was released, or now belongs to another owner.

    Raised by ``release()`` and ``refresh()``; the other owner's lock is left untouched.

    Attributes:
        key: the key of the lock.
    """

    def __init__(self, key: str, message: str | None = None) -> None:
        super().__init__(message or f"lock {key!r} is not held: it expired, was released or has another owner")
        self.key = key


class LockLostError(LockNotHeldError):
    """The lock was lost while the body of ``async with locker.lock(...)`` ran.

    The body was cancelled when the loss was noticed. ``__cause__`` tells why the lock could not be kept:
    a [`LockNotHeldError`][distlock_async.LockNotHeldError] when it is gone for sure, a
    [`BackendError`][distlock_async.BackendError] when it could not be confirmed in time.
    """

    def __init__(self, key: str) -> None:
        super().__init__(key, f"lock {key!r} was lost while its body ran; the body was cancelled")


class BackendError(DistlockError):
    """The server could not be reached, timed out, or answered with an error.

    The exception of the client library is chained as ``__cause__``. Never raised for contention.
    """


for _cls in (DistlockError, NotObtainedError, LockNotHeldError, LockLostError, BackendError):
    _cls.__module__ = "distlock_async"
del _cls
