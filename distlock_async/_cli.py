"""The ``distlock`` command line (also ``python -m distlock_async``).

The exit codes are in ``EXIT_CODES`` below, shown by ``--help`` and documented in docs/reference/cli.md;
the ones that existed before ``run`` and ``status`` (2, 3, 4) keep their meaning.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

import anyio

from ._errors import BackendError, LockLostError, LockNotHeldError, NotObtainedError
from ._protocols import Leader, Lock, Locker

if sys.version_info < (3, 11):  # pragma: no cover - anyio requires the backport there
    from exceptiongroup import BaseExceptionGroup
from . import __version__
from ._options import Options
from ._url import from_url
from ._validate import redact_url

T = TypeVar("T")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NOT_OBTAINED = 3
EXIT_BACKEND = 4
EXIT_LOST = 5
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
#: A command killed by signal N exits with 128 + N, as in a shell.
EXIT_SIGNAL_BASE = 128

STATUS_EXIT_CODES = """\
exit codes:
  0      the status was shown, held or free
  2      bad usage: unknown option, bad URL, memory:// (its locks live inside one process),
         a backend that cannot show a lock's status or has no semaphores or elections, a bad name
  4      the backend is unavailable
"""

DEMO_EXIT_CODES = """\
exit codes:
  0      the demo ran
  2      bad usage: unknown option, bad URL, a bad number
  4      the backend is unavailable
"""

EXIT_CODES = """\
exit codes:
  0      success (run, elect: the command exited with 0)
  2      bad usage: unknown option, bad URL, memory:// for a command that needs a server,
         a backend that cannot show a lock's status
  3      the lock or permit was not obtained: someone else holds it (run --wait)
  4      the backend is unavailable
  5      run, elect: the lock, permit or leadership was lost while the command ran, and the
         command was stopped
  126    run, elect: the command could not be executed
  127    run, elect: the command was not found
  128+N  run, elect: the command was killed by signal N (or distlock was, before it started);
         leader --watch: ended by signal N
  other  run, elect: the command's own exit code
"""

LEADER_EXIT_CODES = """\
exit codes:
  0      the leader was shown (or nobody leads)
  2      bad usage: unknown option, bad URL, memory://
  4      the backend is unavailable
  128+N  --watch: ended by signal N (Ctrl-C: 130)
