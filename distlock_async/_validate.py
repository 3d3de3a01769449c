"""Argument checks shared by options, lockers and backends: one wording for every message."""

from __future__ import annotations

import math
import re

MAX_KEY_BYTES = 1024
#: An election's value travels in every notification and observe: a name, an address, a small document.
MAX_VALUE_BYTES = 64 * 1024
#: The longest holder label, in UTF-8 bytes: a name to show, not a payload.
MAX_HOLDER_BYTES = 256
#: A year: long enough for any lease a person means to take, short enough that a unit mistake
#: (milliseconds passed as seconds) is caught instead of turned into a lock that never expires.
MAX_SECONDS = 365 * 24 * 3600.0


def check_key(key: object, argument: str = "key") -> str:
    """Return ``key`` if it is a valid lock key (or semaphore or election name: ``argument`` says which
    the message names), else raise ``TypeError``/``ValueError``."""
    if not isinstance(key, str):
        raise TypeError(f"{argument} must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError(f"{argument} must not be empty")
    _check_size(argument, key, MAX_KEY_BYTES)
    return key


def _check_size(argument: str, text: str, limit: int) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{argument} must be encodable as UTF-8: {exc.reason} at index {exc.start}") from None
    if size > limit:
        raise ValueError(f"{argument} must be at most {limit} bytes in UTF-8, got {size}")


def check_value(value: object) -> str:
    """An election value: a ``str`` (maybe empty) of at most :data:`MAX_VALUE_BYTES` in UTF-8."""
    check_str("value", value)
    assert isinstance(value, str)
    _check_size("value", value, MAX_VALUE_BYTES)
    return value


def check_limit(limit: object) -> int:
    """A semaphore's ``limit``: an ``int >= 1``; ``bool`` is refused."""
    return check_count("limit", limit, minimum=1)


def check_holder(value: object) -> str:
    """A holder label: a non-empty ``str`` of at most ``MAX_HOLDER_BYTES`` in UTF-8."""
    holder = check_text("holder", value)
    _check_size("holder", holder, MAX_HOLDER_BYTES)
    return holder


def check_str(name: str, value: object) -> str:
    """A ``str`` (maybe empty)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


def check_text(name: str, value: object) -> str:
    """A non-empty ``str``."""
    text = check_str(name, value)
    if not text:
        raise ValueError(f"{name} must not be empty")
    return text


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds (int or float), not {type(value).__name__}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """A finite duration in seconds: ``> 0`` (or ``>= 0`` with ``allow_zero``), at most a year."""
    seconds = _number(name, value)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS:.0f} seconds (a year), got {value!r}")
    return seconds


def check_timeout(value: object) -> float:
    """Seconds to keep trying to obtain: ``>= 0`` and at most a year, or ``math.inf`` (until obtained)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"timeout must be a number of seconds (int or float) or None, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"timeout must be >= 0 seconds, or math.inf to wait until obtained; got {value!r}")
    if value > MAX_SECONDS and not math.isinf(value):
        raise ValueError(
            f"timeout must be at most {MAX_SECONDS:.0f} seconds (a year), or math.inf to wait until obtained; "
            f"got {value!r}"
        )
    return float(value)


def check_count(name: str, value: object, *, minimum: int = 0) -> int:
    """An ``int >= minimum``; ``bool`` is refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def redact_url(url: str) -> str:
    """``url`` with its password, in the userinfo or the query, replaced by ``***``: fit for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc, tail = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL).groups()  # type: ignore[union-attr]
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}{colon and ':***'}@{host}{tail}"
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", f"{scheme}{sep}{rest}")
