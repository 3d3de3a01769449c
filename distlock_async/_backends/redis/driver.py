"""The Redis backend's side of the driver contract: which server runs a call (Cluster redirects
included), and release, refresh, ``ttl()`` and inspection of a lock; its views for the permits of a
semaphore and the candidates of an election (``SpaceDriver``), and the followers of an election."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import anyio.lowlevel
import redis.asyncio
import redis.exceptions

from ..._core._aio import Signal
from ..._core._driver import DriverView
from ..._errors import BackendError
from ..._protocols import KeyState, Leader, SemaphoreState
from .._compat_redis import initialization_due
from .config import RedisConfig
from .contender import RedisContender
from .errors import CLIENT_ERRORS, REPLY_ERRORS, map_errors
from .scripts import (
    COORD_EXTEND,
    COORD_RELEASE,
    COORD_REMAINING,
    EXTEND,
    INSPECT,
    LEADER,
    LEADER_SPACE,
    LOCKS,
    PERMIT_SPACE,
    PERMITS,
    PROCLAIM,
    RELEASE,
    REMAINING,
    TOUCH,
    Keys,
    Script,
    Space,
    holder_of,
    ms,
)
from .subscriber import Subscriber
from .wire import Mux

__all__ = ["RedisDriver", "RedisFollower", "SpaceDriver"]

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

    def permits(self, limit: int) -> SpaceDriver:
        return SpaceDriver(self, Space(PERMIT_SPACE, limit))

    async def inspect_permits(self, name: str) -> SemaphoreState:
        keys = Keys(self.namespace, name, PERMIT_SPACE)
        entries, waiting, fence = await self.run(PERMITS, keys.lock, keys.all, ())
        holders: list[tuple[int, str | None]] = []
        for entry in entries:
            if entry is None:  # a holder with no tokens entry: not one of ours
                holders.append((0, None))
                continue
            text = entry.decode("utf-8", "replace") if isinstance(entry, bytes) else str(entry)
            token, _, label = text.partition(" ")
            # A permit of an earlier release has an empty label: none to show.
            holders.append((int(token) if token.isdigit() else 0, label or None))
        holders.sort(key=lambda holder: holder[0])  # by fencing token: the order they were granted
        return SemaphoreState(
            held=len(holders),
            holders=tuple(label for _, label in holders),
            waiting=int(waiting),
            fencing_counter=int(fence) if fence else None,
        )

    def candidates(self, value: str) -> SpaceDriver:
        return SpaceDriver(self, Space(LEADER_SPACE, 1, value))

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

    async def ready(self) -> None:
        """``RuntimeError`` once closed; on a Cluster, learn its nodes and slots first if not done yet."""
        if self.closed:
            raise RuntimeError("the RedisLocker is closed; the locks it held expire with their TTL")
        if self.cluster and initialization_due(self.client):
            with map_errors("redis cluster"):
                await self.client.initialize()

    async def run(
        self,
        script: Script,
        lock_key: str,
        keys: tuple[str, ...],
        args: tuple[object, ...],
        *,
        undo: Space | None = None,
    ) -> Any:
        """Run ``script`` with one client command (two the first time a server sees it).

        ``undo``: the call is an obtain of that space (``keys`` are its ``Keys.all``) whose ``args[0]`` is the
        contender's name on the server (a lock's owner string, a permit's or candidate's token) that it may
        have made a holder or queued; if the deadline passes, the space's leave script with
        that token is queued behind the call (see ``Mux.call``), which also passes on what it took.
        """
        await self.ready()
        undone = None
        if undo is not None:
            undone = ("EVAL", undo.leave.body, len(keys), *keys, *undo.base(str(args[0])))
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
                        return await mux.call(
                            "EVALSHA", script.sha, len(keys), *keys, *args, undo=undone, asking=asking
                        )
                    except redis.exceptions.NoScriptError:
                        # Not applied; EVAL runs the script and caches it for the next EVALSHA.
                        return await mux.call("EVAL", script.body, len(keys), *keys, *args, undo=undone, asking=asking)
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

    # A lock's handle is its owner string (``scripts.owner``): what the server stores and compares. A
    # permit's or a leadership's is its token.

    async def release(self, key: str, token: str, handle: str) -> bool:
        keys = Keys(self.namespace, key)
        reply = await self.run(RELEASE, keys.lock, keys.all, LOCKS.base(handle))
        if len(reply) > 1 and reply[1] is not None:
            # Handed to a waiter: if it is one of ours, wake it now rather than when the message comes.
            head = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            self.subscriber.wake(keys.lock, head)
        return int(reply[0]) == 1

    async def leave(self, keys: Keys, space: Space, token: str) -> bool:
        """Take ``token`` out of the space's queue, passing on what it held; ``True`` if it held something."""
        reply = await self.run(space.leave, keys.lock, keys.all, space.base(token))
        return int(reply) == 1

    async def touch(self, keys: Keys, space: Space, token: str) -> bool:
        """Keep ``token``'s place in the space's queue; ``False`` if it has none any more."""
        member = space.member(token)
        return int(await self.run(TOUCH, keys.lock, keys.all, (member, *space.base(token)[1:]))) == 1

    def wake(self, channel: str, tokens: Any) -> None:
        """Wake this locker's waiters among ``tokens`` (a script's reply) now, before the message comes."""
        for token in tokens or ():
            self.subscriber.wake(channel, token.decode() if isinstance(token, bytes) else str(token))

    # --- elections (the ``Elections`` part of the contract) ---

    async def proclaim(self, name: str, token: str, handle: str, value: str) -> bool:
        space = Space(LEADER_SPACE, 1, value)
        keys = space.keys(self.namespace, name)
        if int(await self.run(PROCLAIM, keys.lock, keys.all, (*space.base(token), 0, value))) != 1:
            return False
        self.subscriber.wake(keys.lock, "*")
        return True

    async def leader(self, name: str) -> Leader | None:
        return (await self.read_leader(Keys(self.namespace, name, LEADER_SPACE)))[0]

    async def read_leader(self, keys: Keys) -> tuple[Leader | None, float | None]:
        """The leader and its remaining seconds, or ``(None, None)``."""
        reply = await self.run(LEADER, keys.lock, keys.all, ())
        if not reply or reply[0] is None:
            return None, None
        entry = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        fence, _, value = entry.partition(" ")
        return Leader(value, int(fence)), int(reply[1]) / 1000

    def follow(self, name: str) -> RedisFollower:
        return RedisFollower(self, Keys(self.namespace, name, LEADER_SPACE))

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


