"""The Redis backend, one job per module.

- ``locker``: ``RedisLocker``, the public class;
- ``config``: its settings and the client a URL describes, checked once;
- ``scripts``: the keys of a lock, a semaphore, an election, and the Lua scripts that change them;
- ``driver``: the driver contract (with its views for permits and candidates, and election followers),
  and which server runs a call (Cluster redirects);
- ``contender``: one ``obtain``;
- ``wire``: the pipelined lock connection to one server;
- ``subscriber``: wake on release (and observers of elections) over pub/sub;
- ``errors``: the one boundary where redis-py's errors become ``BackendError``.

redis-py's private names are touched only in ``.._compat_redis``.
"""

from .locker import RedisLocker

__all__ = ["RedisLocker"]