"""

#: Signals that ``distlock run`` passes on to its command instead of dying of them.
FORWARDED = (signal.SIGINT, signal.SIGTERM)


class _UsageError(Exception):
    """A mistake of the caller that argparse cannot see; exits with ``EXIT_USAGE``."""


@dataclass
class _Stats:
    acquisitions: int = 0
    waits: list[float] = field(default_factory=list)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distlock",
        description="Distributed locks for asyncio over Redis and etcd.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"distlock (distlock-async) {__version__}")
    parser.add_argument(
        "--url",
        default=os.environ.get("DISTLOCK_URL", "memory://"),
        help="where the locks live (default: $DISTLOCK_URL, else memory://)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show the library's warnings (-v) and debug messages (-vv) on stderr",
    )
    # ``--url`` is accepted after the command name too; there it overrides the one before it.
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--url", default=argparse.SUPPRESS, help="where the locks live (default: $DISTLOCK_URL, else memory://)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, **settings: Any) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, parents=[url], formatter_class=argparse.RawDescriptionHelpFormatter, **settings
        )

    run = command(
        "run",
        help="run a command while holding a lock",
        usage="distlock run [options] KEY -- CMD [ARG ...]",
        description="Obtain KEY, run CMD while refreshing the lock, release the lock when CMD exits.\n"
        "SIGINT and SIGTERM are passed on to CMD. If the lock is lost, CMD gets SIGTERM, then\n"
        "SIGKILL after --grace seconds, and distlock exits with 5. CMD finds its lock's key and\n"
        "fencing token in $DISTLOCK_KEY and $DISTLOCK_FENCING_TOKEN.",
        epilog=EXIT_CODES,
    )
    _add_supervision(run, ttl="lock TTL in seconds")
    run.add_argument(
        "--refresh",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds between refreshes, below --ttl (default: a third of --ttl)",
    )
    run.add_argument(
        "--wait",
        type=_wait_seconds,
        default=0.0,
        metavar="SECONDS",
        help="how long to wait for a lock held by someone else before exiting with 3 (default 0: try once; "
        "inf: until obtained)",
    )
    run.add_argument(
        "--retry-delay",
        type=_positive_seconds,
        default=0.1,
        metavar="SECONDS",
        help="seconds between attempts while waiting; a release wakes a waiter at once anyway (default 0.1)",
    )
    run.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="hold one of N permits of the semaphore KEY instead of the lock KEY: at most N commands run at once",
    )
    _add_target(run, "key", "KEY", "the lock's key (with --limit: the semaphore's name)")

    elect = command(
        "elect",
        help="run a command while this process is the leader of an election",
        usage="distlock elect [options] NAME -- CMD [ARG ...]",
        description="Campaign in the election NAME, waiting (first come, first served) until elected; run CMD\n"
        "while leading, resign when it exits. SIGINT and SIGTERM end the wait, or are passed on to CMD.\n"
        "If the leadership is lost, CMD gets SIGTERM, then SIGKILL after --grace seconds, and distlock\n"
        "exits with 5. CMD finds the election's name and its term's fencing token in $DISTLOCK_KEY and\n"
        "$DISTLOCK_FENCING_TOKEN.",
        epilog=EXIT_CODES,
    )
    elect.add_argument(
        "--value",
        default=None,
        help="what observers see as the leader (default: HOSTNAME:PID of this distlock)",
    )
    _add_supervision(elect, ttl="seconds the leadership outlives a dead leader")
    _add_target(elect, "name", "NAME", "the election's name")

    leader = command(
        "leader",
        help="show the leader of an election, or follow it with --watch",
        epilog=LEADER_EXIT_CODES,
    )
    leader.add_argument("--json", action="store_true", help="print JSON objects, one a line")
    leader.add_argument("--watch", action="store_true", help="print the leader, then each change, until a signal")
    leader.add_argument("name", metavar="NAME", help="the election's name")

    status = command(
        "status",
        help="show whether a lock is held, by whom, its remaining TTL and fencing counter; or a semaphore's "
        "permits, or an election's leader",
        usage="distlock status [options] (KEY | --semaphore NAME | --election NAME)",
        epilog=STATUS_EXIT_CODES,
    )
    status.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    which = status.add_mutually_exclusive_group()
    which.add_argument("key", metavar="KEY", nargs="?", help="the lock's key")
    which.add_argument(
        "--semaphore", metavar="NAME", help="show the semaphore NAME instead: its permits held, by whom, its waiters"
    )
    which.add_argument("--election", metavar="NAME", help="show the leader of the election NAME instead")

    demo = command(
        "demo",
        help="show several workers contending for one lock",
        epilog=DEMO_EXIT_CODES,
    )
    demo.add_argument("--workers", type=_positive_int, default=4, help="contending workers (default 4)")
    demo.add_argument("--rounds", type=_positive_int, default=3, help="sections per worker (default 3)")
    demo.add_argument(
        "--hold",
        type=_positive_seconds,
        default=0.2,
        metavar="SECONDS",
        help="seconds each section holds the lock (default 0.2, a pace a person can follow)",
    )
    demo.add_argument("--key", default="demo", help="the key they contend for (default 'demo')")
    demo.add_argument(
        "--plain",
        action="store_true",
        help="print the event log even on a terminal (it is the output whenever stdout is not a terminal)",
    )
    return parser


def _add_supervision(command: argparse.ArgumentParser, *, ttl: str) -> None:
    """The options of a command that runs CMD while holding something: its TTL and the loss's grace."""
    command.add_argument("--ttl", type=_positive_seconds, default=30.0, metavar="SECONDS", help=f"{ttl} (default 30)")
    command.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="after a loss: seconds between SIGTERM and SIGKILL to the command (default 10)",
    )


def _add_target(command: argparse.ArgumentParser, dest: str, metavar: str, help: str) -> None:
    """What such a command holds, and CMD after ``--``."""
    command.add_argument(dest, metavar=metavar, help=help)
    command.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command and its arguments")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _number(text: str, *, zero: bool) -> float:
    bound = ">= 0" if zero else "> 0"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds {bound}, got {text!r}")
    return value


def _seconds(text: str) -> float:
    return _number(text, zero=True)


def _positive_seconds(text: str) -> float:
    return _number(text, zero=False)


