"""A mutual-exclusion checker: worker processes, a fenced store, and the invariants of a run.

Each worker process (``python -m tests.fencing URL ...``) loops: take the lock, read a counter from the
fenced store, hold 20-80 ms, write counter + 1 with the lock's fencing token, release. It logs every
section as one JSON line. The store is a file guarded by ``flock`` that remembers the highest token it
has seen, on reads as well as writes, and refuses any access with a lower one -- what a database does
with a fenced ``UPDATE ... WHERE token <= :token``. :func:`check` then reads the logs and the store and
checks the invariants (see its docstring).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
    """A counter in a file; every access carries a fencing token and one below the highest seen is refused."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _locked(self) -> Iterator[dict[str, int]]:
        with open(self.path.with_suffix(".lock"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                state = json.loads(self.path.read_text()) if self.path.exists() else {"counter": 0, "highest": 0}
                yield state
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)

    def read(self, token: int) -> tuple[int | None, int]:
        """The counter, or ``None`` if ``token`` is stale; and the time of the access."""
        with self._locked() as state:
            at = time.monotonic_ns()
            if token < state["highest"]:
                return None, at
            state["highest"] = token
            return state["counter"], at

    def write(self, counter: int, token: int) -> tuple[bool, int]:
        """Store ``counter`` unless ``token`` is stale; whether it was accepted, and the time of the access."""
        with self._locked() as state:
            at = time.monotonic_ns()
            if token < state["highest"]:
                return False, at
            state["highest"] = token
            state["counter"] = counter
            return True, at

    def state(self) -> dict[str, int]:
        return json.loads(self.path.read_text()) if self.path.exists() else {"counter": 0, "highest": 0}


# --- the worker process ------------------------------------------------------------------------------


async def _work(args: argparse.Namespace, log: TextIO) -> None:
    rng = random.Random(args.seed)
    store = FencedStore(Path(args.store))
    hold = Path(args.hold_while) if args.hold_while else None

    def emit(**record: Any) -> None:
        log.write(json.dumps({"client": args.client, "pid": os.getpid(), **record}) + "\n")

    options = Options(ttl=args.ttl, max_retries=1000, retry_delay=0.05)
    # Redis takes its deadline from the URL (socket_timeout); etcd from EtcdOptions.
    etcd_options = EtcdOptions(session_timeout=args.etcd_deadline) if args.url.startswith("etcd://") else None
    locker, clients = make_locker(args.url, options, etcd_options)
    try:
        await _sections(args, locker, store, hold, rng, emit)
    finally:
        await locker.aclose()
        for client in clients:
            await client.aclose()


async def _sections(
    args: argparse.Namespace,
    locker: Locker,
    store: FencedStore,
    hold: Path | None,
    rng: random.Random,
    emit: Callable[..., None],
) -> None:
    done = 0
    while done < args.sections:
        started = time.monotonic_ns()
        section: dict[str, Any] = {"event": "section"}
        try:
            if args.mode == "lock":
                async with locker.lock(args.key) as lock:
                    section["obtained_at"] = time.monotonic_ns()
                    emit(event="obtained", token=lock.fencing_token)
                    try:
                        await _section(store, lock.fencing_token, rng, section, hold)
                        await asyncio.sleep(args.linger)  # work after the write, under the lock
                    finally:  # the body ends here, cancelled or not
                        section["done_at"] = time.monotonic_ns()
                section["release"] = "ok"
            else:
                held = await locker.obtain(args.key)
                section["obtained_at"] = time.monotonic_ns()
                emit(event="obtained", token=held.fencing_token)
                await _section(store, held.fencing_token, rng, section, hold)
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
        emit(**section)
        if "error" in section and "token" not in section:
            await asyncio.sleep(0.02)  # the backend is down: do not spin


async def _section(
    store: FencedStore, token: int, rng: random.Random, out: dict[str, Any], hold: Path | None = None
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
    out["accepted"], out["write_at"] = store.write(counter + 1, token)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--key", default="checked")
    parser.add_argument("--store", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--sections", type=int, default=8)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--mode", choices=["obtain", "lock"], default="obtain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--etcd-deadline", type=float, default=1.0, help="etcd: EtcdOptions.session_timeout")
    parser.add_argument("--linger", type=float, default=0.0, help="lock mode: seconds held after the write")
    parser.add_argument("--hold-while", help="hold the lock, before writing, as long as this file exists")
    args = parser.parse_args()
    with open(args.log, "a", buffering=1) as log:  # line-buffered: the fault injector reads it live
        asyncio.run(_work(args, log))


# --- the test side -----------------------------------------------------------------------------------


@dataclass
class Run:
    """Worker processes of one checker run, and what they logged."""

    url: str
    dir: Path
    workers: int = 3
    sections: int = 8
    ttl: float = 1.0
    mode: str = "obtain"
    linger: float = 0.0
    #: Per worker: its own URL (the n-th worker takes ``urls[n]``; ``url`` if there is none).
    urls: list[str] = field(default_factory=list)
    #: Per worker: extra command-line arguments, such as ``["--hold-while", path]``.
    worker_args: dict[int, list[str]] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def store(self) -> FencedStore:
        return FencedStore(self.dir / "store.json")

    def log_of(self, n: int) -> Path:
        return self.dir / f"worker{n}.jsonl"

    def start(self) -> None:
        for n in range(self.workers):
            cmd = [
                sys.executable,
                "-m",
                "tests.fencing",
                self.urls[n] if n < len(self.urls) else self.url,
                "--store",
                str(self.dir / "store.json"),
                "--log",
                str(self.log_of(n)),
                "--client",
                f"w{n}",
                "--sections",
                str(self.sections),
                "--ttl",
                str(self.ttl),
                "--mode",
                self.mode,
                "--seed",
                str(n),
                "--linger",
                str(self.linger),
                *self.worker_args.get(n, []),
            ]
            self.procs.append(subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent))

    def records(self) -> list[dict[str, Any]]:
        out = []
        for n in range(self.workers):
            path = self.log_of(n)
            if path.exists():
                out += [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
        return out

    def holder(self) -> dict[str, Any] | None:
        """The worker whose last record says it holds the lock now, if one does."""
        for n in range(self.workers):
            path = self.log_of(n)
            lines = path.read_text().splitlines() if path.exists() else []
            if lines and lines[-1].endswith("}"):
                last: dict[str, Any] = json.loads(lines[-1])
                if last["event"] == "obtained":
                    return last
        return None

    def wait(self, timeout: float) -> None:
        """Every worker finishes within ``timeout`` seconds (liveness), and exits cleanly."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"workers did not finish within {timeout} s: {self.records()[-5:]}") from None
            assert proc.returncode == 0, f"a worker failed with {proc.returncode}"

    def __enter__(self) -> Run:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()  # whatever happened, no worker outlives the test

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def check(run: Run) -> dict[str, int]:
    """The invariants of a finished run; returns counts for the test to state its expectations with.

    - tokens are unique, and strictly increase in the order they were granted (as the workers saw it:
      the fault injector pauses a holder only after it logged its grant);
    - no stale write was accepted: none after a higher token reached the store;
    - accepted sections (read to write, as the store saw them) never overlap, and their tokens increase;
    - nothing is lost: the store's counter equals the number of accepted writes;
    - every error a worker saw is one of the library's typed errors (the worker only catches those).

    ``overlaps`` counts sections granted while an earlier one was still in progress (from its grant to
    the end of its work, before its release): two workers that both believed they held the lock. Only a
    fault can cause one, and fencing must then refuse the stale holder.
    """
    sections = [r for r in run.records() if r["event"] == "section" and "token" in r]
    by_grant = sorted(sections, key=lambda s: s["obtained_at"])
    tokens = [s["token"] for s in by_grant]
    assert len(set(tokens)) == len(tokens), f"a token was granted twice: {tokens}"
    assert tokens == sorted(tokens), f"tokens do not increase in grant order: {tokens}"
    overlaps, busy_until = 0, 0
    for section in by_grant:
        if section["obtained_at"] < busy_until:
            overlaps += 1
        busy_until = max(busy_until, section.get("done_at", section["obtained_at"]))
    stale_accepted = sum(
        1
        for s in sections
        if s.get("accepted")
        and any(o["token"] > s["token"] and o["read_at"] < s["write_at"] for o in sections if "read_at" in o)
    )
    assert stale_accepted == 0, f"{stale_accepted} stale writes were accepted"
    accepted = sorted((s for s in sections if s.get("accepted")), key=lambda s: s["read_at"])
    for before, after in itertools.pairwise(accepted):
        assert before["write_at"] < after["read_at"], f"accepted sections overlap: {before} and {after}"
        assert before["token"] < after["token"]
    assert run.store.state()["counter"] == len(accepted), "an accepted write was lost"
    return {
        "sections": len(sections),
        "accepted": len(accepted),
        "overlaps": overlaps,
        "rejected": sum(1 for s in sections if s.get("accepted") is False),
        "stale_accepted": stale_accepted,
        "not_held": sum(1 for s in sections if s.get("release") == "not-held" or s.get("error") == "LockNotHeldError"),
        "lost": sum(1 for s in sections if s.get("error") == "LockLostError"),
        "errors": sum(1 for r in run.records() if r["event"] == "section" and "error" in r),
    }


if __name__ == "__main__":
    main()
