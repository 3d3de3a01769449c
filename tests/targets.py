"""Where a worker process's locker lives: a URL, or a Redis topology that has no URL form.

``sentinel:HOST:PORT:MASTER`` is a Redis master found through a Sentinel, ``cluster:HOST:PORT`` a Redis
Cluster reached through one of its nodes; anything else goes to ``from_url``.
"""

from __future__ import annotations

from typing import Any

from distlock_async import EtcdOptions, Locker, Options, RedisLocker, from_url


def make_locker(target: str, options: Options, etcd_options: EtcdOptions | None = None) -> tuple[Locker, list[Any]]:
    """The locker, and the clients to close after it."""
    kind, _, rest = target.partition(":")
    if kind == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        host, port, master = rest.split(":")
        sentinel = Sentinel([(host, int(port))], socket_timeout=5)  # type: ignore[no-untyped-call,unused-ignore]
        client = sentinel.master_for(master, socket_timeout=5)
        return RedisLocker(client, options), [client, *sentinel.sentinels]
    if kind == "cluster":
        from redis.asyncio.cluster import RedisCluster

        host, port = rest.split(":")
        cluster = RedisCluster(host=host, port=int(port), socket_timeout=5)
        return RedisLocker(cluster, options), [cluster]
    return from_url(target, options, etcd_options=etcd_options), []
