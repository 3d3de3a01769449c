"""A mutual-exclusion checker: worker processes, a fenced store, and the invariants of a run.

Each worker process (``python -m tests.fencing URL ...``) loops: take the lock, read a counter from the
fenced store, hold 20-80 ms, write counter + 1 with the lock's fencing token, release. It logs every
section as one JSON line. The store is a file guarded by ``flock`` that remembers the highest token it
has seen, on reads as well as writes, and refuses any access with a lower one -- what a database does
with a fenced ``UPDATE ... WHERE token <= :token``. :func:`check` then reads the logs and the store and
checks the invariants (see its docstring).

Two more modes check the semaphore and the election the same way.

Semaphores (``--mode permit``: ``obtain_permit`` and ``release``; ``--mode semaphore``: the
``semaphore()`` block). A single highest token cannot fence a semaphore: ``limit`` holders are valid at
once, and all but the newest hold lower tokens. What a resource *can* enforce, knowing nothing but the
tokens it is shown, is a window: it remembers the ``limit`` highest tokens it has seen and refuses any
access with a token below all of them (``FencedStore(window=limit)``; ``window=1`` is the lock's rule).
That bounds what it accepts: if ``limit + 1`` accepted sections (read to write, as the store saw them)
were in progress at one instant, the lowest of them wrote after the ``limit`` higher ones had read, so
its token was below the window by then and its write was refused -- a contradiction. So at most
``limit`` accepted sections ever overlap, whatever the coordination service did. The price is honest too:
the store cannot tell a stale permit from a valid one that ``limit`` newer (perhaps already released)
permits have overtaken, so it may refuse a valid holder that holds long (``rejected`` counts both). A
permit section adds 1 to the counter (sections may overlap legitimately, so no read-modify-write).

Elections (``--mode election``): each worker campaigns with its client name as value; a term is one
section of the checker. While leading, the worker writes ``--writes`` times through the store (window 1)
with ``term.fencing_token``, each write a read-hold-write as in the lock mode, and stops writing once the
store refuses it. Checked: accepted writes never go down in token order, no two leaders' accepted
writes overlap, and every token's accepted writes come from one leader (``leaders_per_token`` = 1).
``--mode observe`` is an observer of that election: it logs every leader ``observe()`` yields, and
opens a new observation when the server fails it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from distlock_async import (
    BackendError,
    EtcdOptions,
    Locker,
    LockLostError,
    LockNotHeldError,
    NotObtainedError,
    Options,
)

from .targets import make_locker

#: What a checker test saw, filled in by the test and printed by conftest's ``figures`` fixture.
Figures = dict[str, Any]


class FencedStore:
    """A counter in a file; every access carries a fencing token, and one below the ``window`` highest
    tokens seen is refused (``window=1``: below the highest)."""

    def __init__(self, path: Path, window: int = 1) -> None:
        self.path = path
        self.window = window

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with open(self.path.with_suffix(".lock"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                state = self.state()
                yield state
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)

    def _admit(self, state: dict[str, Any], token: int) -> bool:
        """Whether ``token`` is within the window; if so, it joins the tokens seen."""
        top: list[int] = state["top"]
        if len(top) >= self.window and token < top[-1]:
            return False
        if token not in top:
            top.append(token)
            top.sort(reverse=True)
            del top[self.window :]
        state["highest"] = top[0]
        return True

    def read(self, token: int) -> tuple[int | None, int]:
        """The counter, or ``None`` if ``token`` is stale; and the time of the access."""
        with self._locked() as state:
            at = time.monotonic_ns()
            if not self._admit(state, token):
                return None, at
            return int(state["counter"]), at

    def write(self, counter: int, token: int) -> tuple[bool, int]:
        """Store ``counter`` unless ``token`` is stale; whether it was accepted, and the time of the access."""
        with self._locked() as state:
            at = time.monotonic_ns()
            if not self._admit(state, token):
                return False, at
            state["counter"] = counter
            return True, at

    def add(self, token: int) -> tuple[bool, int]:
        """Add 1 to the counter unless ``token`` is stale (sections that may overlap: no lost update)."""
        with self._locked() as state:
            at = time.monotonic_ns()
            if not self._admit(state, token):
                return False, at
            state["counter"] += 1
            return True, at

    def free(self, within: float) -> bool:
        """Whether nobody holds the store (its ``flock``) at some moment within ``within`` seconds -- the
        fault injector's check that a process it froze is not frozen inside an access."""
        deadline = time.monotonic() + within
        with open(self.path.with_suffix(".lock"), "a") as guard:
            while True:
                try:
                    fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.002)  # another process's access, a few microseconds long
                    continue
                fcntl.flock(guard, fcntl.LOCK_UN)
                return True

    def state(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"counter": 0, "highest": 0, "top": []}
        state: dict[str, Any] = json.loads(self.path.read_text())
        return state


