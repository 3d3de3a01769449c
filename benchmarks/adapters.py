"""Every lock the benchmark measures, behind one small interface.

An adapter takes a lock by name (waiting as long as it takes, the way its users wait) and releases it.
Each one is used the way its own documentation shows: defaults kept except the TTL, which is the same
10 s for all, and the retry budget, raised where the default would give up inside a scenario.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import redis
import redis.asyncio

from distlock_async import Options, from_url

TTL = 10.0


class Adapter:
    """A lock implementation as the scenarios see it."""

    #: Shown in tables; ``raw`` is the lower bound every ratio is taken against.
    name: ClassVar[str]
    #: Why it is not measured on this machine, if it is not.
    unavailable: str | None = None

    async def setup(self) -> None:
        """Connect; called once, outside any timing."""

    def new_lock(self, key: str) -> Any:
        """A lock object of the library for ``key``, for the default ``acquire``."""
        raise NotImplementedError

    async def acquire(self, key: str) -> Any:
        """Take ``key``'s lock, waiting until it is free; return what ``release`` needs: by default,
        ``new_lock(key)`` once its own ``acquire()`` has returned."""
        lock = self.new_lock(key)
        await lock.acquire()
        return lock

    async def release(self, handle: Any) -> None:
        """Give back what ``acquire`` returned: by default, with that lock's own ``release()``."""
        await handle.release()

    async def aclose(self) -> None:
        """Disconnect."""


class _ByUrl(Adapter):
    """An adapter of the server at ``url``, of the library ``library`` if it names one (imported as
    ``module`` here: the adapter is ``unavailable`` if that fails)."""

    library: ClassVar[str | None] = None

    def __init__(self, url: str) -> None:
        self.url = url
        if self.library is None:
            return
        try:
            self.module = importlib.import_module(self.library)
        except Exception as exc:  # pragma: no cover - depends on the bench environment (aioredis 1.x
            # breaks on some Pythons with more than an ImportError)
            self.unavailable = f"does not import: {exc!r}"


class _RedisClient(_ByUrl):
    """An adapter on one ``redis.asyncio`` client of ``url``."""

    async def setup(self) -> None:
        self.client = redis.asyncio.Redis.from_url(self.url)

    async def aclose(self) -> None:
        await self.client.aclose()


# --- Redis ------------------------------------------------------------------------------------------

_COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisRaw(_RedisClient):
    """The lower bound: ``SET k t NX PX`` and an ``EVALSHA`` compare-and-delete, on one client.

    It waits by polling every millisecond, which no library would ship (it costs a command per
    millisecond per waiter) but which no wake-up mechanism can beat by much.
    """

    name = "raw"

    async def setup(self) -> None:
        await super().setup()
        self.sha = await self.client.script_load(_COMPARE_AND_DELETE)

    async def acquire(self, key: str) -> Any:
        token = secrets.token_hex(16)
        while not await self.client.set(f"raw:{key}", token, nx=True, px=int(TTL * 1000)):  # noqa: ASYNC110
            await asyncio.sleep(0.001)  # polling is the point: the bound without any wake-up mechanism
        return key, token

    async def release(self, handle: Any) -> None:
        key, token = handle
        await self.client.evalsha(self.sha, 1, f"raw:{key}", token)


class Ours(_ByUrl):
    """``locker.obtain`` and ``Lock.release`` on whichever backend ``url`` names."""

    name = "distlock_async"

    async def setup(self) -> None:
        # A generous budget: scenario C's waiters must not give up; wake-ups do the waiting.
        self.locker = from_url(self.url, Options(ttl=TTL, max_retries=100_000))

    async def acquire(self, key: str) -> Any:
        return await self.locker.obtain(key)

    async def aclose(self) -> None:
        await self.locker.aclose()


class RedisPy(_RedisClient):
    """redis-py's ``redis.asyncio.lock.Lock``: ``SET NX PX``, polls every 0.1 s while waiting."""

    name = "redis-py Lock"

    def new_lock(self, key: str) -> Any:
        return self.client.lock(f"redis-py:{key}", timeout=TTL)


