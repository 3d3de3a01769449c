"""``RedisLocker``: the public face of the Redis backend."""

from __future__ import annotations

from typing import Any

import redis.asyncio

from ..._core._locker import LockerBase
from ..._options import Options
from .config import RedisConfig, client_from_url
from .driver import RedisDriver

__all__ = ["RedisLocker"]


class RedisLocker(LockerBase[str, RedisDriver]):
    """Locks in Redis: standalone, Sentinel-managed or Cluster.

    Each lock is one key, ``"{namespace}:{" + key + "}"`` (with ``%`` and ``}`` of the key written as
    ``%25`` and ``%7D``), holding the lock's random token with a TTL, and a fencing counter beside it in the
    same hash slot. Obtain, release, refresh and ``ttl()`` are one
    Lua script call each; waiters are woken over pub/sub when the holder releases, one at a time and in
    the order they started waiting within a locker. Semaphores and elections keep their keys beside the
    name's lock keys (``...}:permits``, ``...}:leader`` and their queues), in the same hash slot, never
    meeting a lock of any name.

    Lock commands go over a connection of the locker's own, made from the client's settings, never
    through redis-py's retrying ``execute_command``: a lock command is sent at most once, and one that
    gets no reply within the client's ``socket_timeout`` (5 s if it has none) fails with
    [`BackendError`][distlock_async.BackendError]. Wake-ups use one pub/sub connection from the client's pool
    while any task is waiting.

    Args:
        client: a ``redis.asyncio.Redis`` (a Sentinel ``master_for`` client included) or
            ``redis.asyncio.RedisCluster``. The locker never closes it.
        options: defaults for every lock of this locker.
        namespace: prefix of every key the locker writes.
        replicas: after taking a lock, wait until this many replicas have it (Redis ``WAIT``), or release it
            and raise [`BackendError`][distlock_async.BackendError]: a failover then cannot promote a replica
            that never saw the lock. ``0`` (the default) does not wait. Costs one more round trip per
            obtain.
        replica_timeout: seconds ``WAIT`` waits for the replicas, at most; it holds up the locker's
            other commands meanwhile, so keep it well below the TTLs you use.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``namespace`` is empty, ``replicas`` negative, ``replica_timeout`` not positive.
    """

    _backend = "redis"

    def __init__(
        self,
        client: Any,
        options: Options | None = None,
        *,
        namespace: str = "distlock",
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> None:
        if not isinstance(client, (redis.asyncio.Redis, redis.asyncio.RedisCluster)):
            raise TypeError(
                f"client must be a redis.asyncio.Redis or redis.asyncio.RedisCluster, not {type(client).__name__}"
            )
        self._init(client, options, RedisConfig(namespace, replicas, replica_timeout), owned=False)

    def _init(self, client: Any, options: Options | None, config: RedisConfig, *, owned: bool) -> None:
        super().__init__(RedisDriver(client, config, owned=owned), options)

    @classmethod
    def from_url(
        cls,
        url: str,
        options: Options | None = None,
        *,
        namespace: str = "distlock",
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> RedisLocker:
        """A locker over a client made from ``url``, which the locker owns and closes.

        Takes what ``redis.asyncio.from_url`` takes: ``redis://``, ``rediss://`` (TLS), ``unix://``,
        with credentials, database and query options such as ``socket_timeout``.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: the URL is malformed.
        """
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        config = RedisConfig(namespace, replicas, replica_timeout)  # before a client exists that would need closing
        client = client_from_url(url)
        self = cls.__new__(cls)
        self._init(client, options, config, owned=True)
        return self

    @property
    def client(self) -> Any:
        """The redis-py client this locker was given or made."""
        return self._driver.client

    @property
    def namespace(self) -> str:
        """The prefix of every key this locker writes."""
        return self._driver.namespace

    def __repr__(self) -> str:
        return f"<distlock_async.RedisLocker namespace={self.namespace!r} client={self.client!r}>"


RedisLocker.__module__ = "distlock_async"