# --- the worker process ------------------------------------------------------------------------------

#: Modes whose sections hold one of ``--limit`` permits.
PERMIT_MODES = ("permit", "semaphore")


async def _work(args: argparse.Namespace, log: TextIO) -> None:
    options = Options(ttl=args.ttl, max_retries=1000, retry_delay=0.05)
    # Redis takes its deadline from the URL (socket_timeout); etcd from EtcdOptions.
    etcd_options = EtcdOptions(session_timeout=args.etcd_deadline) if args.url.startswith("etcd://") else None
    locker, clients = make_locker(args.url, options, etcd_options)
    worker = _Worker(
        args,
        log,
        locker,
        FencedStore(Path(args.store), args.limit if args.mode in PERMIT_MODES else 1),
        Path(args.hold_while) if args.hold_while else None,
        random.Random(args.seed),
    )
    try:
        if args.mode == "observe":
            await worker.observe()
        elif args.mode == "election":
            await worker.terms()
        else:
            await worker.sections()
    finally:
        await locker.aclose()
        for client in clients:
            await client.aclose()


@dataclass
class _Worker:
    """A worker process's mode at work: its command line, its log, its locker, the fenced store, the file
    that holds its sections back (``--hold-while``) and its random source."""

    args: argparse.Namespace
    log: TextIO
    locker: Locker
    store: FencedStore
    hold: Path | None
    rng: random.Random

    def emit(self, **record: Any) -> None:
        self.log.write(json.dumps({"client": self.args.client, "pid": os.getpid(), **record}) + "\n")

    async def sections(self) -> None:
        """The other modes: ``--sections`` sections, each logged as a ``section``."""
        done = 0
        permits = self.args.mode in PERMIT_MODES
        while done < self.args.sections:
            started = time.monotonic_ns()
            section: dict[str, Any] = {"event": "section"}
            try:
                if self.args.mode in ("lock", "semaphore"):
                    context = (
                        self.locker.lock(self.args.key)
                        if self.args.mode == "lock"
                        else self.locker.semaphore(self.args.key, self.args.limit)
                    )
                    async with context as lock:
                        section["obtained_at"] = time.monotonic_ns()
                        self.emit(event="obtained", token=lock.fencing_token)
                        try:
                            await _section(self.store, lock.fencing_token, self.rng, section, self.hold, add=permits)
                            await asyncio.sleep(self.args.linger)  # work after the write, under the lock
                        finally:  # the body ends here, cancelled or not
                            section["done_at"] = time.monotonic_ns()
                    section["release"] = "ok"
                else:
                    if permits:
                        held = await self.locker.obtain_permit(self.args.key, self.args.limit)
                    else:
                        held = await self.locker.obtain(self.args.key)
                    section["obtained_at"] = time.monotonic_ns()
                    self.emit(event="obtained", token=held.fencing_token)
                    await _section(self.store, held.fencing_token, self.rng, section, self.hold, add=permits)
                    await asyncio.sleep(self.args.linger)  # work after the write, before the release
                    section["done_at"] = time.monotonic_ns()
                    try:
                        await held.release()
                        section["release"] = "ok"
                    except LockNotHeldError:
                        section["release"] = "not-held"
            except (NotObtainedError, BackendError, LockLostError, LockNotHeldError) as exc:
                section["error"] = type(exc).__name__
                section["error_after_ms"] = (time.monotonic_ns() - started) / 1e6
            if "token" in section:
                done += 1
            self.emit(**section)
            if "error" in section and "token" not in section:
                await asyncio.sleep(0.02)  # the backend is down: do not spin

    async def terms(self) -> None:
        """Election mode: campaign, write ``--writes`` times while leading (each write logged as a
        ``section``), resign; the term is logged as a ``term``. ``--sections`` terms."""
        election = self.locker.election(self.args.key)
        done = 0
        while done < self.args.sections:
            started = time.monotonic_ns()
            term_record: dict[str, Any] = {"event": "term"}
            try:
                async with election.campaign(self.args.client) as term:
                    term_record["obtained_at"] = obtained_at = time.monotonic_ns()
                    term_record["token"] = term.fencing_token
                    self.emit(event="obtained", token=term.fencing_token)
                    try:
                        for _ in range(self.args.writes):
                            write: dict[str, Any] = {"event": "section", "obtained_at": obtained_at}
                            try:
                                await _section(self.store, term.fencing_token, self.rng, write, self.hold)
                            finally:  # logged even if the loss of the term cancels it
                                self.emit(**write)
                            if not write["accepted"]:
                                term_record["refused"] = True
                                break  # the resource says another leader came: stop acting as the leader
                        await asyncio.sleep(self.args.linger)  # work after the writes, still leading
                    finally:  # the body ends here, cancelled or not
                        term_record["done_at"] = time.monotonic_ns()
                term_record["release"] = "ok"
            except (BackendError, LockLostError, LockNotHeldError) as exc:
                term_record["error"] = type(exc).__name__
                term_record["error_after_ms"] = (time.monotonic_ns() - started) / 1e6
            if "token" in term_record:
                done += 1
            term_record["ended_at"] = time.monotonic_ns()  # resigned, or gave up on resigning
            self.emit(**term_record)
            if "error" in term_record and "token" not in term_record:
                await asyncio.sleep(0.02)  # the backend is down: do not spin

    async def observe(self) -> None:
        """Observe mode: log each leader ``observe()`` yields until ``--observe-while`` is gone; a failed
        observation (the server went away) is logged and opened again."""
        assert self.args.observe_while is not None
        flag = Path(self.args.observe_while)

        async def follow() -> None:
            while True:
                try:
                    async with self.locker.election(self.args.key).observe() as leaders:
                        async for leader in leaders:
                            at = time.monotonic_ns()
                            if leader is None:
                                self.emit(event="seen", at=at, value=None, token=None)
                            else:
                                self.emit(event="seen", at=at, value=leader.value, token=leader.fencing_token)
                except BackendError as exc:
                    self.emit(event="observe-error", at=time.monotonic_ns(), error=type(exc).__name__)
                    await asyncio.sleep(0.05)

        task = asyncio.create_task(follow())
        try:
            while await asyncio.to_thread(flag.exists):
                if task.done():
                    task.result()  # an error the observer does not expect: the worker fails
                await asyncio.sleep(0.02)  # another process's signal to stop: there is no event to await
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _section(
    store: FencedStore,
    token: int,
    rng: random.Random,
    out: dict[str, Any],
    hold: Path | None = None,
    *,
    add: bool = False,
) -> None:
    out["token"] = token
    counter, out["read_at"] = store.read(token)
    if counter is None:
        out["accepted"] = False
        return
    await asyncio.sleep(rng.uniform(0.02, 0.08))
    while hold is not None and await asyncio.to_thread(hold.exists):  # a slow holder, as long as the test wants
        out["held_back"] = True
        await asyncio.sleep(0.01)
    if add:
        out["accepted"], out["write_at"] = store.add(token)
    else:
        out["accepted"], out["write_at"] = store.write(counter + 1, token)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--key", default="checked")
    parser.add_argument("--store", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--sections", type=int, default=8, help="sections to run (election mode: terms)")
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--mode", choices=["obtain", "lock", *PERMIT_MODES, "election", "observe"], default="obtain")
    parser.add_argument("--limit", type=int, default=2, help="permit and semaphore modes: the semaphore's limit")
    parser.add_argument("--writes", type=int, default=2, help="election mode: writes per term")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--etcd-deadline", type=float, default=1.0, help="etcd: EtcdOptions.session_timeout")
    parser.add_argument("--linger", type=float, default=0.0, help="seconds a section holds on after writing")
    parser.add_argument("--hold-while", help="hold the lock, before writing, as long as this file exists")
    parser.add_argument("--observe-while", help="observe mode: observe as long as this file exists")
    args = parser.parse_args()
    with open(args.log, "a", buffering=1) as log:  # line-buffered: the fault injector reads it live
        asyncio.run(_work(args, log))


# --- the test side -----------------------------------------------------------------------------------


@dataclass
class Run:
    """Worker processes of one checker run (and observers of its election), and what they logged."""

    url: str
    dir: Path
    workers: int = 3
    sections: int = 8
    ttl: float = 1.0
    mode: str = "obtain"
    linger: float = 0.0
    #: Permit and semaphore modes: the semaphore's limit.
    limit: int = 2
    #: Election mode: writes per term.
    writes: int = 2
    #: Election mode: observer processes, each logging every leader it sees (see :meth:`seen`).
    observers: int = 0
    #: Per worker: its own URL (the n-th worker takes ``urls[n]``; ``url`` if there is none).
    urls: list[str] = field(default_factory=list)
    #: Per worker: extra command-line arguments, such as ``["--hold-while", path]``.
    worker_args: dict[int, list[str]] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    observer_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: Workers the test killed (``kill -9``): their exit is expected, their last section unlogged.
    killed: set[int] = field(default_factory=set)

    @property
    def window(self) -> int:
        """How many accepted sections may overlap: ``limit`` for permits, else 1."""
        return self.limit if self.mode in PERMIT_MODES else 1

    @property
    def store(self) -> FencedStore:
        return FencedStore(self.dir / "store.json", self.window)

    def log_of(self, n: int) -> Path:
        return self.dir / f"worker{n}.jsonl"

    def observer_log(self, n: int) -> Path:
        return self.dir / f"observer{n}.jsonl"

    @property
    def _observing(self) -> Path:
        return self.dir / "observing"

    def _cmd(self, url: str, log: Path, client: str, mode: str, seed: int, extra: list[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.fencing",
            url,
            "--store",
            str(self.dir / "store.json"),
            "--log",
            str(log),
            "--client",
            client,
            "--sections",
            str(self.sections),
            "--ttl",
            str(self.ttl),
            "--mode",
            mode,
            "--limit",
            str(self.limit),
            "--writes",
            str(self.writes),
            "--seed",
            str(seed),
            "--linger",
            str(self.linger),
            *extra,
        ]

    def start(self) -> None:
        root = Path(__file__).resolve().parent.parent
        if self.observers:
            self._observing.touch()
        for n in range(self.observers):  # first, so that they see the first leader
            cmd = self._cmd(
                self.url, self.observer_log(n), f"o{n}", "observe", 0, ["--observe-while", str(self._observing)]
            )
            self.observer_procs.append(subprocess.Popen(cmd, cwd=root))
        for n in range(self.workers):
            url = self.urls[n] if n < len(self.urls) else self.url
            cmd = self._cmd(url, self.log_of(n), f"w{n}", self.mode, n, self.worker_args.get(n, []))
            self.procs.append(subprocess.Popen(cmd, cwd=root))

    def records(self) -> list[dict[str, Any]]:
        out = []
        for n in range(self.workers):
            out += _read_log(self.log_of(n))
        return out

    def seen(self, n: int = 0) -> list[dict[str, Any]]:
        """What observer ``n`` logged: ``seen`` records (a leader or ``None``) and ``observe-error`` ones."""
        return _read_log(self.observer_log(n))

    @property
    def _end_event(self) -> str:
        return "term" if self.mode == "election" else "section"

    def holder(self) -> dict[str, Any] | None:
        """The worker whose last record says it holds the lock (a permit, the leadership) now, if one
        does (the first such worker)."""
        holders = self.holders()
        return holders[0] if holders else None

    def holders(self) -> list[dict[str, Any]]:
        """The ``obtained`` record of every worker that holds now, as its log says (not one killed)."""
        out = []
        for n in range(self.workers):
            if n in self.killed:
                continue
            last = [r for r in _read_log(self.log_of(n)) if r["event"] in ("obtained", self._end_event)]
            if last and last[-1]["event"] == "obtained":
                out.append(last[-1])
        return out

    def kill_worker(self, n: int) -> None:
        """``kill -9`` worker ``n``, and reap it."""
        self.killed.add(n)
        self.procs[n].kill()
        self.procs[n].wait()

    def worker_of(self, record: dict[str, Any]) -> int:
        return int(str(record["client"]).removeprefix("w"))

    def wait(self, timeout: float) -> None:
        """Every worker finishes within ``timeout`` seconds (liveness), and exits cleanly (but those the
        test killed); then the observers stop, and exit cleanly too."""
        deadline = time.monotonic() + timeout
        for n, proc in enumerate(self.procs):
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"workers did not finish within {timeout} s: {self.records()[-5:]}") from None
            if n not in self.killed:
                assert proc.returncode == 0, f"a worker failed with {proc.returncode}"
        for n in range(self.observers):  # every term is over: each observer ends up seeing nobody lead
            while not ((seen := [r for r in self.seen(n) if r["event"] == "seen"]) and seen[-1]["token"] is None):
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"observer {n} never saw that nobody leads: {self.seen(n)[-5:]}")
                time.sleep(0.01)  # another process's progress: there is no event to await
        self._observing.unlink(missing_ok=True)
        for proc in self.observer_procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 10))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("an observer did not stop") from None
            assert proc.returncode == 0, f"an observer failed with {proc.returncode}"

    def __enter__(self) -> Run:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()  # whatever happened, no worker outlives the test

    def kill(self) -> None:
        for proc in [*self.procs, *self.observer_procs]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def check(run: Run, figures: Figures | None = None) -> dict[str, int]:
    """The invariants of a finished run; returns counts for the test to state its expectations with, and
    adds them to ``figures`` if given (a fault test's ``FIGURES`` line).

    A *section* here is what holds: a lock or a permit from grant to the end of its work (before its
    release), or a leader's term. A *write* is one read-hold-write through the store (one per section;
    ``run.writes`` per term in election mode). ``window`` is how many may be held at once: the
    semaphore's limit, else 1.

    - tokens are unique; with a window of 1 they strictly increase in the order they were granted (as
      the workers saw it: the fault injector pauses a holder only after it logged its grant) -- permits
      are granted concurrently, so the order the workers logged them in says nothing;
    - no stale write was accepted: none after ``window`` higher tokens reached the store;
    - at no instant are more than ``window`` accepted writes (read to write, as the store saw them) in
      progress; with a window of 1 their tokens never go down (they rise from one lock section to the
      next) and each token's accepted writes come from one worker (``leaders_per_token``);
    - nothing is lost: the store's counter equals the number of accepted writes (but for a write of a
      worker killed before it logged it: at most one per worker the test killed);
    - every error a worker saw is one of the library's typed errors (the worker only catches those).

    ``overlaps`` counts sections granted while ``window`` earlier ones were still in progress: more
    workers than the window that all believed they held. Only a fault can cause one, and fencing must
    then refuse the stale holder.
    """
    window = run.window
    records = run.records()
    writes = [r for r in records if r["event"] == "section" and "token" in r]
    held = [r for r in records if r["event"] == run._end_event and "token" in r]
    tokens = [s["token"] for s in sorted(held, key=lambda s: s["obtained_at"])]
    assert len(set(tokens)) == len(tokens), f"a token was granted twice: {tokens}"
    if window == 1:
        assert tokens == sorted(tokens), f"tokens do not increase in grant order: {tokens}"
    overlaps = _overlaps(held, window)
    stale_accepted = sum(
        1
        for s in writes
        if s.get("accepted")
        and len(
            {o["token"] for o in writes if "read_at" in o and o["token"] > s["token"] and o["read_at"] < s["write_at"]}
        )
        >= window
    )
    assert stale_accepted == 0, f"{stale_accepted} stale writes were accepted"
    accepted = sorted((s for s in writes if s.get("accepted")), key=lambda s: s["read_at"])
    most = _most_at_once(accepted)
    assert most <= window, f"{most} accepted writes were in progress at once (window {window})"
    leaders: dict[int, set[str]] = {}
    for s in accepted:
        leaders.setdefault(s["token"], set()).add(s["client"])
    if window == 1:
        for before, after in itertools.pairwise(accepted):
            assert before["write_at"] < after["read_at"], f"accepted writes overlap: {before} and {after}"
            assert before["token"] <= after["token"], f"an accepted write went back in token order: {before}, {after}"
        assert all(len(who) == 1 for who in leaders.values()), f"a token's writes came from two workers: {leaders}"
    seen = _check_observers(run, records)
    counter = int(run.store.state()["counter"])
    assert len(accepted) <= counter <= len(accepted) + len(run.killed), f"an accepted write was lost: {counter}"
    counts = {
        "sections": len(held),
        "writes": len(writes),
        "accepted": len(accepted),
        "window": window,
        "overlaps": overlaps,
        "most_accepted_at_once": most,
        "rejected": sum(1 for s in writes if s.get("accepted") is False),
        "stale_accepted": stale_accepted,
        "leaders_per_token": max((len(who) for who in leaders.values()), default=0),
        "not_held": sum(1 for s in held if s.get("release") == "not-held" or s.get("error") == "LockNotHeldError"),
        "lost": sum(1 for s in held if s.get("error") == "LockLostError"),
        "errors": sum(1 for r in records if r["event"] == run._end_event and "error" in r),
        **seen,
    }
    if figures is not None:
        figures.update(counts)
    return counts