class PythonRedisLock(_ByUrl):
    """python-redis-lock: synchronous, so each call runs in a worker thread, as an asyncio user would."""

    name = "python-redis-lock"
    library = "redis_lock"

    async def setup(self) -> None:
        self.client = redis.Redis.from_url(self.url, max_connections=256)
        # A waiter blocks its thread in BLPOP: with the default executor's few threads (6 on 2 cores)
        # the holders could not run their release. A pool as large as the scenarios' task count.
        self.pool = ThreadPoolExecutor(max_workers=128, thread_name_prefix="python-redis-lock")

    async def _call(self, fn: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    async def acquire(self, key: str) -> Any:
        lock = self.module.Lock(self.client, key, expire=int(TTL))
        await self._call(lock.acquire)
        return lock

    async def release(self, handle: Any) -> None:
        await self._call(handle.release)

    async def aclose(self) -> None:
        self.pool.shutdown()
        self.client.close()


class Pottery(_RedisClient):
    """pottery's ``AIORedlock`` with one master; polls at random 0-0.2 s intervals while waiting."""

    name = "pottery AIORedlock"
    library = "pottery"

    def new_lock(self, key: str) -> Any:
        return self.module.AIORedlock(key=key, masters={self.client}, auto_release_time=TTL)


class Aioredlock(_ByUrl):
    """aioredlock (over aioredis 1.3): three tries 0.1-0.3 s apart, so waiting means trying again."""

    name = "aioredlock"
    library = "aioredlock"

    async def setup(self) -> None:
        kwargs = redis.asyncio.ConnectionPool.from_url(self.url).connection_kwargs
        self.manager = self.module.Aioredlock([{"host": kwargs["host"], "port": kwargs["port"]}])

    async def acquire(self, key: str) -> Any:
        while True:
            try:
                return await self.manager.lock(key, lock_timeout=TTL)
            except self.module.LockError:
                continue

    async def release(self, handle: Any) -> None:
        await self.manager.unlock(handle)

    async def aclose(self) -> None:
        await self.manager.destroy()


def redis_adapters(url: str) -> list[Adapter]:
    return [RedisRaw(url), Ours(url), RedisPy(url), PythonRedisLock(url), Pottery(url), Aioredlock(url)]


# --- etcd -------------------------------------------------------------------------------------------


def etcd_client(endpoint: str) -> Any:
    """An aetcd client of one member, with a deadline on every call."""
    import aetcd

    host, port = endpoint.rsplit(":", 1)
    return aetcd.Client(host=host, port=int(port), timeout=5)


class _EtcdClient(Adapter):
    """An adapter on one aetcd client of the member at ``endpoint`` (``host:port``)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    async def setup(self) -> None:
        self.client = etcd_client(self.endpoint)
        await self.client.connect()

    async def aclose(self) -> None:
        await self.client.close()


class EtcdRaw(_EtcdClient):
    """The lower bound: a create-if-absent txn under a lease granted once, and a compare-and-delete txn.

    It waits by polling every millisecond, like the Redis bound.
    """

    name = "raw"

    async def setup(self) -> None:
        await super().setup()
        self.lease = await self.client.lease(600)

    async def acquire(self, key: str) -> Any:
        tx, name, token = self.client.transactions, f"raw/{key}".encode(), secrets.token_bytes(16)
        while True:
            try:
                ok, _ = await self.client.transaction(
                    compare=[tx.create(name) == 0], success=[tx.put(name, token, lease=self.lease)], failure=[]
                )
            except Exception as exc:  # aetcd's ClientError: revoked between rounds, as an operator would
                if "lease not found" not in str(exc):
                    raise
                self.lease = await self.client.lease(600)
                continue
            if ok:
                return name, token
            await asyncio.sleep(0.001)

    async def release(self, handle: Any) -> None:
        tx, (name, token) = self.client.transactions, handle
        await self.client.transaction(compare=[tx.value(name) == token], success=[tx.delete(name)], failure=[])

    async def aclose(self) -> None:
        try:
            await self.lease.revoke()
        except Exception as exc:  # aetcd's ClientError: the between-round cleanup revoked it already
            if "lease not found" not in str(exc):
                raise
        await super().aclose()


class AetcdLock(_EtcdClient):
    """aetcd's ``Lock``: a new lease per attempt (never revoked), waits on a watch for the key's deletion."""

    name = "aetcd Lock"

    async def acquire(self, key: str) -> Any:
        lock = self.client.lock(f"aetcd/{key}".encode(), ttl=int(TTL))
        await lock.acquire(timeout=None)
        return lock


def etcd_adapters(endpoint: str) -> list[Adapter]:
    return [EtcdRaw(endpoint), Ours(f"etcd://{endpoint}"), AetcdLock(endpoint)]


__all__ = ["TTL", "Adapter", "etcd_adapters", "etcd_client", "redis_adapters"]