def _wait_seconds(text: str) -> float:
    if text.strip().lower() in ("inf", "infinity"):
        return math.inf  # obtain()'s timeout=math.inf: until obtained, or until a signal ends the wait
    try:
        return _number(text, zero=True)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, or inf, got {text!r}") from None


def _refuse_memory(url: str, command: str) -> None:
    if url.partition("://")[0].lower() == "memory":
        raise _UsageError(
            f"'distlock {command}' needs a lock server: memory:// locks live inside one process, so no other "
            "process could see or respect them. Pass --url redis://HOST:PORT (or set DISTLOCK_URL)."
        )


# --- status ---------------------------------------------------------------------------------------------


async def _inspected(url: str, inspect: Callable[[Locker], Awaitable[T]], missing: str) -> T:
    """What ``inspect`` reads with a locker of ``url``; a usage error naming ``missing`` if the backend
    cannot read it."""
    _refuse_memory(url, "status")
    async with from_url(url) as locker:
        try:
            return await inspect(locker)
        except NotImplementedError:
            raise _UsageError(f"the backend of {redact_url(url)} {missing}") from None


def _counter(fencing_counter: int | None) -> str:
    return "no fencing counter kept" if fencing_counter is None else f"fencing counter {fencing_counter}"


async def _status(url: str, key: str, as_json: bool, out: TextIO) -> int:
    state = await _inspected(url, lambda locker: locker.inspect(key), "cannot show a lock's status yet")
    if as_json:
        out.write(json.dumps({"key": key, **dataclasses.asdict(state)}) + "\n")
        return EXIT_OK
    counter = _counter(state.fencing_counter)
    # A holder that wrote no label (etcdctl lock, say) is held "by" nobody we can name.
    held = "is held" if state.holder is None else f"is held by {state.holder!r}"
    if not state.held:
        out.write(f"{key!r} is free; {counter}\n")
    elif state.ttl is None:
        out.write(f"{key!r} {held}, with no expiry; {counter}\n")
    else:
        out.write(f"{key!r} {held}, {state.ttl:.3f} s left; {counter}\n")
    return EXIT_OK


async def _status_of(args: argparse.Namespace, out: TextIO) -> int:
    """``distlock status``: of a lock, a semaphore (``--semaphore``) or an election (``--election``)."""
    if args.semaphore is not None:
        return await _status_semaphore(args.url, args.semaphore, args.json, out)
    if args.election is not None:
        return await _status_election(args.url, args.election, args.json, out)
    if args.key is None:
        raise _UsageError("status needs what to show: KEY (a lock), --semaphore NAME or --election NAME")
    return await _status(args.url, args.key, args.json, out)


async def _status_semaphore(url: str, name: str, as_json: bool, out: TextIO) -> int:
    state = await _inspected(url, lambda locker: locker.inspect_semaphore(name), "has no semaphores")
    if as_json:
        out.write(json.dumps({"name": name, **dataclasses.asdict(state)}) + "\n")
        return EXIT_OK
    permits = "1 permit" if state.held == 1 else f"{state.held} permits"
    by = ""
    if state.holders:
        by = " (by " + ", ".join("one without a label" if h is None else repr(h) for h in state.holders) + ")"
    counter = _counter(state.fencing_counter)
    out.write(f"{name!r}: {permits} held{by}, {state.waiting} waiting; {counter}\n")
    return EXIT_OK


async def _status_election(url: str, name: str, as_json: bool, out: TextIO) -> int:
    leader = await _inspected(url, lambda locker: locker.election(name).leader(), "has no elections")
    _show_leader(name, leader, as_json, out)  # as ``distlock leader NAME`` prints it
    return EXIT_OK


# --- run ------------------------------------------------------------------------------------------------


def _terminal_delivered(sig: int) -> bool:
    """Whether ``sig`` is a Ctrl-C that the terminal has sent to the command already.

    The terminal sends SIGINT to its whole foreground process group, which includes the command when
    distlock runs in the foreground; passing it on as well would interrupt the command twice.
    """
    if sig != signal.SIGINT:
        return False
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
    return False


