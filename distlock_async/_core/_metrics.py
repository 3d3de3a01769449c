"""Metrics through OpenTelemetry, recorded here and nowhere else (SPEC, "Metrics").

The core calls :func:`obtain_ended` once per obtain and :func:`hold_ended` once per held lock, for every
backend; the instruments are those of ``docs/howto/metrics.md``:

- ``distlock.obtain.duration`` (histogram, s): ``distlock.backend``, ``distlock.kind``, ``distlock.outcome``;
- ``distlock.hold.duration`` (histogram, s), from obtained to released or lost: ``distlock.backend``,
  ``distlock.kind``;
- ``distlock.lost`` (counter): ``distlock.backend``, ``distlock.kind``.

Keys are never attributes: their number is unbounded.

OpenTelemetry is an optional dependency, and never imported here: the library records once the process
has imported ``opentelemetry.metrics``, which setting up a meter provider does (an SDK, the
``opentelemetry-instrument`` launcher). Until then, and in a process that never does, recording costs a
dictionary look-up. The API may well be installed without being used (web frameworks depend on it),
and importing it would cost every ``import distlock_async``.

The instruments come from the global meter provider, and are made again when it changes: a provider set
after the first lock (or a test's own) gets the measurements from then on. Recording never fails a lock
operation; a broken setup is logged once.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram

__all__ = [
    "ACQUIRED",
    "CANCELLED",
    "ERROR",
    "LEADER",
    "LOCK",
    "NOT_OBTAINED",
    "PERMIT",
    "hold_ended",
    "obtain_ended",
]

logger = logging.getLogger("distlock_async")

#: ``distlock.kind``: a lock, a semaphore's permit, an election's leadership
LOCK, PERMIT, LEADER = "lock", "permit", "leader"
#: ``distlock.outcome``
ACQUIRED, NOT_OBTAINED, ERROR, CANCELLED = "acquired", "not_obtained", "error", "cancelled"

#: Seconds. An uncontended obtain takes well under a millisecond in memory and one round trip on a server;
#: a contended one, up to the holder's whole hold.
OBTAIN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Seconds. Request handlers hold locks for milliseconds, jobs and leaders for minutes to hours.
HOLD_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)


class _Instruments:
    __slots__ = ("hold", "lost", "obtain")

    def __init__(self, meter: Any) -> None:
        self.obtain: Histogram = meter.create_histogram(
            "distlock.obtain.duration",
            unit="s",
            description="Time an obtain took, from the call to its outcome (acquired, not_obtained, error, cancelled)",
            explicit_bucket_boundaries_advisory=OBTAIN_BUCKETS,
        )
        self.hold: Histogram = meter.create_histogram(
            "distlock.hold.duration",
            unit="s",
            description="Time a lock was held, from obtained to released or lost",
            explicit_bucket_boundaries_advisory=HOLD_BUCKETS,
        )
        self.lost: Counter = meter.create_counter(
            "distlock.lost",
            unit="{lock}",
            description="Locks lost while held: found expired or taken over, or given up by lock()",
        )


#: The meter provider the instruments were made from, and the instruments (``None``: it cannot make them).
_made: tuple[object, _Instruments | None] | None = None


def _instruments() -> _Instruments | None:
    global _made
    api = sys.modules.get("opentelemetry.metrics")
    if api is None:
        return None
    provider = api.get_meter_provider()
    made = _made
    if made is not None and made[0] is provider:
        return made[1]
    instruments = None
    try:
        instruments = _Instruments(provider.get_meter("distlock_async", _version()))
    except Exception:
        logger.warning("distlock_async records no metrics: its instruments could not be made", exc_info=True)
    _made = (provider, instruments)
    return instruments


def _version() -> str | None:
    package = sys.modules.get("distlock_async")
    return getattr(package, "__version__", None)


def obtain_ended(backend: str, kind: str, outcome: str, seconds: float) -> None:
    instruments = _instruments()
    if instruments is None:
        return
    attributes = {"distlock.backend": backend, "distlock.kind": kind, "distlock.outcome": outcome}
    try:
        instruments.obtain.record(seconds, attributes)
    except Exception:
        logger.debug("recording distlock.obtain.duration failed", exc_info=True)


def hold_ended(backend: str, kind: str, seconds: float, *, lost: bool) -> None:
    instruments = _instruments()
    if instruments is None:
        return
    attributes = {"distlock.backend": backend, "distlock.kind": kind}
    try:
        instruments.hold.record(seconds, attributes)
        if lost:
            instruments.lost.add(1, attributes)
    except Exception:
        logger.debug("recording distlock.hold.duration or distlock.lost failed", exc_info=True)
