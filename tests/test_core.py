"""The retry budget of the shared core, driven by a scripted contender.

Backends are tested for real in test_contract.py; here the subject is the core's own accounting,
which no real backend can make deterministic: how many attempts a budget buys when wake-ups arrive.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from distlock_async import LockLostError, NotObtainedError, Options
from distlock_async._core._driver import Busy, Granted
from distlock_async._core._locker import LockerBase

pytestmark = pytest.mark.anyio


class ScriptedContender:
    """Busy until ``grant_on`` attempts were made; every wait reports a wake-up if ``woken``."""

    def __init__(self, grant_on: int, woken: bool) -> None:
        self.grant_on = grant_on
        self.woken = woken
        self.attempts = 0
        self.closed_with: list[Granted[None] | None] = []

    async def attempt(self) -> Granted[None] | Busy:
        await asyncio.sleep(0)
        self.attempts += 1
        return Granted(self.attempts, None) if self.attempts >= self.grant_on else Busy(None)

    async def wait(self, timeout: float) -> bool:
        if self.woken:
            await asyncio.sleep(0)
            return True
        await asyncio.sleep(timeout)
        return False

    async def close(self, granted: Granted[None] | None) -> None:
        await asyncio.sleep(0)
        self.closed_with.append(granted)


class ScriptedDriver:
    cleanup_timeout = 1.0

    def __init__(self, contender: ScriptedContender) -> None:
        self.c = contender

    def lifetime(self, ttl: float) -> float:
        return ttl

    def contender(self, key: str, token: str, ttl: float, holder: str) -> ScriptedContender:
        return self.c

    async def release(self, key: str, token: str, handle: None) -> bool:
        await asyncio.sleep(0)
        return True

    async def extend(self, key: str, token: str, handle: None, ttl: float) -> bool:
        await asyncio.sleep(0)
        return True

    async def remaining(self, key: str, token: str, handle: None) -> float:
        await asyncio.sleep(0)
        return 1.0

    async def aclose(self) -> None:
        await asyncio.sleep(0)


async def test_wake_ups_buy_extra_attempts_that_do_not_use_up_the_budget() -> None:
    contender = ScriptedContender(grant_on=50, woken=True)
    locker: LockerBase[None, ScriptedDriver] = LockerBase(
        ScriptedDriver(contender), Options(max_retries=1, retry_delay=60)
    )
    lock = await locker.obtain("k")
    assert contender.attempts == 50  # 49 failed attempts, all woken before the one budgeted retry
    assert contender.closed_with == [Granted(50, None)]
    await lock.release()


async def test_without_wake_ups_the_budget_is_one_try_plus_max_retries() -> None:
    contender = ScriptedContender(grant_on=10**6, woken=False)
    locker: LockerBase[None, ScriptedDriver] = LockerBase(
        ScriptedDriver(contender), Options(max_retries=3, retry_delay=0.001)
    )
    with pytest.raises(NotObtainedError):
        await locker.obtain("k")
    assert contender.attempts == 1 + 3
    assert contender.closed_with == [None]


async def test_retry_delay_0_retries_back_to_back_within_the_budget() -> None:
    contender = ScriptedContender(grant_on=10**6, woken=False)
    locker: LockerBase[None, ScriptedDriver] = LockerBase(
        ScriptedDriver(contender), Options(max_retries=5, retry_delay=0)
    )
    with pytest.raises(NotObtainedError):
        await locker.obtain("k")
    assert contender.attempts == 6


class _EarlyEndingGrant(ScriptedContender):
    """Grants at once, saying the lock ends ``ends_in`` seconds from now whatever its TTL (an etcd lease
    kept alive before the attempt and not renewed by it)."""

    def __init__(self, ends_in: float) -> None:
        super().__init__(grant_on=1, woken=False)
        self.ends_in = ends_in

    async def attempt(self) -> Granted[None] | Busy:
        await asyncio.sleep(0)
        self.attempts += 1
        return Granted(self.attempts, None, valid_until=asyncio.get_running_loop().time() + self.ends_in)


class _FrozenRefreshDriver(ScriptedDriver):
    """Its refreshes never get an answer (a frozen server)."""

    async def extend(self, key: str, token: str, handle: None, ttl: float) -> bool:
        await asyncio.Event().wait()
        return True


async def test_a_lock_is_lost_when_its_grant_says_it_ends_even_if_its_ttl_is_longer() -> None:
    """A grant that says the server lets the lock go in 0.2 s is refreshed before then, and a refresh that
    gets no answer by then ends the ``lock()`` body: not the TTL's 60 s (whose first refresh would come
    only after 20 s, and whose loss after 60 s)."""
    locker: LockerBase[None, ScriptedDriver] = LockerBase(_FrozenRefreshDriver(_EarlyEndingGrant(0.2)), None)
    body_cancelled = False
    with pytest.raises(LockLostError):
        with anyio.fail_after(10):
            async with locker.lock("k", ttl=60):
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    body_cancelled = True
                    raise
    assert body_cancelled
    await locker.aclose()
