"""The facade: every public name of SPEC, exported once, sorted, under the public module name."""

from __future__ import annotations

import inspect

import pytest

import distlock_async

SPEC_NAMES = {
    "Locker",
    "Lock",
    "Refresher",
    "Options",
    "EtcdOptions",
    "EtcdLocker",
    "MemoryLocker",
    "MemoryStore",
    "RedisLocker",
    "from_url",
    "DistlockError",
    "NotObtainedError",
    "LockNotHeldError",
    "LockLostError",
    "BackendError",
}


def test_all_is_sorted_and_complete() -> None:
    assert distlock_async.__all__ == sorted(distlock_async.__all__)
    assert set(distlock_async.__all__) == SPEC_NAMES


@pytest.mark.parametrize("name", sorted(SPEC_NAMES))
def test_public_names_show_the_public_module(name: str) -> None:
    assert getattr(distlock_async, name).__module__ == "distlock_async"


@pytest.mark.parametrize("name", sorted(SPEC_NAMES))
def test_public_names_are_documented(name: str) -> None:
    assert inspect.getdoc(getattr(distlock_async, name))


def test_error_tree() -> None:
    d = distlock_async
    assert issubclass(d.DistlockError, Exception)
    for error in (d.NotObtainedError, d.LockNotHeldError, d.BackendError):
        assert issubclass(error, d.DistlockError)
    assert issubclass(d.LockLostError, d.LockNotHeldError)


def test_protocols_are_runtime_checkable() -> None:
    locker = distlock_async.MemoryLocker()
    assert isinstance(locker, distlock_async.Locker)
    assert not isinstance(object(), distlock_async.Locker)
    assert not isinstance(object(), distlock_async.Lock)
    assert not isinstance(object(), distlock_async.Refresher)


def test_etcd_locker_rejects_wrong_argument_types() -> None:
    with pytest.raises(TypeError, match="client"):
        distlock_async.EtcdLocker("127.0.0.1:2379")


def test_memory_locker_rejects_wrong_argument_types() -> None:
    with pytest.raises(TypeError, match="options"):
        distlock_async.MemoryLocker({"ttl": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store"):
        distlock_async.MemoryLocker(store={})  # type: ignore[arg-type]