class _Runner:
    """One ``distlock run``: signals go to the command once it exists, and abort the obtain before."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.task = asyncio.current_task()
        self.proc: asyncio.subprocess.Process | None = None
        self.spawning = False
        self.pending: list[int] = []
        self.interrupted: int | None = None
        self.lost = asyncio.Event()
        self.loss: BaseException | None = None

    def on_signal(self, sig: int) -> None:
        if self.proc is not None:
            if self.proc.returncode is None and not _terminal_delivered(sig):
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
        elif self.spawning:
            self.pending.append(sig)
        elif self.interrupted is None and self.task is not None:
            # Still obtaining: give up (obtain is cancellation-safe, it releases what it was granted).
            self.interrupted = sig
            self.task.cancel()

    def on_lost(self, exc: BaseException) -> None:
        self.loss = exc
        self.lost.set()

    async def start(self, cmd: list[str], lock: Lock) -> asyncio.subprocess.Process | int:
        """The command, started; or the exit code that says why it could not be (after saying it)."""
        try:
            return await self.spawn(cmd, lock)
        except FileNotFoundError:
            self.err.write(f"distlock: command not found: {cmd[0]}\n")
            return EXIT_NOT_FOUND
        except OSError as exc:
            self.err.write(f"distlock: cannot execute {cmd[0]}: {exc.strerror or exc}\n")
            return EXIT_CANNOT_EXECUTE

    async def spawn(self, cmd: list[str], lock: Lock) -> asyncio.subprocess.Process:
        # The command needs the fencing token to fence its own writes against a holder that lost the lock.
        env = {**os.environ, "DISTLOCK_KEY": lock.key, "DISTLOCK_FENCING_TOKEN": str(lock.fencing_token)}
        self.spawning = True
        try:
            self.proc = await asyncio.create_subprocess_exec(*cmd, env=env)
        finally:
            self.spawning = False
        for sig in self.pending:
            self.on_signal(sig)
        return self.proc

    async def supervise(self, key: str, proc: asyncio.subprocess.Process, grace: float) -> int:
        exited = asyncio.ensure_future(proc.wait())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({exited, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if exited.done():
            return _exit_code(exited.result())
        self.err.write(f"distlock: lock {key!r} was lost ({self.loss}); stopping the command with SIGTERM\n")
        await self.stop(proc, exited, grace)
        return EXIT_LOST

    async def stop(self, proc: asyncio.subprocess.Process, exited: asyncio.Future[int], grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the command has exited."""
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        done, _ = await asyncio.wait({exited}, timeout=grace)
        if not done:
            self.err.write(f"distlock: the command did not exit within {grace:g} s of SIGTERM; sending SIGKILL\n")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await exited

    async def lead(self, name: str, term: Lock, cmd: list[str], grace: float) -> int:
        """Run ``cmd`` in a campaign's body: a cancellation of the body is the loss of the leadership."""
        proc = await self.start(cmd, term)
        if isinstance(proc, int):
            return proc
        exited = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.shield(exited)
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):
                self.err.write(f"distlock: leadership of {name!r} was lost; stopping the command with SIGTERM\n")
                await self.stop(proc, exited, grace)
            raise
        return _exit_code(exited.result())


def _exit_code(returncode: int) -> int:
    return EXIT_SIGNAL_BASE - returncode if returncode < 0 else returncode


def _check_command(cmd: list[str], command: str = "run", operand: str = "KEY") -> list[str]:
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]  # argparse keeps the separator on some Python versions
    if not cmd:
        raise _UsageError(f"{command} needs a command: distlock {command} {operand} -- CMD [ARG ...]")
    if cmd[0].startswith("-"):
        raise _UsageError(f"options of {command} go before {operand}; {cmd[0]!r} came after it")
    return cmd


async def _run(args: argparse.Namespace, err: TextIO) -> int:
    _refuse_memory(args.url, "run")
    cmd = _check_command(args.cmd)
    if os.sep not in cmd[0] and shutil.which(cmd[0]) is None:
        # Found out before taking a lock that it could only waste.
        err.write(f"distlock: command not found: {cmd[0]}\n")
        return EXIT_NOT_FOUND
    if args.refresh is not None and args.refresh >= args.ttl:
        raise _UsageError(f"--refresh ({args.refresh:g}) must be below --ttl ({args.ttl:g})")
    options = Options(ttl=args.ttl, retry_delay=args.retry_delay, refresh_interval=args.refresh)
    runner = _Runner(err)

    async def run() -> int:
        async with from_url(args.url, options) as locker:
            if args.limit is None:
                lock = await locker.obtain(args.key, timeout=args.wait)
            else:
                lock = await locker.obtain_permit(args.key, args.limit, timeout=args.wait)
            try:
                return await _hold(runner, lock, cmd, args.grace)
            finally:
                await _release(lock, err, lost_reported=runner.lost.is_set())

    return await _interruptible(runner, run)


