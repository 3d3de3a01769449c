"""The retry budget of the shared core, driven by a scripted contender.

Backends are tested for real in test_contract.py; here the subject is the core's own accounting,
which no real backend can make deterministic: how many attempts a budget buys when wake-ups arrive.
"""

from __future__ import annotations

import asyncio

import pytest

from distlock_async import NotObtainedError, Options
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
