"""A Redis locker's settings, checked once: the client a URL describes, and the locker's own options."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio
import redis.exceptions

from ..._validate import check_count, check_seconds, check_text, redact_url

__all__ = ["RedisConfig", "client_from_url"]


@dataclass(frozen=True)
class RedisConfig:
    """What a ``RedisLocker`` is told besides its client and options; ``TypeError``/``ValueError`` naming
    the argument when it is wrong."""

    namespace: str = "distlock"
    replicas: int = 0
    replica_timeout: float = 0.5

    def __post_init__(self) -> None:
        namespace = check_text("namespace", self.namespace)
        if "{" in namespace or "}" in namespace:
            raise ValueError(f"namespace must not contain braces (they pick the Cluster hash slot), got {namespace!r}")
        check_count("replicas", self.replicas)
        object.__setattr__(self, "replica_timeout", check_seconds("replica_timeout", self.replica_timeout))


#: Query options of a Redis URL that are durations: redis-py takes any float, we take what makes sense.
_URL_SECONDS = ("socket_timeout", "socket_connect_timeout")


#: Query options of a Redis URL that name files, which must exist.
_URL_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def client_from_url(url: str) -> Any:
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
        unknown = re.search(r"unexpected keyword argument '([^']*)'", str(exc))
        raise bad(f"unknown option {unknown[1]!r}" if unknown else str(exc)) from None
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
