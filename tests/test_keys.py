"""Property tests of lock keys on every backend: any valid key is its own lock, any invalid one is refused.

Keys are drawn to hit what breaks key schemes: the characters of Redis glob patterns and hash tags, etcd's
``/`` separators (``a`` vs ``a/x``), NUL, newlines, non-ASCII, and lengths around the 1024-byte limit.
Hypothesis runs in a worker thread; every backend call goes back to the test's event loop.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distlock_async import Locker, NotObtainedError

from .helpers import Backend

pytestmark = pytest.mark.anyio

TRICKY = "a/x{}*?[]^-\\:\0\n\r\t é🔒"
#: Keys built from the characters that key schemes get wrong, and the prefixes of one another.
keys = st.one_of(
    st.text(alphabet=TRICKY, min_size=1, max_size=12),
    st.text(min_size=1, max_size=40),
    st.integers(1010, 1022).map(lambda n: "k" * n),  # "/x" may be appended: still <= 1024 bytes
).filter(lambda k: not any(0xD800 <= ord(c) <= 0xDFFF for c in k))

CONFIG = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _call(fn: Any) -> Any:
    return anyio.from_thread.run(fn)


async def test_every_valid_key_is_a_lock_of_its_own(backend: Backend) -> None:
    """For any two keys: holding one blocks a second obtain of the same key and never a different one;
    ``lock.key`` is the key as given; release frees it."""
    first, second = backend.locker(), backend.locker()

    async def pair(a: str, b: str) -> None:
        held = await first.obtain(a)
        try:
            assert held.key == a
            if a == b:
                with pytest.raises(NotObtainedError):
                    await second.obtain(b, max_retries=0)
            else:
                other = await second.obtain(b, max_retries=0)
                assert other.key == b
                await other.release()
        finally:
            await held.release()
        await (await second.obtain(a, max_retries=0)).release()  # released: free for anyone

    @CONFIG
    @given(a=keys, b=keys | keys.map(lambda k: k + "/x") | st.just("a"))
    def check(a: str, b: str) -> None:
        _call(lambda: pair(a, b))
        _call(lambda: pair(a, a))

    await anyio.to_thread.run_sync(check)


def _invalid(key: str) -> bool:
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return True
    return not 1 <= size <= 1024


async def test_every_invalid_key_is_refused_naming_the_key(backend: Backend) -> None:
    """Empty, over 1024 UTF-8 bytes, or not encodable: ``ValueError`` naming ``key`` from both entry
    points, before anything reaches the server; non-strings: ``TypeError``."""
    locker: Locker = backend.locker()

    async def refused(key: Any, error: type[Exception]) -> None:
        with pytest.raises(error, match="key"):
            await locker.obtain(key)
        with pytest.raises(error, match="key"):
            locker.lock(key)

    too_long = st.integers(1025, 3000).flatmap(lambda n: st.sampled_from(["k" * n, "é" * (n // 2 + 1)]))
    surrogates = st.text(min_size=1, max_size=5).map(lambda k: k + "\udc80")

    @CONFIG
    @given(key=st.one_of(st.just(""), too_long, surrogates))
    def bad_strings(key: str) -> None:
        assert _invalid(key)
        _call(lambda: refused(key, ValueError))

    @CONFIG
    @given(key=st.one_of(st.none(), st.binary(), st.integers(), st.floats(), st.lists(st.text()), st.booleans()))
    def not_strings(key: object) -> None:
        _call(lambda: refused(key, TypeError))

    await anyio.to_thread.run_sync(bad_strings)
    await anyio.to_thread.run_sync(not_strings)
    await (await locker.obtain("still-usable", max_retries=0)).release()
