"""A lock's queue in etcd, laid out as Go's ``concurrency.Mutex``: key names, and the requests that
join the queue, read it, and leave it. Semaphores and elections queue the same way under prefixes of
their own (see :func:`sibling_namespace` and ``coordination.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from aetcd import rpc

__all__ = [
    "Rule",
    "ahead",
    "first_in_queue",
    "first_with_values",
    "holder_of",
    "is_member",
    "join_queue",
    "leave_queue",
    "permit_of",
    "permit_value",
    "predecessor",
    "proclaim",
    "queue",
    "range_end",
    "sibling_namespace",
    "value_of",
]


_HEX = frozenset(b"0123456789abcdef")


@dataclass(frozen=True)
class Rule:
    """Where a contender queues its key and what it may hold: locks, permits and candidacies differ only
    in this. ``namespace`` is the prefix of the names, ``value`` what the key holds (``None``: the
    obtain's token), ``limit`` how many of the first keys of a name hold at once."""

    namespace: str
    limit: int = 1
    value: str | None = None
    #: What the log records call it.
    what: str = "lock"
    #: Whether the key's value records ``limit`` (a permit's: see :func:`permit_value`).
    records_limit: bool = False


def sibling_namespace(namespace: str, kind: str) -> str | None:
    """The prefix of the semaphores (``kind="semaphore"``) or elections of a locker with ``namespace``.

    Its last character is replaced: ``distlock/`` gives ``distlock.semaphore/``. No key of a lock
    (``<namespace><key>/<lease>``, ``key`` anything) can start with it, since it parts from
    ``namespace`` before ``namespace`` ends, and the two kinds part from each other. An empty namespace
    has no such prefix: ``None``.
    """
    if not namespace:
        return None
    return f"{namespace[:-1]}{'_' if namespace[-1] == '.' else '.'}{kind}/"


def range_end(prefix: bytes) -> bytes:
    """The end of the key range of every key that starts with ``prefix`` (it ends in ``/``)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def is_member(prefix: bytes, key: bytes) -> bool:
    """A lock key of this name (``prefix`` + lease ID in hex), not one of a name nested below it."""
    suffix = key[len(prefix) :]
    return bool(suffix) and _HEX.issuperset(suffix)


def value_of(token: str, holder: str) -> bytes:
    """The value of our lock key: the token, a space, the holder label. Go's ``Mutex`` writes ``""``; only
    :func:`holder_of` reads it (ownership is the key's create revision and lease)."""
    return f"{token} {holder}".encode()


def holder_of(value: bytes) -> str | None:
    """The holder label in a lock key's value; ``None`` if it has none (Go's ``Mutex``, ``etcdctl lock``)."""
    _, space, holder = value.partition(b" ")
    return holder.decode("utf-8", "replace") if space and holder else None


def permit_value(token: str, limit: int, holder: str) -> bytes:
    """The value of a permit's key: the token, the caller's ``limit`` and its holder label, spaced. The
    limit lets a reader that knows none (``inspect_semaphore``) tell holders from waiters."""
    return f"{token} {limit} {holder}".encode()


def permit_of(value: bytes) -> tuple[int | None, str | None]:
    """The limit and holder label in a permit key's value; ``None`` for what it lacks (a value written by
    hand)."""
    _, _, rest = value.partition(b" ")
    limit, space, holder = rest.partition(b" ")
    if not limit.isdigit():
        return None, None
    return int(limit), holder.decode("utf-8", "replace") if space and holder else None


def _by_creation(prefix: bytes, *, keys_only: bool = True, **fields: object) -> rpc.RangeRequest:
    return rpc.RangeRequest(
        key=prefix,
        range_end=range_end(prefix),
        sort_target=rpc.RangeRequest.SortTarget.CREATE,
        keys_only=keys_only,
        **fields,
    )


def queue(prefix: bytes, *, keys_only: bool = True) -> rpc.RangeRequest:
    """The keys under ``prefix`` in queue order (names nested below it included: see :func:`is_member`);
    their values too unless ``keys_only``."""
    return _by_creation(prefix, keys_only=keys_only, sort_order=rpc.RangeRequest.SortOrder.ASCEND)


def first_in_queue(prefix: bytes, limit: int = 1) -> rpc.RangeRequest:
    """The first ``limit`` keys under ``prefix``: the holders', unless some belong to a nested name."""
    return _by_creation(prefix, sort_order=rpc.RangeRequest.SortOrder.ASCEND, limit=limit)


def first_with_values(prefix: bytes) -> rpc.RangeRequest:
    """The first key under ``prefix`` with its value: an election's leader, unless a nested name's."""
    return rpc.RangeRequest(
        key=prefix,
        range_end=range_end(prefix),
        sort_target=rpc.RangeRequest.SortTarget.CREATE,
        sort_order=rpc.RangeRequest.SortOrder.ASCEND,
        limit=1,
    )


def ahead(prefix: bytes, revision: int) -> rpc.RangeRequest:
    """Every key under ``prefix`` created before ``revision`` (nested names' included)."""
    return _by_creation(prefix, sort_order=rpc.RangeRequest.SortOrder.ASCEND, max_create_revision=revision - 1)


def predecessor(prefix: bytes, revision: int) -> rpc.RangeRequest:
    """The key queued just ahead of the one created at ``revision`` (or a nested name's)."""
    return _by_creation(
        prefix, sort_order=rpc.RangeRequest.SortOrder.DESCEND, max_create_revision=revision - 1, limit=1
    )


def join_queue(own: bytes, prefix: bytes, value: bytes, lease_id: int, limit: int = 1) -> rpc.TxnRequest:
    """Go's ``Mutex.tryAcquire``: queue ``own`` (with ``value``) unless it is queued already, and read the
    first key (the first ``limit`` keys, for a semaphore)."""
    first = rpc.RequestOp(request_range=first_in_queue(prefix, limit))
    return rpc.TxnRequest(
        compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=own, create_revision=0)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=own, value=value, lease=lease_id)), first],
        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=own)), first],
    )


def leave_queue(key: bytes, revision: int, lease_id: int) -> rpc.TxnRequest:
    """Delete ``key`` if it is still the one created at ``revision`` with the lease ``lease_id``."""
    return rpc.TxnRequest(
        compare=[
            rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=revision),
            rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.LEASE, key=key, lease=lease_id),
        ],
        success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))],
        failure=[],
    )


def proclaim(key: bytes, revision: int, lease_id: int, value: bytes) -> rpc.TxnRequest:
    """Go's ``Election.Proclaim``: put ``value`` in ``key`` (keeping its lease) if it is still the one
    created at ``revision``."""
    return rpc.TxnRequest(
        compare=[
            rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=revision),
        ],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease_id))],
        failure=[],
    )
