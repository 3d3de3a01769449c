from __future__ import annotations

from urllib.parse import urlsplit

from ._backends.memory import MemoryLocker
from ._options import EtcdOptions, Options
from ._protocols import Locker
from ._validate import redact_url

__all__ = ["from_url"]


def from_url(url: str, options: Options | None = None, *, etcd_options: EtcdOptions | None = None) -> Locker:
    """Create a locker, and the client it owns, from a URL.

    ``memory://`` gives a [`MemoryLocker`][distlock_async.MemoryLocker] with a store of its own; ``redis://``,
    ``rediss://`` and ``unix://`` a [`RedisLocker`][distlock_async.RedisLocker] over a client it owns (see
    [`RedisLocker.from_url`][distlock_async.RedisLocker.from_url]); ``etcd://host:port[,host:port...]``
    an [`EtcdLocker`][distlock_async.EtcdLocker] over a client it owns, which connects on first use and fails over
    between the endpoints; ``etcds://`` the same over TLS, ``etcd://user:password@...`` authenticated (see
    [`EtcdLocker.from_url`][distlock_async.EtcdLocker.from_url]).

    Args:
        url: where the locks live.
        options: defaults for every lock of the locker.
        etcd_options: settings of an ``etcd://`` locker.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: the URL is malformed, or its scheme is unknown.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if etcd_options is not None and not isinstance(etcd_options, EtcdOptions):
        raise TypeError(f"etcd_options must be distlock_async.EtcdOptions or None, not {type(etcd_options).__name__}")
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(f"url must look like 'scheme://...', got {redact_url(url)!r}")
    scheme = scheme.lower()
    if scheme == "memory":
        parts = urlsplit(url)
        if parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValueError(f"url 'memory://' takes nothing after the scheme, got {redact_url(url)!r}")
        if etcd_options is not None:
            raise ValueError("etcd_options only apply to etcd:// and etcds:// URLs")
        return MemoryLocker(options)
    if scheme in ("redis", "rediss", "unix"):
        if etcd_options is not None:
            raise ValueError("etcd_options only apply to etcd:// and etcds:// URLs")
        from ._backends.redis import RedisLocker  # imports redis-py: only when a Redis URL asks for it

        return RedisLocker.from_url(url, options)
    if scheme in ("etcd", "etcds"):
        from ._backends.etcd import EtcdLocker  # imports aetcd and grpc: only when an etcd URL asks for it

        return EtcdLocker.from_url(url, options, etcd_options)
    raise ValueError(
        f"url scheme {scheme!r} is not supported; use redis://, rediss://, unix://, etcd://, etcds:// or memory://"
    )
