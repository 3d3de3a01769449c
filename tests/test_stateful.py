"""A stateful property test on every backend: random obtain/release/refresh/expire/ttl sequences by two
lockers on a few keys, each result checked against a model of who holds what."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from distlock_async import Lock, Locker, LockNotHeldError, NotObtainedError

from .helpers import Backend

pytestmark = pytest.mark.anyio

T = TypeVar("T")
_runs = itertools.count()


def _machine(lockers: list[Locker], steal: Callable[[str], Awaitable[None]]) -> type[RuleBasedStateMachine]:
    """The machine runs in a worker thread; every backend call goes back to the test's event loop."""

    def call(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return anyio.from_thread.run(fn)

    class Locks(RuleBasedStateMachine):
        handles = Bundle("handles")

        def __init__(self) -> None:
            super().__init__()
            run = next(_runs)
            self.keys = [f"sm{run}-{n}" for n in range(3)]
            self.holder: dict[str, int | None] = dict.fromkeys(self.keys)
            self.last_token: dict[str, int] = dict.fromkeys(self.keys, 0)
            self.locks: dict[int, tuple[str, Lock]] = {}
            self.ids = itertools.count()

        @rule(target=handles, who=st.sampled_from([0, 1]), k=st.integers(0, 2))
        def obtain(self, who: int, k: int) -> Any:
            key = self.keys[k]
            try:
                lock = call(lambda: lockers[who].obtain(key, ttl=30, max_retries=0))
            except NotObtainedError:
                assert self.holder[key] is not None, f"{key} is free, yet obtain failed"
                return None
            assert self.holder[key] is None, f"{key} obtained twice"
            assert lock.fencing_token > self.last_token[key], "fencing token did not increase"
            self.last_token[key] = lock.fencing_token
            lock_id = next(self.ids)
            self.holder[key] = lock_id
            self.locks[lock_id] = (key, lock)
            return lock_id

        def _expect_held(self, lock_id: int | None, op: Callable[[Lock], Coroutine[Any, Any, Any]]) -> bool:
            if lock_id is None:
                return False
            key, lock = self.locks[lock_id]
            held = self.holder[key] == lock_id
            try:
                call(lambda: op(lock))
            except LockNotHeldError:
                assert not held, f"{key}: refused although held"
                return False
            assert held, f"{key}: accepted although not held"
            return True

        @rule(lock_id=handles)
        def release(self, lock_id: int | None) -> None:
            if self._expect_held(lock_id, lambda lock: lock.release()):
                assert lock_id is not None
                self.holder[self.locks[lock_id][0]] = None

        @rule(lock_id=handles)
        def refresh(self, lock_id: int | None) -> None:
            self._expect_held(lock_id, lambda lock: lock.refresh())

        @rule(lock_id=handles)
        def ttl(self, lock_id: int | None) -> None:
            if lock_id is None:
                return
            key, lock = self.locks[lock_id]
            remaining = call(lock.ttl)
            if self.holder[key] == lock_id:
                assert 0 < remaining <= 30
            else:
                assert remaining == 0

        @rule(k=st.integers(0, 2))
        def expire(self, k: int) -> None:
            """The held lock of ``key`` vanishes (it expired, or the server lost it)."""
            key = self.keys[k]
            if self.holder[key] is not None:

                async def vanish() -> None:
                    await steal(key)

                call(vanish)
                self.holder[key] = None

        @invariant()
        def one_holder_per_key(self) -> None:
            for key in self.keys:
                owner = self.holder[key]
                assert owner is None or self.locks[owner][0] == key

        def teardown(self) -> None:
            for key, lock_id in self.holder.items():
                if lock_id is not None:
                    call(self.locks[lock_id][1].release)
                    self.holder[key] = None

    return Locks


async def test_obtain_release_refresh_expire_follow_the_model(backend: Backend) -> None:
    machine = _machine([backend.locker(), backend.locker()], backend.steal)
    config = settings(
        max_examples=25,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    await anyio.to_thread.run_sync(lambda: run_state_machine_as_test(machine, settings=config))
