from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any
from urllib.parse import urlsplit

import anyio.lowlevel
import redis.asyncio
import redis.exceptions

from .._core._driver import Busy, Granted, KeyState
from .._core._locker import LockerBase
from .._core._signal import Signal
from .._errors import BackendError
from .._options import Options
from .._validate import check_seconds, redact_url
from ._compat_redis import initialization_due
from ._redis_io import CLIENT_ERRORS, Mux, NotSent, Subscriber

__all__ = ["RedisLocker"]

logger = logging.getLogger("distlock_async")

#: Deadline of one lock command when the client has no ``socket_timeout`` of its own.
DEFAULT_DEADLINE = 5.0


class _Script:
    __slots__ = ("body", "sha")

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()


#: How long a released lock stays reserved for a waiter that was woken by the release, in ms.
HANDOFF_MS = 50

# KEYS[1] lock, KEYS[2] fence counter; ARGV[1] token, ARGV[2] TTL in ms, ARGV[3] "1" if the caller has
# been waiting (so it may take a lock reserved for the waiters).
# Granted: {1, fencing token}. Busy: {0, the holder's remaining ms}.
# The fencing token is one more than the last one, and never below the server clock in microseconds, so
# it keeps increasing when Redis loses the counter (restart without persistence, failover to a replica
# that lagged). That also lets the counter expire: after a minute nothing below the clock is left to beat.
_OBTAIN = _Script("""
local held = redis.call('get', KEYS[1])
if not held or (held == 'handoff' and ARGV[3] == '1') then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  local now = redis.call('time')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local fence = tonumber(redis.call('get', KEYS[2]) or '0') + 1
  if fence < floor then fence = floor end
  redis.call('set', KEYS[2], string.format('%d', fence), 'PX', math.max(tonumber(ARGV[2]), 60000))
  return {1, fence}
end
return {0, redis.call('pttl', KEYS[1])}
""")

# KEYS[1] lock; ARGV[1] token, ARGV[2] hand-off reservation in ms. 1 if it was ours and is released now.
# While reserved, the key holds 'handoff' (tokens are hex, never that).
# Waiters hear of it on the lock's channel. If anyone listens, the lock stays reserved for them for a
# moment, so that the releasing client cannot take it straight back and starve them.
_RELEASE = _Script("""
if redis.call('get', KEYS[1]) == ARGV[1] then
  if redis.call('publish', KEYS[1], '') > 0 then
    redis.call('set', KEYS[1], 'handoff', 'PX', ARGV[2])
  else
    redis.call('del', KEYS[1])
  end
  return 1
end
return 0
""")

# KEYS[1] lock. The last waiter of a locker gave up: free a reservation it may have been woken for.
_UNRESERVE = _Script("""
if redis.call('get', KEYS[1]) == 'handoff' then
  redis.call('del', KEYS[1])
  redis.call('publish', KEYS[1], '')
end
return 0
""")

# KEYS[1] lock; ARGV[1] token, ARGV[2] TTL in ms. 1 if it was ours and has its full TTL again.
_EXTEND = _Script("""
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
""")

# KEYS[1] lock; ARGV[1] token. Remaining ms if it is ours, else -2.
_REMAINING = _Script("""
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pttl', KEYS[1])
end
return -2
""")