async def _interruptible(runner: _Runner, body: Callable[[], Awaitable[int]]) -> int:
    """Run ``body`` with SIGINT and SIGTERM handled by ``runner``: passed on to the command once it
    runs, ending the wait before (exit code 128 + N)."""
    loop = asyncio.get_running_loop()
    for sig in FORWARDED:
        loop.add_signal_handler(sig, runner.on_signal, sig)
    try:
        return await body()
    except asyncio.CancelledError:
        if runner.interrupted is None:
            raise
        task = asyncio.current_task()
        if task is not None and sys.version_info >= (3, 11):
            task.uncancel()
        return EXIT_SIGNAL_BASE + runner.interrupted
    finally:
        for sig in FORWARDED:
            loop.remove_signal_handler(sig)


async def _hold(runner: _Runner, lock: Lock, cmd: list[str], grace: float) -> int:
    lock.start_refresh(runner.on_lost)
    proc = await runner.start(cmd, lock)
    if isinstance(proc, int):
        return proc
    return await runner.supervise(lock.key, proc, grace)


async def _release(lock: Lock, err: TextIO, *, lost_reported: bool) -> None:
    try:
        await lock.release()
    except LockNotHeldError:
        if not lost_reported:
            # Lost after the last refresh; the command had finished by the time it could be noticed.
            err.write(f"distlock: lock {lock.key!r} was no longer held when the command exited\n")
    except BackendError as exc:
        err.write(f"distlock: could not release lock {lock.key!r} ({exc}); it expires with its TTL\n")


# --- elect, leader ---------------------------------------------------------------------------------------


async def _elect(args: argparse.Namespace, err: TextIO) -> int:
    _refuse_memory(args.url, "elect")
    cmd = _check_command(args.cmd, "elect", "NAME")
    if os.sep not in cmd[0] and shutil.which(cmd[0]) is None:
        err.write(f"distlock: command not found: {cmd[0]}\n")
        return EXIT_NOT_FOUND
    value = args.value if args.value is not None else f"{socket.gethostname()}:{os.getpid()}"
    runner = _Runner(err)

    async def elect() -> int:
        async with from_url(args.url, Options(ttl=args.ttl)) as locker:
            try:
                async with locker.election(args.name).campaign(value) as term:
                    return await runner.lead(args.name, term, cmd, args.grace)
            except LockLostError:
                return EXIT_LOST

    return await _interruptible(runner, elect)


def _show_leader(name: str, leader: Leader | None, as_json: bool, out: TextIO) -> None:
    if as_json:
        shown = None if leader is None else {"value": leader.value, "fencing_token": leader.fencing_token}
        out.write(json.dumps({"name": name, "leader": shown}) + "\n")
    elif leader is None:
        out.write(f"{name!r} has no leader\n")
    else:
        out.write(f"{name!r} is led by {leader.value!r} (fencing token {leader.fencing_token})\n")
    out.flush()


async def _leader(url: str, name: str, as_json: bool, watch: bool, out: TextIO, err: TextIO) -> int:
    _refuse_memory(url, "leader")
    # No command to pass signals on to: SIGINT and SIGTERM end the watch (128 + N).
    runner = _Runner(err)

    async def show() -> int:
        async with from_url(url) as locker:
            election = locker.election(name)
            if not watch:
                _show_leader(name, await election.leader(), as_json, out)
                return EXIT_OK
            async with election.observe() as leaders:
                async for leader in leaders:
                    _show_leader(name, leader, as_json, out)
        return EXIT_OK  # the observation ended with the locker

    return await _interruptible(runner, show)


# --- demo -----------------------------------------------------------------------------------------------


