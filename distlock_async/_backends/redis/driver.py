"""The Redis backend's side of the driver contract: which server runs a call (Cluster redirects
included), and release, refresh, ``ttl()`` and inspection of a lock."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio
import redis.exceptions

from ..._errors import BackendError
from ..._protocols import KeyState
from .._compat_redis import initialization_due
from .config import RedisConfig
from .contender import RedisContender
from .errors import CLIENT_ERRORS, REPLY_ERRORS, map_errors
from .scripts import EXTEND, INSPECT, LEAVE, RELEASE, REMAINING, TOUCH, WAITER_TTL_MS, Keys, Script, holder_of, ms
from .subscriber import Subscriber
from .wire import Mux

__all__ = ["RedisDriver"]

logger = logging.getLogger("distlock_async")


#: Deadline of one lock command when the client has no ``socket_timeout`` of its own.
DEFAULT_DEADLINE = 5.0


#: Pauses between tries of a call that a Cluster node refused while its slot migrates (TRYAGAIN), in seconds.
_FIRST_PAUSE = 0.02
_MAX_PAUSE = 0.25


def _untimed(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The client's connection settings without ``socket_timeout``: the locker applies its own deadline.

    redis-py enforces ``socket_timeout`` on writes with ``asyncio.wait_for``, which on Python 3.10 and 3.11
    can swallow a cancellation that arrives as the write completes; a cancelled obtain would go on waiting.
    """
    return {**kwargs, "socket_timeout": None}


def _settings(source: Any) -> tuple[Any, dict[str, Any]]:
    """Connection class and settings of a connection pool or a Cluster node."""
    return source.connection_class, source.connection_kwargs


