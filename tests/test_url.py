"""SPEC ``from_url``: the schemes of the backends this version ships, a clear ValueError for everything else."""

from __future__ import annotations

from typing import Any

import pytest

from distlock_async import EtcdOptions, MemoryLocker, Options, from_url


def test_memory_url_gives_a_memory_locker_with_the_options() -> None:
    options = Options(ttl=5)
    locker = from_url("memory://", options)
    assert isinstance(locker, MemoryLocker)
    assert locker.options is options


def test_each_memory_locker_from_a_url_has_its_own_store() -> None:
    a, b = from_url("memory://"), from_url("MEMORY://")
    assert isinstance(a, MemoryLocker)
    assert isinstance(b, MemoryLocker)
    assert a.store is not b.store


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("etcd://127.0.0.1:2379", "etcd backend is not part of this version"),
        ("http://localhost", "scheme 'http' is not supported"),
        ("localhost:6379", "scheme://"),
        ("", "scheme://"),
        ("memory://somewhere", "takes nothing after the scheme"),
        ("memory://?db=1", "takes nothing after the scheme"),
    ],
)
def test_other_urls_raise_value_error(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        from_url(url)


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((None,), {}, "url"),
        ((b"memory://",), {}, "url"),
        (("memory://", {"ttl": 1}), {}, "options"),
        (("memory://",), {"etcd_options": {}}, "etcd_options"),
    ],
)
def test_wrong_types_raise_type_error(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(TypeError, match=name):
        from_url(*args, **kwargs)


def test_etcd_options_on_a_memory_url_are_refused() -> None:
    with pytest.raises(ValueError, match="etcd_options"):
        from_url("memory://", etcd_options=EtcdOptions())