def _check_observers(run: Run, records: list[dict[str, Any]]) -> dict[str, int]:
    """What the observers saw: only leaders that were, and never one older than a leader seen before
    (tokens never go down).

    A leader that was: its token was granted to the worker that campaigned with the value seen -- or, for
    a token no worker logged, that worker had a campaign fail with a typed error (the server can grant a
    term whose campaign then fails, say at its deadline, and is given up: observers may see it lead
    meanwhile). Those are counted as ``observed_unconfirmed``."""
    if not run.observers:
        return {}
    granted = {r["token"]: r["client"] for r in records if r["event"] == "obtained"}
    failed = {r["client"] for r in records if r["event"] == "term" and "token" not in r and "error" in r}
    changes = errors = unconfirmed = 0
    for n in range(run.observers):
        seen = run.seen(n)
        errors += sum(1 for r in seen if r["event"] == "observe-error")
        leaders = [r for r in seen if r["event"] == "seen" and r["token"] is not None]
        changes += sum(1 for r in seen if r["event"] == "seen")
        for r in leaders:
            if r["token"] not in granted:
                assert r["value"] in failed, f"observer {n} saw a leader that never was: {r}"
                unconfirmed += 1
                continue
            assert granted[r["token"]] == r["value"], f"observer {n} saw a leader that never was: {r}"
        tokens = [r["token"] for r in leaders]
        assert tokens == sorted(tokens), f"observer {n} saw an older leader after a newer one: {tokens}"
    return {"observed_changes": changes, "observed_unconfirmed": unconfirmed, "observer_errors": errors}


def _overlaps(held: list[dict[str, Any]], window: int) -> int:
    """Sections granted while ``window`` others were in progress (from grant to the end of their work)."""
    count = 0
    for section in held:
        start = section["obtained_at"]
        others = sum(
            1 for o in held if o is not section and o["obtained_at"] <= start < o.get("done_at", o["obtained_at"])
        )
        count += others >= window
    return count


def _most_at_once(accepted: list[dict[str, Any]]) -> int:
    """The most accepted writes in progress at one instant, read to write as the store saw them (its
    clock: each access takes its time under the store's ``flock``, so no two instants are equal)."""
    events = sorted([(s["read_at"], 1) for s in accepted] + [(s["write_at"], -1) for s in accepted])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


if __name__ == "__main__":
    main()
