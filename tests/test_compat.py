"""The checks that the installed redis-py and aetcd still have the private names the backends use."""

from __future__ import annotations

import pytest

from distlock_async._backends import _compat_aetcd, _compat_redis
from distlock_async._backends._compat import require_names, supported


class Slotted:
    __slots__ = ("_reader",)


class Connection(Slotted):
    def __init__(self) -> None:
        self._helper()

    def _helper(self) -> None:
        self._writer = None  # set by a method other than __init__: still found

    def _close(self) -> None: ...


def test_the_installed_libraries_pass_their_check() -> None:
    # Imported above: the checks at import time passed.
    assert callable(_compat_redis.write_now)
    assert issubclass(_compat_aetcd.Client, object)


def test_names_set_by_methods_slots_and_methods_count() -> None:
    require_names("redis", [(Connection, ("_reader", "_writer", "_close"))])


def test_a_missing_name_fails_the_import_naming_the_versions() -> None:
    with pytest.raises(ImportError) as caught:
        require_names("redis", [(Connection, ("_reader", "_gone"))])
    message = str(caught.value)
    assert f"{Connection.__module__}.Connection._gone" in message
    assert "_reader" not in message
    assert "installed redis " in message
    assert supported("redis") in message


def test_the_supported_range_comes_from_the_package_metadata() -> None:
    assert supported("redis").startswith("redis>=")
    assert supported("aetcd").startswith("aetcd>=")
