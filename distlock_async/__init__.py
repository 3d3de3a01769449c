"""Distributed locks for asyncio over Redis and etcd, with an in-process memory backend.

::

    locker = distlock_async.from_url("memory://")
    async with locker.lock("invoice:42") as lock:
        ...  # only one holder at a time; lock.fencing_token orders the holders

Errors: ``NotObtainedError`` when the key stays held by someone else for the whole retry budget,
``LockNotHeldError`` when a release or refresh finds the lock gone, ``LockLostError`` when
``locker.lock()`` lost the lock in its body, ``BackendError`` when the server fails; all derive from
``DistlockError``. Bad arguments raise ``TypeError`` or ``ValueError``, use of a closed
locker ``RuntimeError``.

The Redis and etcd backends, and their client libraries, are imported when first used
(``distlock_async.RedisLocker``, ``from_url("redis://...")``), as anyio loads its backends: a process that
locks in memory, or only over one of the two servers, never pays for the other's import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._backends.memory import MemoryLocker, MemoryStore
from ._errors import BackendError, DistlockError, LockLostError, LockNotHeldError, NotObtainedError
from ._options import EtcdOptions, Options
from ._protocols import Election, KeyState, Leader, Lock, Locker, Observation, Refresher, SemaphoreState, Term
from ._url import from_url

if TYPE_CHECKING:
    from ._backends.etcd import EtcdLocker
    from ._backends.redis import RedisLocker

    __version__: str

__all__ = [
    "BackendError",
    "DistlockError",
    "Election",
    "EtcdLocker",
    "EtcdOptions",
    "KeyState",
    "Leader",
    "Lock",
    "LockLostError",
    "LockNotHeldError",
    "Locker",
    "MemoryLocker",
    "MemoryStore",
    "NotObtainedError",
    "Observation",
    "Options",
    "RedisLocker",
    "Refresher",
    "SemaphoreState",
    "Term",
    "from_url",
]

from_url.__module__ = "distlock_async"

#: Public names whose module imports a client library, by the module that defines them.
_LAZY = {
    "EtcdLocker": "._backends.etcd",
    "RedisLocker": "._backends.redis",
}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all that would hide a typo

    def __getattr__(name: str) -> Any:
        if name == "__version__":  # importlib.metadata costs more than the rest of the package
            globals()[name] = value = _version()
            return value
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'distlock_async' has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY, "__version__"})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distlock-async")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
        return "0+unknown"
