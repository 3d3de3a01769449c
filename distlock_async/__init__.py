"""Distributed locks for asyncio over Redis and etcd, with an in-process memory backend.

::

    locker = distlock_async.from_url("memory://")
    async with locker.lock("invoice:42") as lock:
        ...  # only one holder at a time; lock.fencing_token orders the holders

Errors: :class:`NotObtainedError` when the key stays held by someone else for the whole retry budget,
:class:`LockNotHeldError` when a release or refresh finds the lock gone, :class:`LockLostError` when
``locker.lock()`` lost the lock in its body, :class:`BackendError` when the server fails; all derive from
:class:`DistlockError`. Bad arguments raise :class:`TypeError` or :class:`ValueError`, use of a closed
locker :class:`RuntimeError`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._backends.etcd import EtcdLocker
from ._backends.memory import MemoryLocker, MemoryStore
from ._backends.redis import RedisLocker
from ._errors import BackendError, DistlockError, LockLostError, LockNotHeldError, NotObtainedError
from ._options import EtcdOptions, Options
from ._protocols import Lock, Locker, Refresher
from ._url import from_url

try:
    __version__ = version("distlock-async")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BackendError",
    "DistlockError",
    "EtcdLocker",
    "EtcdOptions",
    "Lock",
    "LockLostError",
    "LockNotHeldError",
    "Locker",
    "MemoryLocker",
    "MemoryStore",
    "NotObtainedError",
    "Options",
    "RedisLocker",
    "Refresher",
    "from_url",
]

from_url.__module__ = "distlock_async"
