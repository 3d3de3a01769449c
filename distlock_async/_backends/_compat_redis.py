"""The only code that touches redis-py's private names; checked when imported.

The lock connection (``redis/wire.py``) needs three things redis-py has no public way to do: write
bytes without awaiting the drain (an undo queued behind a command that timed out), close a connection
without awaiting (a paused server must still find the bytes written before it), and see that the
server hung up on an idle connection without reading from it. A Cluster client also says, privately,
that its slot table has to be loaded before the first command.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection

from ._compat import require_names

__all__ = ["close_now", "initialization_due", "peer_closed", "write_now"]

require_names(
    "redis",
    [
        (AbstractConnection, ("_reader", "_writer", "_close")),
        (RedisCluster, ("_initialize",)),
    ],
)


def write_now(conn: Any, *command: Any) -> None:
    """Put ``command`` in the connection's write buffer at once, without waiting for it to drain."""
    conn._writer.writelines(conn.pack_command(*command))


def close_now(conn: Any) -> None:
    """Close the connection's socket without awaiting anything (what redis-py does on a fatal error)."""
    conn._close()


def peer_closed(conn: Any) -> bool:
    """Whether the server closed this connection, seen without reading from it."""
    reader = getattr(conn, "_reader", None)
    return reader is not None and reader.at_eof()


def initialization_due(cluster: Any) -> bool:
    """Whether a ``RedisCluster`` has not loaded its slot table yet (or was told to load it again)."""
    return bool(cluster._initialize)
