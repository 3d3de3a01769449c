from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from dataclasses import fields, replace
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import aetcd
import grpc
from aetcd import rpc

from .._core._driver import Busy, Granted, KeyState
from .._core._locker import LockerBase
from .._errors import BackendError
from .._options import EtcdOptions, Options
from .._validate import redact_url
from ._compat_aetcd import Client, credentials_of
from ._etcd_io import (
    CLIENT_ERRORS,
    HASLEADER,
    KeepAlives,
    StreamFailed,
    Watch,
    Watches,
    authenticate,
    backend_error,
    channel_options,
    code,
    dial,
    is_lease_not_found,
    is_token_rejected,
    is_transient,
    load_credentials,
    parse_endpoints,
    resolve_target,
    unary,
)

__all__ = ["EtcdLocker"]

logger = logging.getLogger("distlock_async")

_HEX = frozenset(b"0123456789abcdef")

#: Pauses between tries of an RPC that found its member unavailable or leaderless, in seconds.
_FIRST_PAUSE = 0.02
_MAX_PAUSE = 0.25

#: What ``ttl()`` shows for a lease that etcd reports alive with 0 whole seconds left.
_MIN_REMAINING = 0.001


def _range_end(prefix: bytes) -> bytes:
    """The end of the key range of every key that starts with ``prefix`` (it ends in ``/``)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _is_member(prefix: bytes, key: bytes) -> bool:
    """A lock key of this name (``prefix`` + lease ID in hex), not one of a name nested below it."""
    suffix = key[len(prefix) :]
    return bool(suffix) and _HEX.issuperset(suffix)


#: Leases of released locks a locker keeps per TTL for reuse (each saves a raft write on obtain and one
#: on release).
_SPARES_PER_TTL = 64

#: Leases an obtain may find gone in a row (each replaced by a new grant) before it gives up.
_LEASE_TRIES = 3


def _new_lease_id() -> int:
    # Chosen here rather than by etcd so that a grant whose answer never came can still be revoked.
    return secrets.randbits(63) or 1


class _Held:
    """The handle of a granted lock: its lease, its key, and when the lease ends at the earliest."""

    __slots__ = ("expires_at", "key", "lease_id", "lease_ttl", "revision")

    def __init__(self, lease_id: int, key: bytes, revision: int, expires_at: float, lease_ttl: int) -> None:
        self.lease_id = lease_id
        self.key = key
        self.revision = revision
        #: The TTL the lease was asked for: a released lock's lease is kept for the next lock of this TTL.
        self.lease_ttl = lease_ttl
        #: Event loop time: when the last grant or keep-alive was sent, plus the TTL it was answered with.
        self.expires_at = expires_at


class _EtcdContender:
    """One ``obtain``: a lease, a key queued under the lock's name, a watch on the key just ahead of it."""

    __slots__ = (
        "_driver",
        "_expires_at",
        "_grant",
        "_kept_alive_at",
        "_key",
        "_lease_id",
        "_lease_ttl",
        "_own",
        "_prefix",
        "_renewal",
        "_reused",
        "_revision",
        "_token",
        "_watch",
    )

    def __init__(self, driver: _EtcdDriver, key: str, token: str, ttl: float) -> None:
        self._driver = driver
        self._key = key
        self._token = token
        self._prefix = f"{driver.namespace}{key}/".encode()
        self._lease_ttl = driver.lease_ttl(ttl)
        self._lease_id = 0
        self._grant: asyncio.Future[int] | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._reused = False
        self._own = b""
        self._revision = 0
        self._kept_alive_at = 0.0
        self._expires_at = 0.0
        self._watch: Watch | None = None

    async def _new_lease(self, *, reuse: bool = True) -> None:
        driver = self._driver
        self._drop_watch()
        await self._end_renewal()  # of a reused lease that turned out to be gone
        self._revision = 0
        loop = asyncio.get_running_loop()
        spare = driver.take_spare(self._lease_ttl, loop.time()) if reuse else None
        self._reused = spare is not None
        if spare is not None:
            # The lease of a lock this locker released, with at least half its TTL left: no grant (a raft
            # write) needed. A keep-alive on the open stream resets it to its full TTL, sent now and
            # awaited after the obtain's txn, so both travel at once. It is ours from here on: close()
            # revokes it.
            self._lease_id, self._expires_at = spare
            self._own = self._prefix + f"{self._lease_id:x}".encode()
            self._grant = done = loop.create_future()
            done.set_result(0)  # the lease exists already: nothing for close() to wait for
            self._kept_alive_at = self._expires_at - self._lease_ttl
            self._renewal = loop.create_task(
                self._renew(self._lease_id), name=f"distlock_async: etcd lease renewal for {self._key!r}"
            )
            await asyncio.sleep(0)  # a checkpoint, as the grant path has
            return
        self._lease_id = lease_id = _new_lease_id()
        self._own = self._prefix + f"{lease_id:x}".encode()
        # The grant runs in a task of its own that a cancelled obtain leaves running, so that close()
        # can wait for its outcome before revoking: a revoke that overtook the grant would leak the lease.
        sent = loop.time()
        self._grant = loop.create_task(
            driver.grant(lease_id, self._lease_ttl), name=f"distlock_async: etcd lease grant for {self._key!r}"
        )
        granted_ttl = await asyncio.shield(self._grant)
        self._kept_alive_at = sent
        self._expires_at = sent + granted_ttl

    async def _renew(self, lease_id: int) -> None:
        sent = asyncio.get_running_loop().time()
        ttl = await self._driver.keep_alive(lease_id)
        if lease_id == self._lease_id:
            if ttl <= 0:
                self._expires_at = 0.0  # gone: whatever the txn attached to it is gone or going
            else:
                self._kept_alive_at = sent
                self._expires_at = sent + ttl

    async def _renewed(self) -> None:
        """Wait for the keep-alive that renews a reused lease (see ``_new_lease``); its error, if any."""
        renewal = self._renewal
        if renewal is not None:
            await asyncio.wait({renewal})  # a cancellation of ours leaves it to close(), which ends it
            self._renewal = None
            renewal.result()

    async def _alive(self) -> bool:
        """Whether our lease is alive now, after a txn that attached our key to it.

        It is while the last grant or keep-alive's answer says so (counted from when that was sent, so
        etcd's count cannot have run out before ours). Past that -- a reused lease whose keep-alive
        answered "gone", or a txn answered only after a stall longer than the lease -- a keep-alive
        decides: a lease that expired took our key along, whatever the txn said.
        """
        await self._renewed()
        loop = asyncio.get_running_loop()
        if loop.time() < self._expires_at:
            return True
        sent = loop.time()
        ttl = await self._driver.keep_alive(self._lease_id)
        if ttl <= 0:
            return False
        self._kept_alive_at = sent
        self._expires_at = sent + ttl
        return True

    async def _queued(self) -> Any:
        """Our key in the queue, attached to a live lease: the txn's reply.

        A lease found gone -- it expired while we waited or during a stall, an operator revoked it, a
        kept lease ran out -- is revoked for good measure (taking our key along, if the txn attached
        it), and a newly granted one queues our key afresh; never a kept lease again, and the other
        kept leases are distrusted (what took one likely took them all).
        """
        gone: BaseException = LookupError(f"lease {self._lease_id:x} not found")
        for _ in range(_LEASE_TRIES):
            try:
                reply = await self._txn()
                if await self._alive():
                    return reply
                gone = LookupError(f"lease {self._lease_id:x} answered a keep-alive with TTL 0")
            except BackendError as exc:
                if exc.__cause__ is None or not is_lease_not_found(exc.__cause__):
                    raise
                gone = exc.__cause__
            logger.debug("lock %r: the lease of our key (%x) is gone; queueing again", self._key, self._lease_id)
            if self._reused:
                self._driver.distrust_spares()
            await self._driver.revoke(self._lease_id)
            await self._new_lease(reuse=False)
        raise BackendError(f"etcd: the leases of lock {self._key!r} expired {_LEASE_TRIES} times in a row") from gone

    async def _end_renewal(self) -> None:
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            if not renewal.done():
                renewal.cancel()
                await asyncio.wait({renewal})
            if not renewal.cancelled():
                renewal.exception()  # retrieved: it failed the attempt already, or does not matter now

    async def attempt(self) -> Granted | Busy:
        if self._grant is None:
            await self._new_lease()
        reply = await self._queued()
        if reply.succeeded:
            revision = reply.header.revision
        else:
            revision = reply.responses[0].response_range.kvs[0].create_revision
        if revision != self._revision:
            self._drop_watch()  # queued afresh: the key ahead of us is another one
            self._revision = revision
        first = reply.responses[1].response_range.kvs
        if first and not _is_member(self._prefix, first[0].key):
            first = await self._driver.members(self._prefix, limit_one=True)
        if first and first[0].create_revision == revision:
            return Granted(revision, _Held(self._lease_id, self._own, revision, self._expires_at, self._lease_ttl))
        return Busy()

    async def _txn(self) -> Any:
        """Go's ``Mutex.tryAcquire``: queue our key unless it is queued already, and read the first key."""
        own, prefix = self._own, self._prefix
        first = rpc.RequestOp(
            request_range=rpc.RangeRequest(
                key=prefix,
                range_end=_range_end(prefix),
                sort_order=rpc.RangeRequest.SortOrder.ASCEND,
                sort_target=rpc.RangeRequest.SortTarget.CREATE,
                limit=1,
                keys_only=True,
            )
        )
        request = rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=own, create_revision=0)],
            success=[
                rpc.RequestOp(request_put=rpc.PutRequest(key=own, value=self._token.encode(), lease=self._lease_id)),
                first,
            ],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=own)), first],
        )
        return await self._driver.call("txn", "kv", "Txn", request)

    async def wait(self, timeout: float) -> bool:
        driver = self._driver
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = self._lease_ttl / 3
        while True:
            if self._watch is None:
                ahead = await driver.predecessor(self._prefix, self._revision)
                if ahead is None:
                    return True  # nobody ahead of us any more
                key, revision = ahead
                self._watch = driver.watches.watch_delete(key, revision + 1)
            now = loop.time()
            keep_alive_at = self._kept_alive_at + interval
            if await self._watch.fired.wait(max(0.0, min(deadline, keep_alive_at) - now)):
                logger.debug("lock %r: the key ahead of ours is gone; trying again", self._key)
                self._drop_watch()
                return True
            now = loop.time()
            if now >= keep_alive_at:
                # A waiter keeps its lease alive as a holder does, or it would drop out of the queue.
                ttl = await driver.keep_alive(self._lease_id)
                if ttl <= 0:
                    return True
                self._kept_alive_at = now
                self._expires_at = now + ttl
            if now >= deadline:
                return False

    def _drop_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            self._driver.watches.cancel(watch)

    async def close(self, granted: Granted | None) -> None:
        # Idempotent: ``_grant`` is forgotten only once the lease is dealt with, so a run cut short by a
        # cancellation is repeated in full.
        self._drop_watch()
        await self._end_renewal()
        grant = self._grant
        if granted is not None or grant is None:
            self._grant = None
            await asyncio.sleep(0)
            return
        # Leaving without the lock (gave up, cancelled, failed): take our key out of the queue by revoking
        # its lease, once the grant has had its outcome.
        if not grant.done():
            await asyncio.wait({grant})
        failure = None if grant.cancelled() else grant.exception()
        if failure is None or not _surely_not_granted(failure):
            try:
                await self._driver.revoke(self._lease_id)
            except BackendError as exc:
                logger.warning(
                    "could not revoke the lease of an abandoned obtain of %r (%s); it expires with its TTL",
                    self._key,
                    exc,
                )
        self._grant = None


