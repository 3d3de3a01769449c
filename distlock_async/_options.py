from __future__ import annotations

from dataclasses import dataclass

from ._validate import MAX_SECONDS, check_count, check_seconds

__all__ = ["EtcdOptions", "Options"]


@dataclass(frozen=True)
class Options:
    """How locks are obtained and kept; validated on construction.

    Every per-call keyword of ``obtain()`` and ``lock()`` overrides the field of the same name.

    Attributes:
        ttl: seconds a lock lives unless refreshed; finite, ``> 0``, at most a year.
        max_retries: how many times ``obtain`` retries after its first attempt; an ``int >= 0``.
        retry_delay: seconds between retries; finite, ``>= 0``. ``obtain`` gives up about
            ``max_retries * retry_delay`` seconds after it started (1 s by default). A release by the
            holder wakes a waiter at once, for an extra attempt that does not use up the budget.
        refresh_interval: seconds between two refreshes of ``start_refresh()`` and ``lock()``;
            ``None`` means ``ttl / 3``; otherwise ``0 < refresh_interval < ttl``.

    Raises:
        TypeError: a field has the wrong type (``bool`` is not a number here).
        ValueError: a field is out of range; the message names it.
    """

    ttl: float = 30.0
    max_retries: int = 10
    retry_delay: float = 0.1
    refresh_interval: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ttl", check_seconds("ttl", self.ttl))
        check_count("max_retries", self.max_retries)
        object.__setattr__(self, "retry_delay", check_seconds("retry_delay", self.retry_delay, allow_zero=True))
        if self.refresh_interval is not None:
            interval = check_seconds("refresh_interval", self.refresh_interval)
            if interval >= self.ttl:
                raise ValueError(f"refresh_interval must be < ttl ({self.ttl!r}), got {self.refresh_interval!r}")
            object.__setattr__(self, "refresh_interval", interval)

    def interval_for(self, ttl: float) -> float:
        """The refresh interval of a lock obtained with ``ttl`` (which may be a per-call override)."""
        if self.refresh_interval is None:
            return ttl / 3
        if self.refresh_interval >= ttl:
            raise ValueError(f"ttl must be > refresh_interval ({self.refresh_interval!r}), got {ttl!r}")
        return self.refresh_interval


@dataclass(frozen=True)
class EtcdOptions:
    """Settings of the etcd backend (Go: ``EtcdOptions``); validated on construction.

    Attributes:
        dial_timeout: seconds to wait for a connection to etcd; finite, ``> 0``.
        session_ttl: the lease TTL of one lock in whole seconds (etcd's unit), an ``int >= 1``;
            ``None`` means ``ceil(ttl)`` of the lock.
        session_timeout: seconds allowed to create the lease of one ``obtain``; finite, ``> 0``.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: a field is out of range; the message names it.
    """

    dial_timeout: float = 5.0
    session_ttl: int | None = None
    session_timeout: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dial_timeout", check_seconds("dial_timeout", self.dial_timeout))
        if self.session_ttl is not None:
            check_count("session_ttl", self.session_ttl)
            if not 1 <= self.session_ttl <= MAX_SECONDS:
                raise ValueError(f"session_ttl must be between 1 and {MAX_SECONDS:.0f}, got {self.session_ttl!r}")
        object.__setattr__(self, "session_timeout", check_seconds("session_timeout", self.session_timeout))


Options.__module__ = EtcdOptions.__module__ = "distlock_async"
