from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from ._validate import MAX_HOLDER_BYTES, MAX_SECONDS, check_count, check_holder, check_seconds, check_str, check_text

__all__ = ["EtcdOptions", "Options"]


@dataclass(frozen=True)
class Options:
    """How locks are obtained and kept; validated on construction.

    Every per-call keyword of ``obtain()`` and ``lock()`` overrides the field of the same name; their
    ``timeout`` keyword (seconds of trying) replaces ``max_retries`` for that call.

    Attributes:
        ttl: seconds a lock lives unless refreshed; finite, ``> 0``, at most a year.
        max_retries: how many times ``obtain`` retries after its first attempt; an ``int >= 0``.
        retry_delay: seconds between retries; finite, ``>= 0``. ``obtain`` gives up about
            ``max_retries * retry_delay`` seconds after it started (1 s by default). A release by the
            holder wakes a waiter at once, for an extra attempt that does not use up the budget.
        refresh_interval: seconds between two refreshes of ``start_refresh()`` and ``lock()``;
            ``None`` means ``ttl / 3``; otherwise ``0 < refresh_interval < ttl``.
        holder: a label for whoever holds a lock of this locker, stored with the lock for
            [`Locker.inspect`][distlock_async.Locker.inspect] (as
            [`KeyState`][distlock_async.KeyState]`.holder`) and ``distlock status`` to show. A non-empty
            ``str`` of at most 256 bytes in UTF-8; ``None`` means ``"<hostname>:<pid>"`` of the process
            that obtains the lock, read at each obtain (so a forked child shows its own pid). Informative
            only: it may be shared by many lockers, and ownership stays the random
            [`Lock.token`][distlock_async.Lock.token].

    Raises:
        TypeError: a field has the wrong type (``bool`` is not a number here).
        ValueError: a field is out of range; the message names it.
    """

    ttl: float = 30.0
    max_retries: int = 10
    retry_delay: float = 0.1
    refresh_interval: float | None = None
    holder: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ttl", check_seconds("ttl", self.ttl))
        check_count("max_retries", self.max_retries)
        object.__setattr__(self, "retry_delay", check_seconds("retry_delay", self.retry_delay, allow_zero=True))
        if self.refresh_interval is not None:
            interval = check_seconds("refresh_interval", self.refresh_interval)
            if interval >= self.ttl:
                raise ValueError(f"refresh_interval must be < ttl ({self.ttl!r}), got {self.refresh_interval!r}")
            object.__setattr__(self, "refresh_interval", interval)
        if self.holder is not None:
            check_holder(self.holder)

    def interval_for(self, ttl: float) -> float:
        """The refresh interval of a lock obtained with ``ttl`` (which may be a per-call override)."""
        if self.refresh_interval is None:
            return ttl / 3
        if self.refresh_interval >= ttl:
            raise ValueError(
                f"ttl must be > refresh_interval ({self.refresh_interval!r}), got a lock that lives {ttl!r} s "
                "(its ttl, or EtcdOptions.session_ttl on etcd)"
            )
        return self.refresh_interval


def default_holder() -> str:
    """``"<hostname>:<pid>"`` of the calling process: the holder label of ``Options(holder=None)``.

    Read at each call, so that a forked child names its own pid; a hostname too long for the label is cut.
    """
    pid = f":{os.getpid()}"
    host = socket.gethostname().encode("utf-8", "replace")[: MAX_HOLDER_BYTES - len(pid)]
    return host.decode("utf-8", "ignore") + pid


@dataclass(frozen=True)
class EtcdOptions:
    """Settings of the etcd backend (Go: ``EtcdOptions``); validated on construction.

    The connection fields (``tls`` and below) apply to a locker that makes its own client
    (``EtcdLocker.connect``, ``from_url``); an ``etcds://user:password@...?ca_file=...`` URL sets them too.

    Attributes:
        dial_timeout: seconds to wait for a connection to etcd; finite, ``> 0``.
        session_ttl: the lease TTL of one lock in whole seconds (etcd's unit), an ``int >= 1``;
            ``None`` means ``ceil(ttl)`` of the lock.
        session_timeout: seconds allowed to create the lease of one ``obtain``; finite, ``> 0``.
        tls: connect over TLS, verifying the members' certificates.
        ca_file: PEM file of the certificate authorities that sign the members' certificates;
            ``None`` trusts the system's roots. Needs ``tls``.
        cert_file: PEM certificate (chain) this client presents, for members that require client
            certificates (``etcd --client-cert-auth``); needs ``key_file`` and ``tls``.
        key_file: PEM private key (not encrypted) of ``cert_file``.
        server_name: the name the members' certificates must be valid for; ``None`` means the host of
            the first endpoint, as written. Needs ``tls``.
        username: the etcd user to authenticate as; needs ``password``.
        password: that user's password. Left out of ``repr()``, and of every message and log record.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: a field is out of range, a file does not exist, or a field lacks the one it
            needs; the message names it.
    """

    dial_timeout: float = 5.0
    session_ttl: int | None = None
    session_timeout: float = 5.0
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dial_timeout", check_seconds("dial_timeout", self.dial_timeout))
        if self.session_ttl is not None:
            check_count("session_ttl", self.session_ttl)
            if not 1 <= self.session_ttl <= MAX_SECONDS:
                raise ValueError(f"session_ttl must be between 1 and {MAX_SECONDS:.0f}, got {self.session_ttl!r}")
        object.__setattr__(self, "session_timeout", check_seconds("session_timeout", self.session_timeout))
        if not isinstance(self.tls, bool):
            raise TypeError(f"tls must be a bool, not {type(self.tls).__name__}")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is None:
                continue
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"{name} must be a str or os.PathLike, not {type(path).__name__}")
            path = os.fspath(path)
            if not isinstance(path, str):
                raise TypeError(f"{name} must be a str path, not {type(path).__name__}")
            if not os.path.isfile(path):
                raise ValueError(f"{name} must be an existing file, got {path!r}")
            object.__setattr__(self, name, path)
            if not self.tls:
                raise ValueError(f"{name} needs tls=True (an etcds:// URL)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        if self.server_name is not None:
            check_text("server_name", self.server_name)
            if not self.tls:
                raise ValueError("server_name needs tls=True (an etcds:// URL)")
        if self.username is not None:
            check_text("username", self.username)
        if self.password is not None:
            check_str("password", self.password)
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together: give both or neither")


Options.__module__ = EtcdOptions.__module__ = "distlock_async"
