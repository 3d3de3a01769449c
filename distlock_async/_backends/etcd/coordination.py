"""Semaphores and elections on etcd: the views of the driver that the core obtains permits and terms
through, the read of an election's leader, and ``observe()``'s follower.

Both queue exactly as locks do (``contender.py``: one lease per obtain, the key
``<prefix><name>/<lease ID in hex>``, FIFO by create revision, the fencing token is the key's create
revision), under prefixes of their own derived from the locker's namespace by replacing its last
character (``queue.sibling_namespace``)::

    <namespace><key>/<lease>                  a lock           distlock/KEY/694d7a3c1f0e2b11
    <namespace minus last>.semaphore/<name>/<lease>   a permit  distlock.semaphore/NAME/694d...
    <namespace minus last>.election/<name>/<lease>    a candidate  distlock.election/NAME/694d...

(``_semaphore/`` and ``_election/`` when the namespace ends in ``.``.) No lock key can start with either
prefix, so a lock, a semaphore and an election of one name never meet, nested names included; an empty
namespace has no semaphores or elections.

- **Semaphore.** A permit's key holds its token. A caller holds while fewer than its ``limit`` keys of
  the name were created before its own (nested names' keys excluded); the obtain txn reads the name's
  first ``limit`` keys, so an uncontended permit costs what a lock costs. A waiter counts the keys
  ahead of it (rank) and watches the name's range for deletions with ``prev_kv``, firing once
  ``rank - limit + 1`` keys created before its own are gone (``limit=1`` watches the key just ahead,
  as a lock does).
- **Election.** Go's ``concurrency.Election``: the prefix is ``<election namespace><name>/``, a
  candidate's key holds its value, the leader is the key with the lowest create revision under the
  prefix (nested names excluded), a campaign queues like a lock (watching the key just ahead), proclaim
  is a put guarded by "create revision still mine", resign a delete guarded the same way. So
  ``etcdctl elect distlock.election/NAME PROPOSAL`` campaigns against this library and
  ``etcdctl elect -l distlock.election/NAME`` observes it.
- **Observe.** One watch per observation over the election's range (puts and deletes) from the revision
  of the read that answered; every event of a member key wakes it to read the leader again (a
  linearizable range), so what it reports is never older than what woke it. A watch that ends (its start
  revision compacted, a cancel by the server, the stream failed) is replaced after the next read, from
  that read's revision; without any event it still reads again every ``OBSERVE_FALLBACK`` seconds.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..._core._driver import DriverView
from ..._protocols import Leader
from .contender import EtcdContender, Held
from .queue import Rule, first_with_values, is_member, range_end
from .streams import Watch

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .driver import EtcdDriver

__all__ = ["ELECTION", "OBSERVE_FALLBACK", "SEMAPHORE", "EtcdFollower", "EtcdView", "read_leader"]

SEMAPHORE = "semaphore"
ELECTION = "election"

#: Seconds an observation sleeps at most without an event before it reads the leader again: the bound
#: on a change missed by a watch that silently stopped (a hung member that keep-alive pings had not
#: caught yet).
OBSERVE_FALLBACK = 30.0

#: Pauses between replacements of observation watches that keep ending at once, in seconds.
_FIRST_PAUSE = 0.02
_MAX_PAUSE = 1.0


class EtcdView(DriverView["EtcdDriver", Rule]):
    """The driver for the permits of one ``limit`` or the candidates with one value: the locker's driver
    whose space is another :class:`Rule`. Release, refresh and ``ttl()`` act on the handle, as for a lock."""

    __slots__ = ()

    def contender(self, key: str, token: str, ttl: float, holder: str) -> EtcdContender:
        return EtcdContender(self.driver, key, token, ttl, holder, self.space)

    async def release(self, key: str, token: str, handle: Held) -> bool:
        return await self.driver.release(key, token, handle)

    async def extend(self, key: str, token: str, handle: Held, ttl: float) -> bool:
        return await self.driver.extend(key, token, handle, ttl)

    async def remaining(self, key: str, token: str, handle: Held) -> float:
        return await self.driver.remaining(key, token, handle)


async def read_leader(driver: EtcdDriver, prefix: bytes) -> tuple[Leader | None, int]:
    """The leader of the election under ``prefix`` and the revision it was read at: one range, two if a
    nested name's key comes first."""
    kv, revision = await driver.first_member(prefix, first_with_values(prefix))
    if kv is None:
        return None, revision
    return Leader(kv.value.decode("utf-8", "replace"), int(kv.create_revision)), revision


class _MemberEvents:
    """Fires on any event of a key of the election itself (not of a name nested below it)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def __call__(self, events: Sequence[Any]) -> bool:
        return any(is_member(self.prefix, event.kv.key) for event in events)


class EtcdFollower:
    """One ``observe()``: a watch over the election's keys, and a read of the leader whenever it fires."""

    __slots__ = ("_closed", "_driver", "_pause", "_prefix", "_started", "_watch")

    def __init__(self, driver: EtcdDriver, prefix: bytes) -> None:
        self._driver = driver
        self._prefix = prefix
        self._watch: Watch | None = None
        self._started = False
        self._closed = False
        self._pause = 0.0

    async def next(self) -> Leader | None:
        if self._started:
            await self._wait()
        self._started = True
        if self._closed:
            await asyncio.sleep(0)
            return None  # the core ignores it
        # Read first, then watch from the revision read: no change can fall between the two, and a start
        # revision compacted meanwhile ends the watch, which the next call replaces after reading again.
        leader, revision = await read_leader(self._driver, self._prefix)
        if self._watch is None and not self._closed:
            prefix = self._prefix
            self._watch = self._driver.watches.watch(
                prefix, revision + 1, range_end=range_end(prefix), puts=True, wake=_MemberEvents(prefix)
            )
        return leader

    async def _wait(self) -> None:
        watch = self._watch
        if watch is None:
            await asyncio.sleep(0)
            return
        fired = await watch.fired.wait(OBSERVE_FALLBACK)
        # Cleared before the read that follows: an event after it fires again, one before it is in it.
        watch.fired.clear()
        if not watch.over:
            self._pause = 0.0
            return
        self._drop()
        if fired and not self._closed:
            # The watch ended (compaction, cancel, stream failure): read again and watch anew, pausing
            # if that keeps happening at once.
            if self._pause:
                await asyncio.sleep(self._pause)
            self._pause = min(max(2 * self._pause, _FIRST_PAUSE), _MAX_PAUSE)

    def _drop(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            self._driver.watches.cancel(watch)

    async def aclose(self) -> None:
        self._closed = True
        watch = self._watch
        self._drop()
        if watch is not None:
            watch.fired.set()  # a next() under way returns
        await asyncio.sleep(0)