def _surely_not_granted(exc: BaseException | None) -> bool:
    """The grant failed in a way that proves no lease of ours exists (etcd refused it outright)."""
    cause = exc.__cause__ if exc is not None else None
    return cause is not None and code(cause) in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)


class _EtcdDriver:
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
            try:
                await self.client.connect()
            except CLIENT_ERRORS as exc:
                raise backend_error("connect", exc) from exc
        # aetcd's own watcher cannot send the ``hasleader`` metadata: the locker keeps a stub of its own.
        self._watchstub = rpc.WatchStub(self._client().channel)
        self._ready = True

    async def call(
        self,
        what: str,
        stub: str,
        method: str,
        request: Any,
        *,
        retried: list[bool] | None = None,
        repeatable: bool = True,
    ) -> Any:
        """One unary RPC within the deadline, sent again while the member is unavailable or leaderless.

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
        function = getattr({"kv": client.kvstub, "lease": client.leasestub}[stub], method)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        per_try = max(self.deadline / 3, min(self.deadline, 1.0)) if repeatable else self.deadline
        pause = _FIRST_PAUSE
        renewed = False
        while True:
            token = client.metadata
            timeout = max(min(deadline - loop.time(), per_try), 0.001)
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
                    raise backend_error(what, exc, self._hint(exc)) from exc
                logger.debug("etcd %s failed (%s); trying again in %.2f s", what, exc, pause)
            await asyncio.sleep(pause)
            pause = min(2 * pause, _MAX_PAUSE)
            if retried is not None:
                retried.append(True)

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
                "lease grant", "lease", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl, ID=lease_id), retried=retried
            )
        except BackendError as exc:
            if retried and exc.__cause__ is not None and "lease already exists" in str(exc):
                return ttl  # our first try was applied after all
            raise
        if reply.error:
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
                "lease revoke", "lease", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id), retried=retried
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
            try:
                return await self.keep_alives.keep_alive(lease_id, max(deadline - loop.time(), 0.001))
            except StreamFailed as exc:
                if self.closed or loop.time() + pause >= deadline:
                    raise BackendError(f"etcd keep-alive failed: {exc}") from exc.__cause__ or exc
                logger.debug("%s; trying again in %.2f s", exc, pause)
            await asyncio.sleep(pause)
            pause = min(2 * pause, _MAX_PAUSE)

    # --- the queue of a lock -----------------------------------------------------------------------

    async def members(self, prefix: bytes, *, limit_one: bool) -> list[Any]:
        """The lock keys of a name in queue order, without the keys of names nested below it."""
        request = rpc.RangeRequest(
            key=prefix,
            range_end=_range_end(prefix),
            sort_order=rpc.RangeRequest.SortOrder.ASCEND,
            sort_target=rpc.RangeRequest.SortTarget.CREATE,
            keys_only=True,
        )
        reply = await self.call("range", "kv", "Range", request)
        members = [kv for kv in reply.kvs if _is_member(prefix, kv.key)]
        return members[:1] if limit_one else members

    async def predecessor(self, prefix: bytes, revision: int) -> tuple[bytes, int] | None:
        """The key queued just ahead of the one created at ``revision``, and the revision it was seen at."""
        request = rpc.RangeRequest(
            key=prefix,
            range_end=_range_end(prefix),
            sort_order=rpc.RangeRequest.SortOrder.DESCEND,
            sort_target=rpc.RangeRequest.SortTarget.CREATE,
            max_create_revision=revision - 1,
            limit=1,
            keys_only=True,
        )
        reply = await self.call("range", "kv", "Range", request)
        kvs = list(reply.kvs)
        if kvs and not _is_member(prefix, kvs[0].key):
            request.ClearField("limit")
            reply = await self.call("range", "kv", "Range", request)
            kvs = [kv for kv in reply.kvs if _is_member(prefix, kv.key)]
        if not kvs:
            return None
        return kvs[0].key, reply.header.revision

    async def inspect(self, key: str) -> KeyState:
        """What ``distlock status`` shows: held, the holder's remaining seconds, the fencing counter.

        The counter is the holder's fencing token while the key is held, else the cluster's revision,
        which the next obtain's token will exceed. Two round trips while held (the key, its lease).
        """
        prefix = f"{self.namespace}{key}/".encode()
        queue = await self.members(prefix, limit_one=True)
        if not queue:
            reply = await self.call("range", "kv", "Range", rpc.RangeRequest(key=prefix, count_only=True))
            return KeyState(False, None, int(reply.header.revision))
        holder = queue[0]
        info = await self.call(
            "lease time-to-live", "lease", "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=holder.lease)
        )
        # A key without a lease (written by hand) holds the lock until deleted.
        ttl = None if holder.lease == 0 else max(float(info.TTL), 0.0)
        return KeyState(True, ttl, int(holder.create_revision))

    # --- Driver ------------------------------------------------------------------------------------

    def lifetime(self, ttl: float) -> float:
        return float(self.lease_ttl(ttl))  # session_ttl if set, else ttl rounded up to whole seconds

    def contender(self, key: str, token: str, ttl: float) -> _EtcdContender:
        return _EtcdContender(self, key, token, ttl)

    async def _owns(self, held: _Held) -> bool:
        reply = await self.call("range", "kv", "Range", rpc.RangeRequest(key=held.key))
        return bool(reply.kvs) and reply.kvs[0].create_revision == held.revision and reply.kvs[0].lease == held.lease_id

    async def release(self, key: str, token: str, handle: object) -> bool:
        """Delete our key if it is still ours (one txn), and keep its lease for the next obtain.

        Idempotent: a second run finds the key gone and revokes the lease instead.
        """
        assert isinstance(handle, _Held)
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=handle.key, create_revision=handle.revision
                ),
                rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.LEASE, key=handle.key, lease=handle.lease_id),
            ],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=handle.key))],
            failure=[],
        )
        # Not repeatable: a second try after an applied first one would find the key gone and say "not ours".
        reply = await self.call("txn", "kv", "Txn", request, repeatable=False)
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

    async def extend(self, key: str, token: str, handle: object, ttl: float) -> bool:
        assert isinstance(handle, _Held)
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

    async def remaining(self, key: str, token: str, handle: object) -> float:
        assert isinstance(handle, _Held)
        reply = await self.call(
            "lease time-to-live", "lease", "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=handle.lease_id, keys=True)
        )
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


_E = TypeVar("_E", bound="EtcdLocker")

_URL_FORM = (
    "'etcd://host:port[,host:port...]' (etcds:// for TLS; 'user:password@' before the hosts to authenticate; "
    "query parameters ca_file, cert_file, key_file, server_name)"
)
#: The query parameters of an etcd URL: fields of ``EtcdOptions``.
_URL_PARAMETERS = ("ca_file", "cert_file", "key_file", "server_name")
#: The fields of ``EtcdOptions`` that say how to make a client: they do not apply to a client passed in.
_CONNECTION_FIELDS = ("tls", *_URL_PARAMETERS, "username", "password")
_DEFAULTS = {f.name: f.default for f in fields(EtcdOptions)}


def _merged(etcd_options: EtcdOptions | None, settings: dict[str, Any]) -> EtcdOptions:
    """``etcd_options`` with what a URL set; ``ValueError`` where both set a field, differently."""
    if etcd_options is None:
        return EtcdOptions(**settings)
    changes = {}
    for name, value in settings.items():
        mine = getattr(etcd_options, name)
        if mine == value:
            continue
        if name == "tls" and mine:
            raise ValueError("etcd_options.tls is True but the URL is etcd://; use etcds://")
        if mine != _DEFAULTS[name]:
            shown = "the URL's password" if name == "password" else f"the URL's {value!r}"
            raise ValueError(f"etcd_options.{name} contradicts {shown}; set it in one place")
        changes[name] = value
    return replace(etcd_options, **changes) if changes else etcd_options


def _check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
    return namespace


class EtcdLocker(LockerBase):
    """Locks in etcd, compatible with etcd's Go ``concurrency.Mutex`` and ``etcdctl lock``.

    Each obtained lock has a lease of its own, and its key ``<namespace><key>/<lease ID in hex>`` is
    attached to it; the lock belongs to the key of the name with the lowest create revision, which is
    also the lock's fencing token. Waiters queue their own keys and each watches only the key ahead of
    it, so the lock passes in FIFO order, waking one waiter per release. ``release()`` revokes the lease;
    ``refresh()`` keeps it alive once over the locker's keep-alive stream and checks that the key is
    still there; ``ttl()`` is the lease's remaining time in whole seconds.

    A lease lives ``EtcdOptions.session_ttl`` seconds, by default the lock's ``ttl`` rounded up to whole
    seconds, and a leader change resets it to the full TTL. etcd would raise a shorter TTL to its minimum
    (1.5 election timeouts, 2 s with its default settings): ``obtain`` raises ``ValueError`` instead.
    Every RPC has a deadline of ``EtcdOptions.session_timeout`` seconds.

    Args:
        client: an ``aetcd.Client``. The locker never closes it. If it was given a user name and
            password, the locker authenticates it again whenever etcd refuses its token.
        options: defaults for every lock of this locker.
        etcd_options: settings of the etcd backend.
        namespace: prefix of every key the locker writes (include a trailing ``/`` if you want one).

    Raises:
        TypeError: an argument has the wrong type.
    """

    def __init__(
        self,
        client: aetcd.Client,
        options: Options | None = None,
        etcd_options: EtcdOptions | None = None,
        *,
        namespace: str = "distlock/",
    ) -> None:
        if not isinstance(client, aetcd.Client):
            raise TypeError(f"client must be an aetcd.Client, not {type(client).__name__}")
        self._init(client, None, options, etcd_options, namespace)

    def _init(
        self,
        client: aetcd.Client | None,
        endpoints: list[tuple[str, int]] | None,
        options: Options | None,
        etcd_options: EtcdOptions | None,
        namespace: str,
    ) -> None:
        if etcd_options is not None and not isinstance(etcd_options, EtcdOptions):
            raise TypeError(
                f"etcd_options must be distlock_async.EtcdOptions or None, not {type(etcd_options).__name__}"
            )
        if client is not None and etcd_options is not None:
            given = [name for name in _CONNECTION_FIELDS if getattr(etcd_options, name) != _DEFAULTS[name]]
            if given:
                raise ValueError(
                    f"EtcdOptions.{given[0]} applies to a client the locker makes (connect(), from_url()); "
                    "set up the aetcd.Client you pass yourself"
                )
        self._driver_ = _EtcdDriver(client, endpoints, etcd_options or EtcdOptions(), _check_namespace(namespace))
        super().__init__(self._driver_, options)

    @classmethod
    async def connect(
        cls: type[_E],
        endpoints: list[str],
        options: Options | None = None,
        etcd_options: EtcdOptions | None = None,
        *,
        namespace: str = "distlock/",
    ) -> _E:
        """A locker over a client of its own, connected to ``endpoints`` of one etcd cluster.

        The client fails over between the endpoints (gRPC's multi-address ``pick_first``); host names are
        resolved once, here. Connecting waits at most ``EtcdOptions.dial_timeout`` seconds. The locker
        closes the client in ``aclose()``.

        With ``EtcdOptions.tls`` the client speaks TLS; with ``username`` and ``password`` it authenticates
        once connected (within ``session_timeout``), and again whenever etcd refuses its token.

        Args:
            endpoints: ``["host:port", ...]`` of the cluster's members.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: an endpoint is malformed.
            BackendError: no endpoint could be reached within ``dial_timeout`` (the message says why:
                refused, a certificate not trusted, ...), a TLS file is unusable, or authentication failed.
        """
        self = cls._unconnected(parse_endpoints(endpoints), options, etcd_options, namespace)
        try:
            await self._driver_.ensure()
        except BaseException:
            await self._driver_.aclose()
            raise
        return self

    @classmethod
    def from_url(
        cls: type[_E],
        url: str,
        options: Options | None = None,
        etcd_options: EtcdOptions | None = None,
        *,
        namespace: str = "distlock/",
    ) -> _E:
        """A locker over ``etcd://host:port[,host:port...]`` that owns its client and connects on first use.

        ``etcds://`` connects over TLS. ``user:password@`` before the hosts authenticates as that etcd
        user (both percent-decoded). Query parameters name the TLS files and the certificates' name:
        ``etcds://h1:2379,h2:2379?ca_file=ca.pem&cert_file=client.pem&key_file=client-key.pem&server_name=etcd``.
        What the URL sets lands in the :class:`~distlock_async.EtcdOptions` fields of the same names
        (``tls`` from the scheme); ``etcd_options`` may set the others, not a different value of these.
        No message ever shows the password.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: the URL is malformed, has an unknown query parameter, names a file that does not
                exist, or contradicts ``etcd_options``.
        """
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise ValueError(f"etcd URLs look like {_URL_FORM}, got {redact_url(url)!r} ({exc})") from None
        scheme = parts.scheme.lower()
        userinfo, at, hosts = parts.netloc.rpartition("@")
        if scheme not in ("etcd", "etcds") or parts.path not in ("", "/") or parts.fragment or not hosts:
            raise ValueError(f"etcd URLs look like {_URL_FORM}, got {redact_url(url)!r}")
        settings: dict[str, Any] = {"tls": scheme == "etcds"}
        if at:
            username, colon, password = userinfo.partition(":")
            if not colon or not username:
                raise ValueError(f"an etcd URL's credentials look like 'user:password@', got {redact_url(url)!r}")
            settings["username"], settings["password"] = unquote(username), unquote(password)
        try:
            query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise ValueError(f"etcd URL query must be 'name=value&...', got {parts.query!r}") from None
        for name, value in query:
            if name not in _URL_PARAMETERS:
                unknown = sorted({name for name, _ in query} - set(_URL_PARAMETERS))
                raise ValueError(
                    f"unknown etcd URL parameter(s) {', '.join(unknown)}; known: {', '.join(_URL_PARAMETERS)}"
                )
            if name in settings:
                raise ValueError(f"etcd URL parameter {name} is given twice")
            settings[name] = value
        endpoints = parse_endpoints(hosts.split(","))
        return cls._unconnected(endpoints, options, _merged(etcd_options, settings), namespace)

    @classmethod
    def _unconnected(
        cls: type[_E],
        endpoints: list[tuple[str, int]],
        options: Options | None,
        etcd_options: EtcdOptions | None,
        namespace: str,
    ) -> _E:
        self = cls.__new__(cls)
        self._init(None, endpoints, options, etcd_options, namespace)
        return self

    @property
    def client(self) -> aetcd.Client | None:
        """The aetcd client this locker was given or made (``None`` until a URL locker first connects)."""
        return self._driver_.client

    @property
    def namespace(self) -> str:
        """The prefix of every key this locker writes."""
        return self._driver_.namespace

    def __repr__(self) -> str:
        return f"<distlock_async.EtcdLocker namespace={self.namespace!r}>"


EtcdLocker.__module__ = "distlock_async"
