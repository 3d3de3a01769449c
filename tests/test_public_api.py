"""The facade: every public name of SPEC, exported once, sorted, under the public module name."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from types import FunctionType

import pytest

import distlock_async

SPEC_NAMES = {
    "Locker",
    "Lock",
    "Refresher",
    "Options",
    "EtcdOptions",
    "EtcdLocker",
    "KeyState",  # what locker.inspect() returns (SPEC, "Knowing who holds what")
    "SemaphoreState",  # what locker.inspect_semaphore() returns (issue 15, item 3)
    # SPEC, "Coordination beyond the mutex"
    "Election",
    "Leader",
    "Observation",
    "Term",
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


def _public_methods(cls: type) -> dict[str, FunctionType]:
    """``{"Class.name": function}`` for the methods and properties a user of ``cls`` calls."""
    found: dict[str, FunctionType] = {}
    for klass in cls.__mro__:
        if klass is object or klass.__module__ == "typing":
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") and name not in ("__aenter__", "__aexit__"):
                continue
            function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
            if isinstance(function, FunctionType):
                found.setdefault(f"{cls.__name__}.{name}", function)
    return found


@pytest.mark.anyio
async def test_methods_users_call_are_named_after_public_classes() -> None:
    """Python names a method by its ``__qualname__`` in its own errors ("X.obtain() got an unexpected
    keyword argument ..."): X must be a class the user can look up, not a private base."""
    locker = distlock_async.MemoryLocker()
    lock = await locker.obtain("k")
    refresher = lock.start_refresh()
    await lock.release()
    classes = [distlock_async.RedisLocker, distlock_async.EtcdLocker, type(locker), type(lock), type(refresher)]
    methods = {where: function for cls in classes for where, function in _public_methods(cls).items()}
    assert {"MemoryLocker.obtain", "RedisLocker.lock", "EtcdLocker.options"} <= set(methods)
    private = {
        where: function.__qualname__
        for where, function in methods.items()
        if function.__qualname__.partition(".")[0] not in distlock_async.__all__
    }
    assert private == {}


@pytest.mark.anyio
async def test_a_wrong_keyword_names_the_public_method() -> None:
    locker = distlock_async.MemoryLocker()
    with pytest.raises(TypeError, match=r"^Locker\.obtain\(\) got an unexpected keyword argument 'wait'"):
        await locker.obtain("k", wait=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^Locker\.lock\(\) got an unexpected keyword argument 'wait'"):
        locker.lock("k", wait=3)  # type: ignore[call-arg]
    lock = await locker.obtain("k")
    with pytest.raises(TypeError, match=r"^Lock\.start_refresh\(\) takes"):
        lock.start_refresh(None, None)  # type: ignore[call-arg]
    await lock.release()


def test_etcd_locker_rejects_wrong_argument_types() -> None:
    with pytest.raises(TypeError, match="client"):
        distlock_async.EtcdLocker("127.0.0.1:2379")


def test_memory_locker_rejects_wrong_argument_types() -> None:
    with pytest.raises(TypeError, match="options"):
        distlock_async.MemoryLocker({"ttl": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store"):
        distlock_async.MemoryLocker(store={})  # type: ignore[arg-type]


#: What a backend's client library brings in; none of it belongs in ``import distlock_async``.
CLIENT_MODULES = ("redis", "hiredis", "grpc", "aetcd")


def _imported_by(code: str, modules: tuple[str, ...] = CLIENT_MODULES) -> list[str]:
    """Which of ``modules`` (top-level names) are imported after running ``code`` in a fresh interpreter."""
    source_root = str(Path(distlock_async.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source_root, os.environ.get("PYTHONPATH", "")])}
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.partition('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    return [name for name in modules if name in loaded]


def test_import_loads_no_client_library() -> None:
    assert _imported_by("import distlock_async, distlock_async.testing.pytest_plugin") == []


def test_memory_locker_loads_no_client_library() -> None:
    code = "import asyncio, distlock_async\nasyncio.run(distlock_async.from_url('memory://').aclose())"
    assert _imported_by(code) == []


def test_metrics_import_no_opentelemetry() -> None:
    """OpenTelemetry is optional, and may be installed without being used (a web framework depends on
    it, as here): the library never imports it, it only records once the application has."""
    assert importlib.util.find_spec("opentelemetry.metrics") is not None, "the test needs it installed"
    code = (
        "import asyncio, distlock_async\n"
        "async def main():\n"
        "    async with distlock_async.MemoryLocker() as locker:\n"
        "        await (await locker.obtain('k')).release()\n"
        "        async with locker.lock('k'):\n"
        "            pass\n"
        "asyncio.run(main())"
    )
    assert _imported_by(code, ("opentelemetry",)) == []


def test_a_backend_loads_its_own_client_library_only() -> None:
    redis_only = _imported_by("import distlock_async; distlock_async.RedisLocker")
    assert "redis" in redis_only
    assert not {"grpc", "aetcd"} & set(redis_only)
    etcd_only = _imported_by("from distlock_async import EtcdLocker")
    assert {"grpc", "aetcd"} <= set(etcd_only)
    assert "redis" not in etcd_only


def test_lazy_names_are_the_backends_classes() -> None:
    from distlock_async._backends.etcd import EtcdLocker
    from distlock_async._backends.redis import RedisLocker

    assert distlock_async.RedisLocker is RedisLocker
    assert distlock_async.EtcdLocker is EtcdLocker
    assert {"EtcdLocker", "RedisLocker", "__version__"} <= set(dir(distlock_async))
    assert isinstance(distlock_async.__version__, str)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        distlock_async.Nope  # type: ignore[attr-defined]
