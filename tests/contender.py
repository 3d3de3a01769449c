"""A worker process with a locker of its own that waits for one lock: the multi-process tests' contender.

``python -m tests.contender TARGET KEY NAME --log FILE`` makes a locker (``TARGET`` as in ``tests/targets.py``),
obtains ``KEY`` with an unbounded budget and, once it holds the lock, appends one JSON line
``{"name", "fencing_token"}`` to ``FILE`` (under ``flock``: several workers share it), holds it
``--hold`` seconds and releases it. It prints ``queued`` on stdout, once, as soon as its first attempt
found the lock taken -- so a test can start the next worker only once this one is in the queue, and
assert the order the lock went round in, not timings. ``--give-up-after S`` cancels the obtain after
``S`` seconds instead (exit code 3). ``--limit N`` takes one of ``N`` permits of the semaphore ``KEY``
instead of the lock; ``--campaign VALUE`` campaigns in the election ``KEY`` with ``VALUE`` instead, holds
the leadership ``--hold`` seconds and resigns. Either way it prints ``holding`` once it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import logging
import math
import sys

import anyio

from distlock_async import Lock, Options

from .targets import make_locker


class _Queued(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.told = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.told and "is held by another owner; waiting" in record.getMessage():
            self.told = True
            print("queued", flush=True)


def _record(path: str, name: str, fencing_token: int) -> None:
    with open(path, "a") as log:
        fcntl.flock(log, fcntl.LOCK_EX)
        log.write(json.dumps({"name": name, "fencing_token": fencing_token}) + "\n")


async def _main(args: argparse.Namespace) -> int:
    handler = _Queued()
    logger = logging.getLogger("distlock_async")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    lock: Lock | None = None
    locker, clients = make_locker(
        args.target, Options(ttl=args.ttl, max_retries=1_000_000, retry_delay=args.retry_delay)
    )
    try:
        async with locker:
            if args.campaign is not None:
                with anyio.move_on_after(args.give_up_after):
                    async with locker.election(args.key).campaign(args.campaign) as term:
                        _record(args.log, args.name, term.fencing_token)
                        print("holding", flush=True)
                        await asyncio.sleep(args.hold)
                    return 0
                return 3
            with anyio.move_on_after(args.give_up_after):
                if args.limit is None:
                    lock = await locker.obtain(args.key)
                else:
                    lock = await locker.obtain_permit(args.key, args.limit)
            if lock is None:
                return 3
            _record(args.log, args.name, lock.fencing_token)  # while holding the lock, on purpose
            print("holding", flush=True)
            await asyncio.sleep(args.hold)
            await lock.release()
    finally:
        for client in clients:
            await client.aclose()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.contender", description=__doc__)
    parser.add_argument("target")
    parser.add_argument("key")
    parser.add_argument("name")
    parser.add_argument("--log", required=True)
    parser.add_argument("--hold", type=float, default=0.05)
    parser.add_argument("--ttl", type=float, default=10.0)
    parser.add_argument("--retry-delay", type=float, default=0.05)
    parser.add_argument("--give-up-after", type=float, default=math.inf)
    parser.add_argument("--limit", type=int, default=None, help="a permit of a semaphore of this many")
    parser.add_argument("--campaign", default=None, metavar="VALUE", help="campaign in an election with VALUE")
    args = parser.parse_args()
    if math.isinf(args.give_up_after):
        args.give_up_after = None
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