class _Board:
    """What the demo shows: the event log (any output), or a table redrawn in place (a terminal)."""

    def __init__(self, out: TextIO, workers: list[str], live: bool) -> None:
        self.out = out
        self.live = live
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()
        self.stats = {name: _Stats() for name in workers}
        self.state = dict.fromkeys(workers, "idle")
        self.since = dict.fromkeys(workers, 0.0)
        self.holder: str | None = None
        self.last_holder: str | None = None
        self.waiting: list[str] = []
        self.handoffs = 0
        self.last = ""
        self.drawn = 0
        #: Every section as (start, end, fencing token, worker), on the loop's clock: what the verdict checks.
        self.sections: list[tuple[float, float, int, str]] = []
        self._open: dict[str, tuple[float, int]] = {}
        #: Redis fencing tokens start at the server's clock in microseconds (they never go back, even
        #: after a restart without persistence): shown relative to the one before the first, as ``+N``.
        self.base: int | None = None
        self.last_token: dict[str, str] = dict.fromkeys(workers, "")

    def now(self) -> float:
        return self.loop.time() - self.start

    def header(self) -> None:
        if not self.live:
            self.out.write(
                f"{'time':>8}  {'worker':<6}  {'event':<9}  {'fencing':>7}  {'waited':>9}  {'holder':<6}  waiting\n"
            )

    def asks(self, name: str) -> None:
        self.waiting.append(name)
        self._set(name, "waiting")
        if self.holder is not None:  # an uncontended obtain is not worth a line
            self._event(name, "waiting")

    def acquired(self, name: str, fencing: int, waited: float) -> None:
        # From one worker straight to another is a hand-off; the same worker again is not.
        self.waiting.remove(name)
        stats = self.stats[name]
        stats.acquisitions += 1
        stats.waits.append(waited)
        note = ""
        if self.last_holder not in (None, name):
            self.handoffs += 1
            note = f"hand-off from {self.last_holder}"
        self.holder = self.last_holder = name
        self._open[name] = (self.now(), fencing)
        self._set(name, "holding")
        self.last_token[name] = shown = self._shown(fencing)
        self._event(name, "acquired", shown, f"{waited * 1000:7.1f}ms", note)

    def _shown(self, fencing: int) -> str:
        if self.base is None:
            self.base = fencing - 1 if fencing > _LARGE_TOKEN else 0
        return f"+{fencing - self.base}" if self.base else str(fencing)

    def released(self, name: str, more: bool) -> None:
        start, fencing = self._open.pop(name)
        self.sections.append((start, self.now(), fencing, name))
        self.holder = None
        self._set(name, "working" if more else "done")
        self._event(name, "released")

    def _set(self, name: str, state: str) -> None:
        self.state[name] = state
        self.since[name] = self.now()

    def _event(self, name: str, event: str, fencing: str = "", waited: str = "", note: str = "") -> None:
        if self.live:
            self.last = f"{name} {event} {note}".rstrip()
            self.draw()
            return
        holder = self.holder or "-"
        line = f"{self.now():8.3f}  {name:<6}  {event:<9}  {fencing:>7}  {waited:>9}  {holder:<6}  "
        self.out.write(f"{line}{' '.join(self.waiting) or '-'}  {note}".rstrip() + "\n")

    def draw(self) -> None:
        lines = [
            f"{'worker':<6}  {'state':<8}  {'for':>8}  {'sections':>8}  {'fencing':>8}  "
            f"{'mean wait':>10}  {'max wait':>10}"
        ]
        now = self.now()
        for name, stats in self.stats.items():
            mean = f"{sum(stats.waits) / len(stats.waits) * 1000:8.1f}ms" if stats.waits else ""
            worst = f"{max(stats.waits) * 1000:8.1f}ms" if stats.waits else ""
            lines.append(
                f"{name:<6}  {self.state[name]:<8}  {now - self.since[name]:7.2f}s  "
                f"{stats.acquisitions:>8}  {self.last_token[name]:>8}  {mean:>10}  {worst:>10}"
            )
        lines.append(f"holder: {self.holder or '-'}   waiting: {' '.join(self.waiting) or '-'}")
        lines.append(f"hand-offs: {self.handoffs}   last: {self.last}")
        # Back to the top of the previous drawing, then over it line by line.
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self.drawn = len(lines)

    def summary(self) -> None:
        self.out.write(f"\n{'worker':<6}  {'sections':>8}  {'mean wait':>10}  {'max wait':>10}\n")
        for name, s in self.stats.items():
            mean = sum(s.waits) / len(s.waits)
            self.out.write(f"{name:<6}  {s.acquisitions:>8}  {mean * 1000:8.1f}ms  {max(s.waits) * 1000:8.1f}ms\n")
        if self.base:
            self.out.write(f"\nFencing tokens are shown as +N: the token minus {self.base} (the server's clock in µs).")
        self.out.write(f"\n{self.handoffs} hand-offs; {verdict(self.sections)}.\n")


