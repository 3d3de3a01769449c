"""The ``distlock`` command line (also ``python -m distlock_async``).

Exit codes: 0 success; 2 bad usage (argparse); 3 a lock was not obtained; 4 the backend is unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import anyio

from ._errors import BackendError, NotObtainedError

if sys.version_info < (3, 11):  # pragma: no cover - anyio requires the backport there
    from exceptiongroup import BaseExceptionGroup
from ._options import Options
from ._url import from_url

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NOT_OBTAINED = 3
EXIT_BACKEND = 4


@dataclass
class _Stats:
    acquisitions: int = 0
    waits: list[float] = field(default_factory=list)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distlock",
        description="Distributed locks for asyncio over Redis and etcd.",
        epilog="Exit codes: 0 success, 2 bad usage, 3 lock not obtained, 4 backend unavailable.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("DISTLOCK_URL", "memory://"),
        help="where the locks live (default: $DISTLOCK_URL, else memory://)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="show several workers contending for one lock")
    demo.add_argument("--workers", type=_positive_int, default=4, help="contending workers (default 4)")
    demo.add_argument("--rounds", type=_positive_int, default=3, help="sections per worker (default 3)")
    demo.add_argument("--hold", type=float, default=0.05, help="seconds each section holds the lock (default 0.05)")
    demo.add_argument("--key", default="demo", help="the key they contend for (default 'demo')")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


async def _demo(url: str, workers: int, rounds: int, hold: float, key: str, out: TextIO) -> int:
    options = Options(ttl=max(5.0, 4 * hold), max_retries=workers * rounds * 20, retry_delay=max(hold, 0.01))
    locker = from_url(url, options)
    stats = {f"w{n}": _Stats() for n in range(1, workers + 1)}
    loop = asyncio.get_running_loop()
    start = loop.time()
    out.write(f"{workers} workers contend for lock {key!r} on {url}, {rounds} sections each\n\n")
    out.write(f"{'time':>8}  {'worker':<6}  {'event':<9}  {'fencing':>7}  {'waited':>9}\n")

    def line(worker: str, event: str, fencing: str = "", waited: str = "") -> None:
        out.write(f"{loop.time() - start:8.3f}  {worker:<6}  {event:<9}  {fencing:>7}  {waited:>9}\n")

    async def worker(name: str) -> None:
        for _ in range(rounds):
            asked = loop.time()
            async with locker.lock(key) as lock:
                waited = loop.time() - asked
                stats[name].acquisitions += 1
                stats[name].waits.append(waited)
                line(name, "acquired", str(lock.fencing_token), f"{waited * 1000:7.1f}ms")
                await anyio.sleep(hold)
                line(name, "released")
            await anyio.sleep(hold / 2)  # work outside the lock, so that the others get their turn

    try:
        async with locker, anyio.create_task_group() as tg:
            for name in stats:
                tg.start_soon(worker, name)
    except BaseExceptionGroup as group:
        # Every worker fails the same way when the backend is down: report the first failure.
        raise _first(group) from None
    out.write(f"\n{'worker':<6}  {'sections':>8}  {'mean wait':>10}  {'max wait':>10}\n")
    for name, s in stats.items():
        mean = sum(s.waits) / len(s.waits)
        out.write(f"{name:<6}  {s.acquisitions:>8}  {mean * 1000:8.1f}ms  {max(s.waits) * 1000:8.1f}ms\n")
    out.write("\nNo two sections overlapped; fencing tokens rose with every hand-off.\n")
    return EXIT_OK


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return asyncio.run(_demo(args.url, args.workers, args.rounds, args.hold, args.key, sys.stdout))
    except ValueError as exc:
        print(f"distlock: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotObtainedError as exc:
        print(f"distlock: {exc}", file=sys.stderr)
        return EXIT_NOT_OBTAINED
    except BackendError as exc:
        print(f"distlock: backend unavailable: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover - argparse requires one