# KEYS[1] lock, KEYS[2] fence counter. {1 if held, the holder's remaining ms or -2, the counter or ''}.
# A hand-off reservation counts as free: it lasts HANDOFF_MS and goes to whoever was waiting.
_INSPECT = _Script("""
local held = redis.call('get', KEYS[1])
local fence = redis.call('get', KEYS[2]) or ''
if held and held ~= 'handoff' then
  return {1, redis.call('pttl', KEYS[1]), fence}
end
return {0, -2, fence}
""")


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _untimed(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The client's connection settings without ``socket_timeout``: the locker applies its own deadline.

    redis-py enforces ``socket_timeout`` on writes with ``asyncio.wait_for``, which on Python 3.10 and 3.11
    can swallow a cancellation that arrives as the write completes; a cancelled obtain would go on waiting.
    """
    return {**kwargs, "socket_timeout": None}


def _settings(source: Any) -> tuple[Any, dict[str, Any]]:
    """Connection class and settings of a connection pool or a Cluster node."""
    return source.connection_class, source.connection_kwargs


class _Keys:
    __slots__ = ("fence", "lock")

    def __init__(self, namespace: str, key: str) -> None:
        # The braces make a Cluster hash tag: both keys live in the slot of the user's key. A "}" in the
        # key would end the tag early (or leave it empty, so that each key hashed whole, into different
        # slots): it is written "%7D", and "%" as "%25" so that no two keys share a name.
        tag = key.replace("%", "%25").replace("}", "%7D")
        self.lock = f"{namespace}:{{{tag}}}"
        self.fence = self.lock + ":fence"


class _RedisContender:
    __slots__ = ("_driver", "_keys", "_signal", "_token", "_ttl_ms", "_uncertain")

    def __init__(self, driver: _RedisDriver, key: str, token: str, ttl: float) -> None:
        self._driver = driver
        self._keys = _Keys(driver.namespace, key)
        self._token = token
        self._ttl_ms = _ms(ttl)
        self._signal: Signal | None = None
        self._uncertain = False

    async def attempt(self) -> Granted | Busy:
        subscriber, channel, signal = self._driver.subscriber, self._keys.lock, self._signal
        if signal is not None:
            signal.clear()
            subscriber.tried(channel, signal)
        if subscriber.deferring(channel, signal):
            # This locker is handing the lock from a release to its longest waiter: queue behind it.
            await anyio.lowlevel.checkpoint()
            return Busy()
        keys = self._keys
        try:
            reply = await self._driver.run(
                _OBTAIN,
                keys.lock,
                (keys.lock, keys.fence),
                (self._token, self._ttl_ms, "0" if signal is None else "1"),
                undoable=True,
            )
        except NotSent:
            raise  # no connection: nothing was written, nothing to undo
        except BaseException:
            # The command may have been applied: close() deletes the lock if it turns out to be ours.
            self._uncertain = True
            raise
        if int(reply[0]) == 1:
            if self._driver.replicas:
                try:
                    await self._driver.replicated(keys.lock)
                except BaseException:
                    self._uncertain = True  # close() releases the lock we just took
                    raise
            return Granted(int(reply[1]))
        pttl = int(reply[1])
        return Busy(pttl / 1000 if pttl >= 0 else None)

    async def wait(self, timeout: float) -> bool:
        signal = self._signal
        if signal is None:
            signal = self._signal = Signal()
            loop = asyncio.get_running_loop()
            start = loop.time()
            if await self._driver.subscriber.join(self._keys.lock, signal, timeout):
                return True  # subscribed just now: check again, a release may have come before
            timeout -= loop.time() - start
            if timeout <= 0:
                return signal.is_set()
        return await signal.wait(timeout)

    async def close(self, granted: Granted | None) -> None:
        signal, self._signal = self._signal, None
        if signal is not None:
            others_wait = await self._driver.subscriber.leave(self._keys.lock, signal, confirm=granted is None)
            if granted is None and not others_wait:
                # A release may have reserved the lock for waiters such as this one, which leaves without
                # it (cancelled, or out of retries): nobody of this locker will take the reservation.
                try:
                    await self._driver.run(_UNRESERVE, self._keys.lock, (self._keys.lock,), ())
                except BackendError as exc:
                    logger.debug("could not free the hand-off reservation of %r: %s", self._keys.lock, exc)
        if granted is None and self._uncertain:
            self._uncertain = False
            try:
                await self._driver.release_key(self._keys.lock, self._token)
            except BackendError as exc:
                logger.warning(
                    "could not undo an interrupted obtain of %r (%s); if it was applied, it expires with its TTL",
                    self._keys.lock,
                    exc,
                )


class _RedisDriver:
    def __init__(
        self, client: Any, namespace: str, *, owned: bool, replicas: int = 0, replica_timeout: float = 0.5
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.owned = owned
        self.replicas = replicas
        self.replica_timeout = replica_timeout
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
        try:
            acks = int(await mux.call("WAIT", self.replicas, _ms(self.replica_timeout)))
        except redis.exceptions.ResponseError as exc:
            raise BackendError(f"redis answered an error to WAIT: {exc}") from exc
        if acks < self.replicas:
            raise BackendError(
                f"{lock_key!r} reached {acks} of {self.replicas} replicas within {self.replica_timeout:g} s; "
                "the lock was released, since a failover could lose it"
            )

    def lifetime(self, ttl: float) -> float:
        return ttl

    def contender(self, key: str, token: str, ttl: float) -> _RedisContender:
        return _RedisContender(self, key, token, ttl)

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
        self, script: _Script, lock_key: str, keys: tuple[str, ...], args: tuple[object, ...], *, undoable: bool = False
    ) -> Any:
        """Run ``script`` with one client command (two the first time a server sees it).

        ``undoable``: ``args[0]`` is a token that the script may have made the owner of ``lock_key``; if the
        deadline passes, a release with that token is queued behind the call (see ``Mux.call``).
        """
        if self.closed:
            raise RuntimeError("the RedisLocker is closed; the locks it held expire with their TTL")
        if self.cluster and initialization_due(self.client):
            try:
                await self.client.initialize()
            except CLIENT_ERRORS as exc:
                raise BackendError(f"redis cluster: {exc}") from exc
        undo = ("EVAL", _RELEASE.body, 1, lock_key, args[0], HANDOFF_MS) if undoable else None
        asked: tuple[str, int] | None = None
        for _ in range(3):
            try:
                mux = self._mux(lock_key, asked)
            except CLIENT_ERRORS as exc:  # no node serves the slot (a Cluster without quorum, say)
                raise BackendError(f"redis cluster: {exc}") from exc
            asking, asked = asked is not None, None
            try:
                try:
                    return await mux.call("EVALSHA", script.sha, len(keys), *keys, *args, undo=undo, asking=asking)
                except redis.exceptions.NoScriptError:
                    # Not applied; EVAL runs the script and caches it for the next EVALSHA.
                    return await mux.call("EVAL", script.body, len(keys), *keys, *args, undo=undo, asking=asking)
            except redis.exceptions.MovedError as exc:
                # Not applied either: the slot lives elsewhere now (Cluster resharding or failover).
                logger.debug("%s moved (%s); reloading the cluster's slots", lock_key, exc)
                try:
                    await self.client.nodes_manager.initialize()
                except CLIENT_ERRORS as init_exc:
                    raise BackendError(f"redis cluster: {init_exc}") from init_exc
            except redis.exceptions.AskError as exc:
                # Not applied: the slot is being migrated and its keys are on the importing node already;
                # that node runs the call once, right after ASKING.
                logger.debug("%s asked to %s:%s (slot being migrated)", lock_key, *exc.node_addr)
                asked = exc.node_addr
            except redis.exceptions.ResponseError as exc:
                raise BackendError(f"redis answered an error: {exc}") from exc
        raise BackendError(f"redis cluster kept redirecting {lock_key!r}")

    async def release(self, key: str, token: str, handle: object) -> bool:
        return await self.release_key(_Keys(self.namespace, key).lock, token)

    async def release_key(self, lock_key: str, token: str) -> bool:
        released = int(await self.run(_RELEASE, lock_key, (lock_key,), (token, HANDOFF_MS))) == 1
        if released:
            self.subscriber.released(lock_key)
        return released

    async def extend(self, key: str, token: str, handle: object, ttl: float) -> bool:
        lock_key = _Keys(self.namespace, key).lock
        return int(await self.run(_EXTEND, lock_key, (lock_key,), (token, _ms(ttl)))) == 1

    async def remaining(self, key: str, token: str, handle: object) -> float:
        lock_key = _Keys(self.namespace, key).lock
        pttl = int(await self.run(_REMAINING, lock_key, (lock_key,), (token,)))
        return max(pttl, 0) / 1000

    async def inspect(self, key: str) -> KeyState:
        keys = _Keys(self.namespace, key)
        held, pttl, fence = await self.run(_INSPECT, keys.lock, (keys.lock, keys.fence), ())
        counter = int(fence) if fence else None
        if int(held) != 1:
            return KeyState(held=False, ttl=None, fencing_counter=counter)
        # A key without expiry (-1) is not one of ours; report it as held with no known end.
        return KeyState(held=True, ttl=int(pttl) / 1000 if int(pttl) >= 0 else None, fencing_counter=counter)

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


#: Query options of a Redis URL that are durations: redis-py takes any float, we take what makes sense.
_URL_SECONDS = ("socket_timeout", "socket_connect_timeout")
#: Query options of a Redis URL that name files, which must exist.
_URL_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _client_from_url(url: str) -> Any:
    """A redis-py client for ``url``, or ``ValueError`` if the URL could not work (checked before any
    connection: host or socket path present, port and database in range, options redis-py knows)."""
    shown = redact_url(url)

    def bad(why: str) -> ValueError:
        return ValueError(f"not a usable Redis URL: {shown!r} ({why})")

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(str(exc)) from None
    if parts.fragment:
        raise bad("a Redis URL has no #fragment")
    scheme = parts.scheme.lower()
    if scheme == "unix":
        if not parts.path:
            raise bad("unix:// needs the socket's path, as in unix:///run/redis.sock")
    else:
        if not parts.hostname:
            raise bad("no host; write redis://host[:port][/db]")
        if port == 0:
            raise bad("port 0 is not a port to connect to")
        if parts.path not in ("", "/") and not parts.path[1:].isdigit():
            raise bad(f"the database must be a number >= 0, got {parts.path[1:]!r}")
    try:
        client = redis.asyncio.from_url(url)
        pool = client.connection_pool
        # Building (not connecting) one connection makes redis-py check every option it was given:
        # an unknown one, or a bad TLS setting, would otherwise surface at the first lock call.
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError, redis.exceptions.RedisError) as exc:
        raise bad(str(exc)) from None
    for name in _URL_FILES:
        path = pool.connection_kwargs.get(name)
        if path is not None and not os.path.isfile(path):
            raise bad(f"{name}: no such file {path!r}")
    for name in _URL_SECONDS:
        value = pool.connection_kwargs.get(name)
        if value is not None:
            try:
                check_seconds(name, value)
            except (TypeError, ValueError) as exc:
                raise bad(str(exc)) from None
    return client


def _check_replicas(replicas: object, replica_timeout: object) -> float:
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise TypeError(f"replicas must be an int, not {type(replicas).__name__}")
    if replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {replicas}")
    return check_seconds("replica_timeout", replica_timeout)


class RedisLocker(LockerBase):
    """Locks in Redis: standalone, Sentinel-managed or Cluster.

    Each lock is one key, ``"{namespace}:{" + key + "}"`` (with ``%`` and ``}`` of the key written as
    ``%25`` and ``%7D``), holding the lock's random token with a TTL, and a fencing counter beside it in the
    same hash slot. Obtain, release, refresh and ``ttl()`` are one
    Lua script call each; waiters are woken over pub/sub when the holder releases, one at a time and in
    the order they started waiting within a locker.

    Lock commands go over a connection of the locker's own, made from the client's settings, never
    through redis-py's retrying ``execute_command``: a lock command is sent at most once, and one that
    gets no reply within the client's ``socket_timeout`` (5 s if it has none) fails with
    :class:`~distlock_async.BackendError`. Wake-ups use one pub/sub connection from the client's pool
    while any task is waiting.

    Args:
        client: a ``redis.asyncio.Redis`` (a Sentinel ``master_for`` client included) or
            ``redis.asyncio.RedisCluster``. The locker never closes it.
        options: defaults for every lock of this locker.
        namespace: prefix of every key the locker writes.
        replicas: after taking a lock, wait until this many replicas have it (Redis ``WAIT``), or release it
            and raise :class:`~distlock_async.BackendError`: a failover then cannot promote a replica
            that never saw the lock. ``0`` (the default) does not wait. Costs one more round trip per
            obtain.
        replica_timeout: seconds ``WAIT`` waits for the replicas, at most; it holds up the locker's
            other commands meanwhile, so keep it well below the TTLs you use.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``namespace`` is empty, ``replicas`` negative, ``replica_timeout`` not positive.
    """

    def __init__(
        self,
        client: Any,
        options: Options | None = None,
        *,
        namespace: str = "distlock",
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> None:
        self._init(client, options, namespace, replicas, replica_timeout, owned=False)

    def _init(
        self,
        client: Any,
        options: Options | None,
        namespace: str,
        replicas: int,
        replica_timeout: float,
        *,
        owned: bool,
    ) -> None:
        if not isinstance(client, (redis.asyncio.Redis, redis.asyncio.RedisCluster)):
            raise TypeError(
                f"client must be a redis.asyncio.Redis or redis.asyncio.RedisCluster, not {type(client).__name__}"
            )
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        if not namespace:
            raise ValueError("namespace must not be empty")
        if "{" in namespace or "}" in namespace:
            raise ValueError(f"namespace must not contain braces (they pick the Cluster hash slot), got {namespace!r}")
        replica_timeout = _check_replicas(replicas, replica_timeout)
        self._driver_ = _RedisDriver(client, namespace, owned=owned, replicas=replicas, replica_timeout=replica_timeout)
        super().__init__(self._driver_, options)

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
        _check_replicas(replicas, replica_timeout)  # before a client exists that would need closing
        client = _client_from_url(url)
        self = cls.__new__(cls)
        self._init(client, options, namespace, replicas, replica_timeout, owned=True)
        return self

    @property
    def client(self) -> Any:
        """The redis-py client this locker was given or made."""
        return self._driver_.client

    @property
    def namespace(self) -> str:
        """The prefix of every key this locker writes."""
        return self._driver_.namespace

    def __repr__(self) -> str:
        return f"<distlock_async.RedisLocker namespace={self.namespace!r} client={self.client!r}>"


RedisLocker.__module__ = "distlock_async"