class RedisDriver:
    def __init__(self, client: Any, config: RedisConfig, *, owned: bool) -> None:
        self.client = client
        self.namespace = config.namespace
        self.owned = owned
        self.replicas = config.replicas
        self.replica_timeout = config.replica_timeout
        self.cluster = isinstance(client, redis.asyncio.RedisCluster)
        kwargs = client.nodes_manager.connection_kwargs if self.cluster else client.connection_pool.connection_kwargs
        self.deadline = float(kwargs.get("socket_timeout") or DEFAULT_DEADLINE)
        self.cleanup_timeout = self.deadline
        self.subscriber = Subscriber(self._pubsub_client)
        self._muxes: dict[str, Mux] = {}
        self.closed = False

    def _pubsub_client(self) -> Any:
        """A client of one connection for wake-ups, with the locker's settings (see ``_untimed``).

        On a Cluster any node will do: PUBLISH reaches every node's subscribers.
        """
        cls, kwargs = _settings(self.client.get_default_node() if self.cluster else self.client.connection_pool)
        pool = redis.asyncio.ConnectionPool(connection_class=cls, max_connections=1, **_untimed(kwargs))
        return redis.asyncio.Redis(connection_pool=pool)

    async def replicated(self, lock_key: str) -> None:
        """Wait until ``replicas`` replicas have what this connection wrote; ``BackendError`` if they don't."""
        mux = self._mux(lock_key)
        with map_errors("redis answered an error to WAIT", REPLY_ERRORS):
            acks = int(await mux.call("WAIT", self.replicas, ms(self.replica_timeout)))
        if acks < self.replicas:
            raise BackendError(
                f"{lock_key!r} reached {acks} of {self.replicas} replicas within {self.replica_timeout:g} s; "
                "the lock was released, since a failover could lose it"
            )

    def lifetime(self, ttl: float) -> float:
        return ttl

    def contender(self, key: str, token: str, ttl: float, holder: str) -> RedisContender:
        return RedisContender(self, key, token, ttl, holder)

    def _mux(self, lock_key: str, node_addr: tuple[str, int] | None = None) -> Mux:
        """The connection to the server of ``lock_key``, or to the Cluster node at ``node_addr``."""
        if self.cluster:
            node = self.client.get_node_from_key(lock_key) if node_addr is None else self.client.get_node(*node_addr)
            if node is None:
                raise redis.exceptions.ConnectionError(f"no known cluster node at {node_addr}")
            cls, kwargs = _settings(node)
            name = node.name
        else:
            cls, kwargs = _settings(self.client.connection_pool)
            name = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        mux = self._muxes.get(name)
        if mux is None:
            mux = self._muxes[name] = Mux(lambda: cls(**_untimed(kwargs)), self.deadline, name)
        return mux

    async def run(
        self, script: Script, lock_key: str, keys: tuple[str, ...], args: tuple[object, ...], *, undoable: bool = False
    ) -> Any:
        """Run ``script`` with one client command (two the first time a server sees it).

        ``undoable``: a queue script (``keys`` are a lock's ``Keys.all``) whose ``args[0]`` is an owner that it
        may have made the owner of ``lock_key`` or queued; if the deadline passes, a ``LEAVE`` with that
        owner is queued behind the call (see ``Mux.call``), which also passes on a lock it took.
        """
        if self.closed:
            raise RuntimeError("the RedisLocker is closed; the locks it held expire with their TTL")
        if self.cluster and initialization_due(self.client):
            with map_errors("redis cluster"):
                await self.client.initialize()
        undo = ("EVAL", LEAVE.body, len(keys), *keys, args[0], WAITER_TTL_MS) if undoable else None
        asked: tuple[str, int] | None = None
        redirects = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        pause = _FIRST_PAUSE
        while redirects < 3:
            with map_errors("redis cluster"):  # no node serves the slot (a Cluster without quorum, say)
                mux = self._mux(lock_key, asked)
            asking, asked = asked is not None, None
            # The error replies that say "not applied, send it again" (NOSCRIPT, TRYAGAIN, MOVED, ASK) are
            # decisions of this loop, taken before the boundary reports any other error reply.
            with map_errors("redis answered an error", REPLY_ERRORS):
                try:
                    try:
                        return await mux.call("EVALSHA", script.sha, len(keys), *keys, *args, undo=undo, asking=asking)
                    except redis.exceptions.NoScriptError:
                        # Not applied; EVAL runs the script and caches it for the next EVALSHA.
                        return await mux.call("EVAL", script.body, len(keys), *keys, *args, undo=undo, asking=asking)
                except redis.exceptions.TryAgainError as exc:
                    # Not applied: the slot is being migrated and only some of the lock's keys have reached the
                    # importing node (the queue's keys exist only while someone waits). Migrating a slot takes
                    # moments; try again until the deadline, from the slot's owner. Reported only once the
                    # deadline is near, and as a migration, not as an error answer.
                    if loop.time() + pause >= deadline:
                        raise BackendError(f"redis cluster: {lock_key!r} is being migrated: {exc}") from exc
                    logger.debug("%s: %s; trying again in %.2f s", lock_key, exc, pause)
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, _MAX_PAUSE)
                    redirects = 0
                    continue
                except redis.exceptions.MovedError as exc:
                    # Not applied either: the slot lives elsewhere now (Cluster resharding or failover).
                    logger.debug("%s moved (%s); reloading the cluster's slots", lock_key, exc)
                    with map_errors("redis cluster"):
                        await self.client.nodes_manager.initialize()
                except redis.exceptions.AskError as exc:
                    # Not applied: the slot is being migrated and its keys are on the importing node already;
                    # that node runs the call once, right after ASKING.
                    logger.debug("%s asked to %s:%s (slot being migrated)", lock_key, *exc.node_addr)
                    asked = exc.node_addr
            redirects += 1
        raise BackendError(f"redis cluster kept redirecting {lock_key!r}")

    # A lock's handle is its owner string (``scripts.owner``): what the server stores and compares.

    async def release(self, key: str, token: str, handle: str) -> bool:
        keys = Keys(self.namespace, key)
        reply = await self.run(RELEASE, keys.lock, keys.all, (handle, WAITER_TTL_MS))
        if len(reply) > 1 and reply[1] is not None:
            # Handed to a waiter: if it is one of ours, wake it now rather than when the message comes.
            head = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            self.subscriber.wake(keys.lock, head)
        return int(reply[0]) == 1

    async def leave(self, keys: Keys, owner: str) -> bool:
        """Take ``owner`` out of the lock's queue, passing on the lock if it had it; ``True`` if it had."""
        return int(await self.run(LEAVE, keys.lock, keys.all, (owner, WAITER_TTL_MS))) == 1

    async def touch(self, keys: Keys, owner: str) -> bool:
        """Keep ``owner``'s place in the lock's queue; ``False`` if it has none any more."""
        return int(await self.run(TOUCH, keys.lock, keys.all, (owner, WAITER_TTL_MS))) == 1

    async def extend(self, key: str, token: str, handle: str, ttl: float) -> bool:
        lock_key = Keys(self.namespace, key).lock
        return int(await self.run(EXTEND, lock_key, (lock_key,), (handle, ms(ttl)))) == 1

    async def remaining(self, key: str, token: str, handle: str) -> float:
        lock_key = Keys(self.namespace, key).lock
        pttl = int(await self.run(REMAINING, lock_key, (lock_key,), (handle,)))
        return max(pttl, 0) / 1000

    async def inspect(self, key: str) -> KeyState:
        keys = Keys(self.namespace, key)
        held, pttl, fence, value = await self.run(INSPECT, keys.lock, (keys.lock, keys.fence), ())
        counter = int(fence) if fence else None
        if int(held) != 1:
            return KeyState(held=False, ttl=None, fencing_counter=counter)
        # A key without expiry (-1) is not one of ours; report it as held with no known end.
        ttl = int(pttl) / 1000 if int(pttl) >= 0 else None
        holder = holder_of(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
        return KeyState(held=True, ttl=ttl, fencing_counter=counter, holder=holder)

    async def aclose(self) -> None:
        self.closed = True
        await self.subscriber.aclose()
        muxes = list(self._muxes.values())
        self._muxes.clear()
        for mux in muxes:
            await mux.aclose()
        if self.owned:
            try:
                await self.client.aclose()
            except CLIENT_ERRORS as exc:
                logger.debug("closing the Redis client failed: %r", exc)