#: Fencing tokens above this are clock-based (Redis): the demo shows them relative to the first.
_LARGE_TOKEN = 1_000_000


def verdict(sections: list[tuple[float, float, int, str]]) -> str:
    """What the recorded sections (start, end, fencing token, worker) show: overlaps, and whether the
    fencing tokens rose with each section in the order the sections began."""
    ordered = sorted(sections)
    overlapping = []
    latest: tuple[float, str] = (float("-inf"), "")
    for start, end, _, name in ordered:
        if start < latest[0]:
            overlapping.append(f"{name}'s began before {latest[1]}'s ended")
        latest = max(latest, (end, name))
    falls = [f"{b[3]} got {b[2]} after {a[3]}'s {a[2]}" for a, b in itertools.pairwise(ordered) if b[2] <= a[2]]
    found = []
    if overlapping:
        found.append(f"{len(overlapping)} of {len(ordered)} sections overlapped another ({overlapping[0]})")
    else:
        found.append(f"none of the {len(ordered)} sections overlapped another")
    if falls:
        found.append(f"fencing tokens did not rise {len(falls)} times ({falls[0]})")
    else:
        found.append("fencing tokens rose with each")
    return ", and ".join(found)


async def _demo(url: str, workers: int, rounds: int, hold: float, key: str, out: TextIO, live: bool) -> int:
    options = Options(ttl=max(5.0, 4 * hold), max_retries=workers * rounds * 20, retry_delay=max(hold, 0.01))
    locker = from_url(url, options)
    board = _Board(out, [f"w{n}" for n in range(1, workers + 1)], live)
    loop = asyncio.get_running_loop()
    out.write(f"{workers} workers contend for lock {key!r} on {redact_url(url)}, {rounds} sections each\n\n")
    board.header()

    async def worker(name: str) -> None:
        for round_ in range(rounds):
            asked = loop.time()
            board.asks(name)
            async with locker.lock(key) as lock:
                board.acquired(name, lock.fencing_token, loop.time() - asked)
                await anyio.sleep(hold)
                board.released(name, more=round_ + 1 < rounds)
            await anyio.sleep(hold / 2)  # work outside the lock, so that the others get their turn

    async def ticker() -> None:
        while True:  # the "for" column counts up between events too
            await anyio.sleep(0.2)
            board.draw()

    try:
        async with locker, anyio.create_task_group() as tg:
            if live:
                tg.start_soon(ticker)
            async with anyio.create_task_group() as workers_tg:
                for name in board.stats:
                    workers_tg.start_soon(worker, name)
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Every worker fails the same way when the backend is down: report the first failure.
        raise _first(group) from None
    board.summary()
    return EXIT_OK


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _live(out: TextIO) -> bool:
    return out.isatty() and os.environ.get("TERM", "dumb") != "dumb"


def _log_to_stderr(verbose: int) -> None:
    # The errors that end a command are printed by main(); what the library logs on the way (a cleanup
    # that failed after the server went away, say) only repeats them unless asked for.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("distlock: %(levelname)s: %(message)s"))
    logger = logging.getLogger("distlock_async")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.WARNING if verbose else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _log_to_stderr(args.verbose)
    try:
        return _main(args)
    except BrokenPipeError:
        # The reader went away (``distlock demo --plain | head``): stop quietly, as a shell command
        # killed by SIGPIPE would, and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SIGNAL_BASE + signal.SIGPIPE


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "demo":
            live = not args.plain and _live(sys.stdout)
            return asyncio.run(_demo(args.url, args.workers, args.rounds, args.hold, args.key, sys.stdout, live))
        if args.command == "status":
            return asyncio.run(_status_of(args, sys.stdout))
        if args.command == "run":
            return asyncio.run(_run(args, sys.stderr))
        if args.command == "elect":
            return asyncio.run(_elect(args, sys.stderr))
        if args.command == "leader":
            return asyncio.run(_leader(args.url, args.name, args.json, args.watch, sys.stdout, sys.stderr))
    except (ValueError, _UsageError) as exc:
        print(f"distlock: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotObtainedError as exc:
        print(f"distlock: {exc}", file=sys.stderr)
        return EXIT_NOT_OBTAINED
    except BackendError as exc:
        print(f"distlock: backend unavailable: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    except KeyboardInterrupt:
        return EXIT_SIGNAL_BASE + signal.SIGINT
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover - argparse requires one
