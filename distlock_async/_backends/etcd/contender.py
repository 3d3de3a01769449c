"""One ``obtain`` on etcd: its lease, its key queued under the lock's name, the watch on the key ahead.

The same contender takes a semaphore's permit or campaigns in an election: a :class:`Rule` says under
which prefix it queues, what its key holds, and how many of the first keys hold at once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from aetcd import rpc

from ..._core._driver import Busy, Granted
from ..._errors import BackendError
from .errors import code, is_lease_not_found
from .queue import Rule, is_member, join_queue, permit_value, range_end, value_of
from .streams import Watch

if TYPE_CHECKING:
    from .driver import EtcdDriver

__all__ = ["EtcdContender", "Held"]

logger = logging.getLogger("distlock_async")


#: Leases an obtain may find gone in a row (each replaced by a new grant) before it gives up.
_LEASE_TRIES = 3


def _new_lease_id() -> int:
    # Chosen here rather than by etcd so that a grant whose answer never came can still be revoked.
    return secrets.randbits(63) or 1


@dataclass(eq=False, slots=True)
class Held:
    """The handle of a granted lock: its lease, its key, and when the lease ends at the earliest."""

    lease_id: int
    key: bytes
    revision: int
    #: Event loop time: when the last grant or keep-alive was sent, plus the TTL it was answered with.
    expires_at: float
    #: The TTL the lease was asked for: a released lock's lease is kept for the next lock of this TTL.
    lease_ttl: int


class EtcdContender:
    """One ``obtain``: a lease, a key queued under the lock's name, a watch on the key just ahead of it."""

    __slots__ = (
        "_driver",
        "_expires_at",
        "_grant",
        "_kept_alive_at",
        "_key",
        "_lease_id",
        "_lease_ttl",
        "_limit",
        "_own",
        "_prefix",
        "_renewal",
        "_reused",
        "_revision",
        "_token",
        "_value",
        "_watch",
        "_what",
    )

    def __init__(
        self, driver: EtcdDriver, key: str, token: str, ttl: float, holder: str, rule: Rule | None = None
    ) -> None:
        self._driver = driver
        self._key = key
        self._token = token
        namespace = driver.namespace if rule is None else rule.namespace
        self._prefix = f"{namespace}{key}/".encode()
        #: What our key holds: the token and the holder label (``inspect`` shows it) of a lock or a permit;
        #: a candidate's value, as Go's ``concurrency.Election`` writes it.
        if rule is not None and rule.value is not None:
            self._value = rule.value.encode()
        elif rule is not None and rule.records_limit:
            self._value = permit_value(token, rule.limit, holder)  # and the limit, for inspect_semaphore
        else:
            self._value = value_of(token, holder)
        #: How many of the name's first keys hold at once: 1 but for a semaphore's permits.
        self._limit = 1 if rule is None else rule.limit
        self._what = "lock" if rule is None else rule.what
        self._lease_ttl = driver.lease_ttl(ttl)
        self._lease_id = 0
        self._grant: asyncio.Future[int] | None = None
        self._renewal: asyncio.Task[bool] | None = None
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
        # Connected first, in the caller: if etcd cannot be reached no grant is sent, so close() knows
        # there is no lease to revoke (and nothing to warn about).
        await driver.ensure()
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

    async def _renew(self, lease_id: int) -> bool:
        """One keep-alive of ``lease_id``; whether the lease is alive. While it is still our lease, when
        it was last kept alive and when it ends at the earliest follow the answer (counted from when the
        keep-alive was sent, so etcd's count cannot have run out before ours)."""
        sent = asyncio.get_running_loop().time()
        ttl = await self._driver.keep_alive(lease_id)
        if lease_id == self._lease_id:
            if ttl <= 0:
                self._expires_at = 0.0  # gone: whatever the txn attached to it is gone or going
            else:
                self._kept_alive_at = sent
                self._expires_at = sent + ttl
        return ttl > 0

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
        etcd's count cannot have run out before ours), with half its TTL left at least: a lock granted
        now is held until the lease's own end at the latest, so it starts with most of it. Otherwise --
        a waiter's keep-alive falling due, a reused lease whose keep-alive answered "gone", a txn
        answered only after a stall longer than the lease -- a keep-alive decides, and renews it: a lease
        that expired took our key along, whatever the txn said.
        """
        await self._renewed()
        if asyncio.get_running_loop().time() < self._expires_at - self._lease_ttl / 2:
            return True
        return await self._renew(self._lease_id)

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
                # "lease not found" is no failure here but a decision: queue again on a new lease. The
                # boundary kept gRPC's error as the cause, which is what tells.
                if exc.__cause__ is None or not is_lease_not_found(exc.__cause__):
                    raise
                gone = exc.__cause__
            logger.debug(
                "%s %r: the lease of our key (%x) is gone; queueing again", self._what, self._key, self._lease_id
            )
            if self._reused:
                self._driver.distrust_spares()
            await self._driver.revoke(self._lease_id)
            await self._new_lease(reuse=False)
        raise BackendError(
            f"etcd: the leases of {self._what} {self._key!r} expired {_LEASE_TRIES} times in a row"
        ) from gone

    async def _end_renewal(self) -> None:
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            if not renewal.done():
                renewal.cancel()
                await asyncio.wait({renewal})
            if not renewal.cancelled():
                renewal.exception()  # retrieved: it failed the attempt already, or does not matter now

    async def attempt(self) -> Granted[Held] | Busy:
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
        # Ours holds if it is among the name's first ``limit`` keys (the first, for a lock). Keys of names
        # nested below this one may take places among those read: then every key is read.
        first = reply.responses[1].response_range.kvs
        if not any(kv.create_revision == revision for kv in first) and any(
            not is_member(self._prefix, kv.key) for kv in first
        ):
            first = await self._driver.members(self._prefix, limit=self._limit)
        if any(kv.create_revision == revision for kv in first):
            # The lease may have been kept alive before this attempt (a waiter's): it ends by its own count.
            held = Held(self._lease_id, self._own, revision, self._expires_at, self._lease_ttl)
            return Granted(revision, held, valid_until=self._expires_at)
        return Busy()

    async def _txn(self) -> Any:
        """Go's ``Mutex.tryAcquire``: queue our key unless it is queued already, and read the first key."""
        return await self._driver.txn(join_queue(self._own, self._prefix, self._value, self._lease_id, self._limit))

    async def wait(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = self._lease_ttl / 3
        while True:
            if self._watch is None and not await self._watch_ahead():
                return True  # nobody ahead of us any more (not enough for the permits, in a semaphore)
            assert self._watch is not None
            now = loop.time()
            keep_alive_at = self._kept_alive_at + interval
            if await self._watch.fired.wait(max(0.0, min(deadline, keep_alive_at) - now)):
                logger.debug("%s %r: the key ahead of ours is gone; trying again", self._what, self._key)
                self._drop_watch()
                return True
            now = loop.time()
            # A waiter keeps its lease alive as a holder does, or it would drop out of the queue.
            if now >= keep_alive_at and not await self._renew(self._lease_id):
                return True
            if now >= deadline:
                return False

    async def _watch_ahead(self) -> bool:
        """Watch what can let us in; ``False`` if nothing has to go first.

        With one holder at a time (a lock, a candidate, a permit of ``limit=1``) that is the deletion of
        the key just ahead of ours, as Go's Mutex does: one waiter wakes per release. With ``limit`` holders
        a deletion of any key ahead of ours counts, so the watch covers the name's range and counts the
        deletions of keys created before ours (``prev_kv`` says when each was created): it fires once
        ``rank - limit + 1`` of them went, the number that lets us in, or at once if it cannot tell.
        Keys are never created ahead of ours, so the count can only go down.
        """
        driver = self._driver
        if self._limit == 1:
            ahead = await driver.predecessor(self._prefix, self._revision)
            if ahead is None:
                return False
            key, revision = ahead
            self._watch = driver.watches.watch_delete(key, revision + 1)
            return True
        rank, revision = await driver.rank(self._prefix, self._revision)
        need = rank - self._limit + 1
        if need <= 0:
            return False
        prefix = self._prefix
        self._watch = driver.watches.watch(
            prefix,
            revision + 1,
            range_end=range_end(prefix),
            prev_kv=True,
            wake=_DeletionsAhead(prefix, self._revision, need),
        )
        return True

    def _drop_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            self._driver.watches.cancel(watch)

    async def close(self, granted: Granted[Held] | None) -> None:
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
                if failure is None:
                    logger.warning(
                        "could not revoke the lease of an abandoned obtain of %r (%s); it expires with its TTL",
                        self._key,
                        exc,
                    )
                else:
                    # The grant failed too: most likely there is no lease, and if etcd applied the grant
                    # after all, the lease backs no key (no txn ran with it) and expires unnoticed.
                    logger.debug(
                        "obtain of %r: lease %x may not exist (its grant failed: %s); its revoke failed too (%s)",
                        self._key,
                        self._lease_id,
                        failure,
                        exc,
                    )
        self._grant = None


class _DeletionsAhead:
    """A semaphore waiter's watch: counts the deletions of the name's keys created before ours."""

    __slots__ = ("need", "prefix", "revision")

    def __init__(self, prefix: bytes, revision: int, need: int) -> None:
        self.prefix = prefix
        self.revision = revision
        self.need = need

    def __call__(self, events: Sequence[Any]) -> bool:
        for event in events:
            if event.type != rpc.Event.EventType.DELETE:
                continue
            if not event.HasField("prev_kv"):
                return True  # cannot tell which key went: look again
            previous = event.prev_kv
            if is_member(self.prefix, previous.key) and previous.create_revision < self.revision:
                self.need -= 1
        return self.need <= 0


def _surely_not_granted(exc: BaseException | None) -> bool:
    """The grant failed in a way that proves no lease of ours exists (etcd refused it outright)."""
    cause = exc.__cause__ if exc is not None else None
    return cause is not None and code(cause) in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
