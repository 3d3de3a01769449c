"""Never run: mypy checks that the public API reads well as users write it (see noxfile ``typecheck``)."""

from __future__ import annotations

import math

import distlock_async
from distlock_async import (
    DistlockError,
    EtcdLocker,
    EtcdOptions,
    KeyState,
    Lock,
    Locker,
    LockLostError,
    MemoryLocker,
    MemoryStore,
    NotObtainedError,
    Options,
    Refresher,
    SemaphoreState,
    from_url,
)


async def with_lock(locker: Locker) -> int:
    async with locker.lock("invoice:42", ttl=10) as lock:
        token: int = lock.fencing_token
        remaining: float = await lock.ttl()
        assert remaining >= 0
        return token


async def by_hand(locker: Locker) -> None:
    lock: Lock = await locker.obtain("job", max_retries=0, retry_delay=0.5)
    refresher: Refresher = lock.start_refresh(on_error=lambda exc: print(exc))
    running: bool = refresher.running
    assert running
    await refresher.stop()
    await lock.refresh()
    await lock.release()
    async with await locker.obtain("job") as held:
        key: str = held.key
        print(key, held.token)


async def waiting_in_seconds(locker: Locker) -> None:
    lock: Lock = await locker.obtain("job", timeout=2.5, retry_delay=0.2)
    await lock.release()
    async with locker.lock("job", timeout=math.inf) as held:
        print(held.fencing_token)
    async with locker.lock("job", ttl=10, timeout=0):
        pass


async def errors(locker: Locker) -> None:
    try:
        await locker.obtain("k")
    except NotObtainedError as exc:
        key: str = exc.key
        print(key)
    except DistlockError:
        raise
    try:
        async with locker.lock("k"):
            pass
    except LockLostError as exc:
        print(exc.__cause__)


async def async_on_error(lock: Lock) -> None:
    async def report(exc: BaseException) -> None:
        print(exc)

    lock.start_refresh(report)


async def construction() -> None:
    store = MemoryStore()
    async with MemoryLocker(Options(ttl=5), store=store) as a, MemoryLocker(store=store) as b:
        mine: Locker = a
        print(mine, b.options.ttl)
    url_locker: Locker = from_url("memory://", Options(max_retries=3))
    await url_locker.aclose()
    print(distlock_async.__version__, distlock_async.EtcdOptions(session_ttl=5))
    etcd: Locker = await EtcdLocker.connect(
        ["10.0.0.1:2379", "10.0.0.2:2379"], Options(ttl=5), EtcdOptions(session_timeout=2), namespace="jobs/"
    )
    await etcd.aclose()
    lazy = EtcdLocker.from_url("etcd://127.0.0.1:2379", etcd_options=EtcdOptions(dial_timeout=1))
    print(lazy.namespace, lazy.client)
    await lazy.aclose()
    secure = EtcdOptions(
        tls=True, ca_file="ca.pem", cert_file="c.pem", key_file="k.pem", server_name="etcd", username="u", password="p"
    )
    tls_locker: Locker = from_url("etcds://u:p@10.0.0.1:2379?ca_file=ca.pem", etcd_options=secure)
    await tls_locker.aclose()


async def status(locker: Locker) -> str:
    state: KeyState = await locker.inspect("job")
    left: float | None = state.ttl
    counter: int | None = state.fencing_counter
    holder: str | None = state.holder
    return f"{state.held} {left} {counter} {holder}"


async def semaphore_status(locker: Locker) -> str:
    state: SemaphoreState = await locker.inspect_semaphore("pool")
    held: int = state.held
    holders: tuple[str | None, ...] = state.holders
    waiting: int = state.waiting
    counter: int | None = state.fencing_counter
    return f"{held} {holders} {waiting} {counter}"


async def labelled(url: str) -> str:
    async with from_url(url, Options(holder="worker-1")) as locker, locker.lock("job") as lock:
        label: str = lock.holder
        return label
