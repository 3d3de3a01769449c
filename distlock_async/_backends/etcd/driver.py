"""The etcd backend's side of the driver contract: the connection, one RPC with its deadline and
retries, leases (granted, kept alive, kept for reuse, revoked), and release, refresh, ``ttl()`` and
inspection of a lock; the views and reads behind semaphores and elections (``coordination.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import aetcd
import grpc
from aetcd import rpc

from ..._errors import BackendError
from ..._options import EtcdOptions
from ..._protocols import KeyState, Leader, SemaphoreState
from .._compat_aetcd import Client, credentials_of
from .channel import HASLEADER, authenticate, channel_options, dial, load_credentials, resolve_target, unary
from .contender import EtcdContender, Held
from .coordination import ELECTION, SEMAPHORE, EtcdFollower, EtcdView, read_leader
from .errors import (
    CLIENT_ERRORS,
    StreamFailed,
    code,
    is_lease_not_found,
    is_token_rejected,
    is_transient,
    map_errors,
)
from .queue import (
    Rule,
    ahead,
    holder_of,
    is_member,
    leave_queue,
    permit_of,
    predecessor,
    proclaim,
    queue,
    sibling_namespace,
)
from .streams import KeepAlives, Watches

__all__ = ["EtcdDriver"]

logger = logging.getLogger("distlock_async")


#: Pauses between tries of an RPC that found its member unavailable or leaderless, in seconds.
_FIRST_PAUSE = 0.02


_MAX_PAUSE = 0.25


#: What ``ttl()`` shows for a lease that etcd reports alive with 0 whole seconds left.
_MIN_REMAINING = 0.001


#: The unary RPCs the locker sends, as methods of an ``aetcd.Client``'s stubs.
_TXN = attrgetter("kvstub.Txn")
_RANGE = attrgetter("kvstub.Range")
_LEASE_GRANT = attrgetter("leasestub.LeaseGrant")
_LEASE_REVOKE = attrgetter("leasestub.LeaseRevoke")
_LEASE_TIME_TO_LIVE = attrgetter("leasestub.LeaseTimeToLive")

#: Leases of released locks a locker keeps per TTL for reuse (each saves a raft write on obtain and one
#: on release).
_SPARES_PER_TTL = 64


class EtcdDriver:
    def __init__(
        self,
        client: aetcd.Client | None,
        endpoints: list[tuple[str, int]] | None,
        options: EtcdOptions,
        namespace: str,
    ) -> None:
        self.client = client
        self.endpoints = endpoints
        self.owned = client is None
        self.options = options
        self.namespace = namespace
        self.deadline = options.session_timeout
        self.cleanup_timeout = options.session_timeout
        self.closed = False
        self._connecting: asyncio.Lock | None = None
        self._authenticating: asyncio.Lock | None = None
        self._ready = False
        #: The shortest lease TTL the cluster grants as asked, learned from the first grant it raised.
        self.min_lease_ttl = 1
        #: Leases of released locks, by the TTL they were asked for, for the next obtains to reuse.
        self._spares: dict[int, list[tuple[int, float]]] = {}
        #: Kept leases no longer reused because one of their kind was gone (see ``distrust_spares``).
        self._doubtful: list[tuple[int, float]] = []
        self._keep_spares = True
        self.keep_alives = KeepAlives(lambda: self._client().leasestub.LeaseKeepAlive(metadata=self.metadata))
        self.watches = Watches(lambda: self._watchstub.Watch(metadata=self.metadata))
        self._watchstub: Any = None

    # --- connection -------------------------------------------------------------------------------

    def _client(self) -> Any:
        assert self.client is not None
        return self.client

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (*(self._client().metadata or ()), HASLEADER)

    async def ensure(self) -> None:
        if self.closed:
            raise RuntimeError("the EtcdLocker is closed; the locks it held expire with their TTL")
        if self._ready:
            return  # the RPC that follows is the checkpoint
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if not self._ready:
                await self._connect()

    async def _connect(self) -> None:
        options = self.options
        if self.client is None:
            assert self.endpoints is not None
            host, port = await resolve_target(self.endpoints)
            credentials = await load_credentials(options)
            self.client = Client(
                host,
                port,
                options=channel_options(options, self.endpoints),
                credentials=credentials,
                username=options.username,
                password=options.password,
            )
        if self.owned:
            try:
                await dial(self.client, options.dial_timeout, self.endpoints or ())
                if credentials_of(self.client) is not None:
                    await authenticate(self.client, self.deadline)
            except BaseException:
                client, self.client = self.client, None
                with contextlib.suppress(*CLIENT_ERRORS):
                    await client.close()
                raise
        else:
            with map_errors("etcd connect failed"):
                await self.client.connect()
        # aetcd's own watcher cannot send the ``hasleader`` metadata: the locker keeps a stub of its own.
        self._watchstub = rpc.WatchStub(self._client().channel)
        self._ready = True

    async def call(
        self,
        what: str,
        method: Callable[[Any], Any],
        request: Any,
        *,
        retried: list[bool] | None = None,
        repeatable: bool = True,
    ) -> Any:
        """One unary RPC within the deadline, sent again while the member is unavailable or leaderless;
        ``what`` heads the ``BackendError`` of a failure (``"etcd txn failed"``).

        Every request the locker sends is safe to repeat (the obtain txn compares before it writes, lease
        IDs are ours), and repeating it lets a locker with several endpoints fail over to another member,
        or ride out a leader election. ``retried`` gets ``True`` appended if the request was sent again.

        A ``repeatable`` request (one whose answer is the same if an earlier try was applied) also gets a
        deadline per try, a third of the whole but at least a second, and is sent again when a try runs
        out: a write that a follower forwarded to a leader that then died is lost without an answer, and
        would otherwise use up the whole deadline while the cluster elected a new leader in a second or two.
        """
        await self.ensure()
        client = self._client()
        function = method(client)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        per_try = max(self.deadline / 3, min(self.deadline, 1.0)) if repeatable else self.deadline
        pause = _FIRST_PAUSE
        renewed = False
        while True:
            token = client.metadata
            timeout = max(min(deadline - loop.time(), per_try), 0.001)
            # Whether an error is worth another try is decided here; the one that is not, the boundary reports.
            with map_errors(what, hint=self._hint):
                try:
                    return await unary(function(request, timeout=timeout, metadata=self.metadata))
                except CLIENT_ERRORS as exc:
                    if not renewed and is_token_rejected(exc) and credentials_of(client) is not None:
                        # Refused before it was applied: safe to send again, once, with a new token.
                        renewed = True
                        await self._renew_token(client, token, deadline)
                        continue
                    again = is_transient(exc) or (repeatable and code(exc) is grpc.StatusCode.DEADLINE_EXCEEDED)
                    if not again or loop.time() + pause >= deadline:
                        raise
                    logger.debug("%s (%s); trying again in %.2f s", what, exc, pause)
            await asyncio.sleep(pause)
            pause = min(2 * pause, _MAX_PAUSE)
            if retried is not None:
                retried.append(True)

    async def txn(self, request: rpc.TxnRequest, *, repeatable: bool = True) -> Any:
        """A transaction; not ``repeatable`` if a second try after an applied first one answers otherwise."""
        return await self.call("etcd txn failed", _TXN, request, repeatable=repeatable)

    async def range(self, request: rpc.RangeRequest) -> Any:
        return await self.call("etcd range failed", _RANGE, request)

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> Any:
        return await self.call(
            "etcd lease time-to-live failed", _LEASE_TIME_TO_LIVE, rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        )

    async def _renew_token(self, client: Any, token: Any, deadline: float) -> None:
        """Authenticate again, unless another call did since ``token`` was sent: one Authenticate at a time."""
        if self._authenticating is None:
            self._authenticating = asyncio.Lock()
        async with self._authenticating:
            if client.metadata != token:
                return
            logger.debug("etcd refused the auth token; authenticating again")
            await authenticate(client, max(deadline - asyncio.get_running_loop().time(), 0.001))

    def _hint(self, exc: BaseException) -> str | None:
        """What to do about an error that says the locker is set up wrong."""
        if code(exc) is grpc.StatusCode.PERMISSION_DENIED:
            credentials = credentials_of(self._client())
            who = f"user {credentials[0]!r}" if credentials else "the user"
            return f"{who} needs read and write permission on the keys under {self.namespace!r}"
        if is_token_rejected(exc) and credentials_of(self._client()) is None:
            return (
                "etcd has authentication enabled: give a user name and password, as in etcd://user:password@host:port"
            )
        return None

    # --- leases ------------------------------------------------------------------------------------

    def lease_ttl(self, ttl: float) -> int:
        """The lease TTL of a lock of ``ttl`` seconds; ``ValueError`` if the cluster would raise it."""
        lease_ttl = self.options.session_ttl or max(1, math.ceil(ttl))
        if lease_ttl < self.min_lease_ttl:
            raise ValueError(self._below_minimum(lease_ttl, self.min_lease_ttl))
        return lease_ttl

    def _below_minimum(self, lease_ttl: int, minimum: int) -> str:
        if self.options.session_ttl:
            asked, fix = f"EtcdOptions.session_ttl={lease_ttl}", f"a session_ttl of at least {minimum}"
        else:
            asked, fix = f"ttl: a lease of {lease_ttl} s (the lock's ttl rounded up)", f"a ttl of at least {minimum}"
        return (
            f"{asked} is below this etcd cluster's minimum lease TTL of {minimum} s (1.5 election timeouts), "
            f"which etcd would silently apply instead; use {fix}"
        )

    async def grant(self, lease_id: int, ttl: int) -> int:
        """Grant a lease with our ID; the TTL etcd gave it."""
        retried: list[bool] = []
        try:
            reply = await self.call(
                "etcd lease grant failed", _LEASE_GRANT, rpc.LeaseGrantRequest(TTL=ttl, ID=lease_id), retried=retried
            )
        except BackendError as exc:
            if retried and exc.__cause__ is not None and "lease already exists" in str(exc):
                return ttl  # our first try was applied after all
            raise
        if reply.error:  # an answer's field, not an exception of the client: reported here
            raise BackendError(f"etcd lease grant failed: {reply.error}") from RuntimeError(reply.error)
        if ttl < reply.TTL:
            # etcd raised the TTL to its minimum: refuse the lease rather than hold a lock longer than asked
            # (the obtain's close() revokes it), and refuse such TTLs from now on without asking etcd.
            self.min_lease_ttl = max(self.min_lease_ttl, int(reply.TTL))
            raise ValueError(self._below_minimum(ttl, int(reply.TTL)))
        return int(reply.TTL)

    async def revoke(self, lease_id: int) -> bool:
        """Revoke a lease, deleting its key; ``False`` if it was gone already."""
        retried: list[bool] = []
        try:
            await self.call(
                "etcd lease revoke failed", _LEASE_REVOKE, rpc.LeaseRevokeRequest(ID=lease_id), retried=retried
            )
        except BackendError as exc:
            if exc.__cause__ is not None and is_lease_not_found(exc.__cause__):
                return bool(retried)  # gone, unless by our own first try
            raise
        return True

    async def keep_alive(self, lease_id: int) -> int:
        """One keep-alive within the deadline; the lease's new TTL, ``<= 0`` if it is gone."""
        await self.ensure()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        pause = _FIRST_PAUSE
        while True:
            # A broken stream is sent again on a new one until the deadline; then the boundary reports it.
            with map_errors("etcd keep-alive failed", describe=str):
                try:
                    return await self.keep_alives.keep_alive(lease_id, max(deadline - loop.time(), 0.001))
                except StreamFailed as exc:
                    if self.closed or loop.time() + pause >= deadline:
                        raise
                    logger.debug("%s; trying again in %.2f s", exc, pause)
            await asyncio.sleep(pause)
            pause = min(2 * pause, _MAX_PAUSE)

    # --- the queue of a lock -----------------------------------------------------------------------

    async def members(
        self, prefix: bytes, *, limit_one: bool = False, limit: int | None = None, values: bool = False
    ) -> list[Any]:
        """The lock keys of a name in queue order, without the keys of names nested below it (the first
        ``limit`` of them, or the first with ``limit_one``); with their values if ``values``."""
        reply = await self.range(queue(prefix, keys_only=not values))
        members = [kv for kv in reply.kvs if is_member(prefix, kv.key)]
        if limit_one:
            limit = 1
        return members if limit is None else members[:limit]

    async def rank(self, prefix: bytes, revision: int) -> tuple[int, int]:
        """How many keys of the name were created before ``revision``, and the revision they were counted at."""
        reply = await self.range(ahead(prefix, revision))
        return sum(1 for kv in reply.kvs if is_member(prefix, kv.key)), int(reply.header.revision)

    async def first_member(self, prefix: bytes, request: rpc.RangeRequest) -> tuple[Any | None, int]:
        """The first key of the name that ``request`` (a range of ``limit=1`` under ``prefix``) finds, and the
        revision it was read at: one range, two if a nested name's key comes first."""
        reply = await self.range(request)
        kvs = list(reply.kvs)
        if kvs and not is_member(prefix, kvs[0].key):
            request.ClearField("limit")
            reply = await self.range(request)
            kvs = [kv for kv in reply.kvs if is_member(prefix, kv.key)]
        return (kvs[0] if kvs else None), int(reply.header.revision)

    async def predecessor(self, prefix: bytes, revision: int) -> tuple[bytes, int] | None:
        """The key queued just ahead of the one created at ``revision``, and the revision it was seen at."""
        kv, seen = await self.first_member(prefix, predecessor(prefix, revision))
        return None if kv is None else (kv.key, seen)

    async def inspect(self, key: str) -> KeyState:
        """What ``distlock status`` shows: held, the holder's remaining seconds, the fencing counter, the
        holder's label.

        The counter is the holder's fencing token while the key is held, else the cluster's revision,
        which the next obtain's token will exceed. The label is in the value of the first key in queue
        order (none in a Go ``Mutex``'s). Two round trips while held (the key, its lease).
        """
        prefix = f"{self.namespace}{key}/".encode()
        queue = await self.members(prefix, limit_one=True, values=True)
        if not queue:
            reply = await self.range(rpc.RangeRequest(key=prefix, count_only=True))
            return KeyState(False, None, int(reply.header.revision))
        first = queue[0]
        info = await self.lease_time_to_live(first.lease)
        # A key without a lease (written by hand) holds the lock until deleted.
        ttl = None if first.lease == 0 else max(float(info.TTL), 0.0)
        return KeyState(True, ttl, int(first.create_revision), holder_of(first.value))

    # --- Semaphores and Elections ----------------------------------------------------------------------

    def coordination_namespace(self, kind: str) -> str:
        """The prefix of this locker's semaphores or elections (see ``queue.sibling_namespace``)."""
        namespace = sibling_namespace(self.namespace, kind)
        if namespace is None:
            raise ValueError(
                f"an EtcdLocker with an empty namespace has no {kind}s: no prefix of theirs would be safe "
                "from lock keys; give the locker a namespace"
            )
        return namespace

    def permits(self, limit: int) -> EtcdView:
        return EtcdView(self, Rule(self.coordination_namespace(SEMAPHORE), limit, what="permit", records_limit=True))

    async def inspect_permits(self, name: str) -> SemaphoreState:
        """The semaphore's keys in queue order with their values, in one range.

        A key holds while fewer keys than the limit its value records were created before it (as its
        contender decides); so a waiter that a release has let in counts as holding before its next
        attempt. A key whose value records no limit (written by hand) counts as holding. The counter is the
        revision of the read, which the next permit's token (a create revision) will exceed.
        """
        prefix = f"{self.coordination_namespace(SEMAPHORE)}{name}/".encode()
        reply = await self.range(queue(prefix, keys_only=False))
        holders: list[str | None] = []
        waiting = 0
        rank = 0
        for kv in reply.kvs:
            if not is_member(prefix, kv.key):
                continue
            limit, holder = permit_of(kv.value)
            if limit is None or rank < limit:
                holders.append(holder)
            else:
                waiting += 1
            rank += 1
        return SemaphoreState(len(holders), tuple(holders), waiting, int(reply.header.revision))

    def candidates(self, value: str) -> EtcdView:
        return EtcdView(self, Rule(self.coordination_namespace(ELECTION), 1, value, what="candidate"))

    def election_prefix(self, name: str) -> bytes:
        return f"{self.coordination_namespace(ELECTION)}{name}/".encode()

    async def proclaim(self, name: str, token: str, handle: Held, value: str) -> bool:
        """Go's ``Proclaim``: the value of our key, if it is still the one created when we were elected."""
        reply = await self.txn(proclaim(handle.key, handle.revision, handle.lease_id, value.encode()))
        return bool(reply.succeeded)

    async def leader(self, name: str) -> Leader | None:
        leader, _ = await read_leader(self, self.election_prefix(name))
        return leader

    def follow(self, name: str) -> EtcdFollower:
        return EtcdFollower(self, self.election_prefix(name))

    # --- Driver ------------------------------------------------------------------------------------

    def lifetime(self, ttl: float) -> float:
        return float(self.lease_ttl(ttl))  # session_ttl if set, else ttl rounded up to whole seconds

    def contender(self, key: str, token: str, ttl: float, holder: str) -> EtcdContender:
        return EtcdContender(self, key, token, ttl, holder)

    async def _owns(self, held: Held) -> bool:
        reply = await self.range(rpc.RangeRequest(key=held.key))
        return bool(reply.kvs) and reply.kvs[0].create_revision == held.revision and reply.kvs[0].lease == held.lease_id

    async def release(self, key: str, token: str, handle: Held) -> bool:
        """Delete our key if it is still ours (one txn), and keep its lease for the next obtain.

        Idempotent: a second run finds the key gone and revokes the lease instead.
        """
        # Not repeatable: a second try after an applied first one would find the key gone and say "not ours".
        reply = await self.txn(leave_queue(handle.key, handle.revision, handle.lease_id), repeatable=False)
        if reply.succeeded and self.put_spare(handle.lease_ttl, handle.lease_id, handle.expires_at):
            return True
        # Not ours any more (deleted behind our back, or a repeated release), or the pool is full.
        await self.revoke(handle.lease_id)
        return bool(reply.succeeded)

    def take_spare(self, lease_ttl: int, now: float) -> tuple[int, float] | None:
        """A lease kept from a released lock, asked for with ``lease_ttl``, with at least half of it left:
        its ID and when it expires. Kept leases with less left are forgotten (they expire by themselves)."""
        spares = self._spares.get(lease_ttl)
        while spares:
            lease_id, expires_at = spares.pop()
            if expires_at - now > lease_ttl / 2:
                return lease_id, expires_at
        return None

    def distrust_spares(self) -> None:
        """A kept lease was gone: reuse none of the others, which likely went the same way (an operator
        revoking unused leases, a stall longer than their TTL); ``aclose()`` still revokes those alive."""
        for leases in self._spares.values():
            self._doubtful.extend(leases)
        self._spares.clear()
        now = asyncio.get_running_loop().time()
        self._doubtful = [(lease_id, expires_at) for lease_id, expires_at in self._doubtful if expires_at > now]

    def put_spare(self, lease_ttl: int, lease_id: int, expires_at: float) -> bool:
        """Keep a lease that holds no key any more; ``False`` if the pool is full or the locker closing.

        A kept lease is not kept alive: unused, it expires with its TTL like any other.
        """
        spares = self._spares.setdefault(lease_ttl, [])
        if not self._keep_spares or len(spares) >= _SPARES_PER_TTL:
            return False
        spares.append((lease_id, expires_at))
        return True

    async def extend(self, key: str, token: str, handle: Held, ttl: float) -> bool:
        sent = asyncio.get_running_loop().time()
        lease_ttl = await self.keep_alive(handle.lease_id)
        if lease_ttl <= 0:
            return False
        if await self._owns(handle):
            handle.expires_at = sent + lease_ttl
            return True
        # Our key was deleted behind our back: the lease holds nothing any more.
        await self.revoke(handle.lease_id)
        return False

    async def remaining(self, key: str, token: str, handle: Held) -> float:
        reply = await self.lease_time_to_live(handle.lease_id, keys=True)
        if reply.TTL < 0 or handle.key not in reply.keys:
            return 0.0
        # etcd truncates to whole seconds (a live lease can show 0): the true time left lies in
        # [TTL, TTL + 1), where our own clock narrows it down.
        estimate = handle.expires_at - asyncio.get_running_loop().time()
        server_ttl = float(reply.TTL)
        return min(max(estimate, server_ttl, _MIN_REMAINING), server_ttl + 1.0)

    async def aclose(self) -> None:
        self._keep_spares = False
        spares = [lease for leases in self._spares.values() for lease, _ in leases]
        spares += [lease for lease, _ in self._doubtful]
        self._spares.clear()
        self._doubtful.clear()
        for lease_id in spares:
            # They would expire by themselves; revoking them now leaves the server as we found it.
            try:
                await self.revoke(lease_id)
            except (BackendError, RuntimeError) as exc:  # RuntimeError: never connected
                logger.debug("could not revoke a kept lease (%s); it expires with its TTL", exc)
        self.closed = True
        await self.keep_alives.aclose()
        await self.watches.aclose()
        if self.owned and self.client is not None:
            client, self.client = self.client, None
            try:
                await client.close()
            except CLIENT_ERRORS as exc:
                logger.debug("closing the etcd client failed: %r", exc)
