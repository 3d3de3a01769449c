"""A lock's queue in etcd, laid out as Go's ``concurrency.Mutex``: key names, and the requests that
join the queue, read it, and leave it."""

from __future__ import annotations

from aetcd import rpc

__all__ = [
    "first_in_queue",
    "holder_of",
    "is_member",
    "join_queue",
    "leave_queue",
    "predecessor",
    "queue",
    "range_end",
    "value_of",
]


_HEX = frozenset(b"0123456789abcdef")


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


def first_in_queue(prefix: bytes) -> rpc.RangeRequest:
    """The first key under ``prefix``: the holder's, unless it belongs to a nested name."""
    return _by_creation(prefix, sort_order=rpc.RangeRequest.SortOrder.ASCEND, limit=1)


def predecessor(prefix: bytes, revision: int) -> rpc.RangeRequest:
    """The key queued just ahead of the one created at ``revision`` (or a nested name's)."""
    return _by_creation(
        prefix, sort_order=rpc.RangeRequest.SortOrder.DESCEND, max_create_revision=revision - 1, limit=1
    )


def join_queue(own: bytes, prefix: bytes, value: bytes, lease_id: int) -> rpc.TxnRequest:
    """Go's ``Mutex.tryAcquire``: queue ``own`` (with ``value``) unless it is queued already, and read the
    first key."""
    first = rpc.RequestOp(request_range=first_in_queue(prefix))
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