class SpaceDriver(DriverView[RedisDriver, Space]):
    """The driver's view for the permits of one limit, or for the candidates of one value: the same
    contract, on the keys of that space (see ``scripts``). Making one does no I/O."""

    __slots__ = ()

    def contender(self, key: str, token: str, ttl: float, holder: str) -> RedisContender:
        return RedisContender(self.driver, key, token, ttl, holder, self.space)

    async def release(self, key: str, token: str, handle: str) -> bool:
        keys = self.space.keys(self.driver.namespace, key)
        reply = await self.driver.run(COORD_RELEASE, keys.lock, keys.all, self.space.base(token))
        if int(reply[0]) != 1:
            return False
        self.driver.wake(keys.lock, reply[1])
        if self.space.suffix == LEADER_SPACE:
            self.driver.subscriber.wake(keys.lock, "*")
        return True

    async def extend(self, key: str, token: str, handle: str, ttl: float) -> bool:
        keys = self.space.keys(self.driver.namespace, key)
        return int(await self.driver.run(COORD_EXTEND, keys.lock, keys.all, (*self.space.base(token), ms(ttl)))) == 1

    async def remaining(self, key: str, token: str, handle: str) -> float:
        holders = self.space.keys(self.driver.namespace, key).lock
        pttl = int(await self.driver.run(COORD_REMAINING, holders, (holders,), (token,)))
        return max(pttl, 0) / 1000


#: Seconds an observer goes at most without reading the leader again: the bound on how long a lost
#: notification (a message dropped on its way) can hide a change.
OBSERVE_REREAD = 5.0

_followers = itertools.count()


class RedisFollower:
    """One ``observe()`` of an election: a watcher on the election's channel, woken by every change (a
    new leader, a proclaimed value, a resignation; ``"*"`` on the channel) and, since an expiry announces
    nothing, at the leader's remaining TTL; at the latest every ``OBSERVE_REREAD`` seconds. After every
    wake-up it reads the leader from the server, so what it returns is never older than the store."""

    __slots__ = ("_closed", "_driver", "_keys", "_name", "_signal", "_ttl")

    def __init__(self, driver: RedisDriver, keys: Keys) -> None:
        self._driver = driver
        self._keys = keys
        #: Its name among the channel's waiters; "*" marks a watcher, woken by every "*" message.
        self._name = f"*{next(_followers)}"
        self._signal: Signal | None = None
        self._ttl: float | None = None
        self._closed = False

    async def next(self) -> Leader | None:
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return None
        signal = self._signal
        if signal is None:
            # Subscribed first, then read: a change after the read is announced to us.
            signal = self._signal = Signal()
            await self._driver.ready()  # a Cluster's nodes are known: the subscriber picks one
            await self._driver.subscriber.join(self._keys.lock, self._name, signal, OBSERVE_REREAD)
        else:
            timeout = OBSERVE_REREAD if self._ttl is None else min(self._ttl, OBSERVE_REREAD)
            await signal.wait(timeout)
            if self._signal is signal:
                # The wake-up connection may have failed (a server restart): subscribed again before the
                # read, as at first, so that a change after the read is announced to us.
                await self._driver.subscriber.rejoin(self._keys.lock, OBSERVE_REREAD)
        if self._signal is not signal:  # closed meanwhile
            return None
        signal.clear()
        leader, ttl = await self._driver.read_leader(self._keys)
        # A leader's expiry is a change nobody announces: wake up just after it.
        self._ttl = None if ttl is None else ttl + 0.001
        return leader

    async def aclose(self) -> None:
        self._closed = True
        signal, self._signal = self._signal, None
        if signal is None:
            await anyio.lowlevel.checkpoint()
            return
        signal.set()  # a next() under way returns
        await self._driver.subscriber.leave(self._keys.lock, self._name)
