"""Semaphores and elections under real faults, checked by tests/fencing.py's worker processes.

Every test runs in two modes, on Redis and on etcd:

- ``permit``: three workers share a semaphore of 2 permits (``obtain_permit``, then ``release``; or,
  ``semaphore``, the ``semaphore()`` block, which keeps the permit alive while it runs); the store
  fences with a window of the 2 highest tokens it has seen, so at most 2 accepted sections are ever in
  progress at once (``most_accepted_at_once <= 2``, asserted by ``check``; see tests/fencing.py for why
  that is what a resource can enforce for a semaphore, and what it costs: a valid permit overtaken by 2
  newer ones is refused too, so ``rejected`` may count valid holders);
- ``election``: three workers campaign in one election; while leading, each writes twice through the
  store (window 1) with its term's fencing token; an observer process logs every leader it sees.
  ``check`` asserts that accepted writes never go back in token order, that no two leaders' accepted
  writes overlap and that each token's writes come from one leader (``leaders_per_token`` = 1), and that
  the observer saw only leaders that were, never an older one after a newer one, and, once every term
  is over, nobody.

The faults: a holder or leader frozen (SIGSTOP) past its TTL, killed (SIGKILL), and the server killed and
restarted. Each test prints its figures as a ``FIGURES {json}`` line (see tests/test_faults.py).
"""

from __future__ import annotations

import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from .fencing import Figures, Run, check
from .test_faults import FINISH, Server, _assert_no_lock_left, _await_holder, _backend, _restart_twice_while_held, _run

BACKENDS = pytest.mark.parametrize("server", [(), "etcd"], ids=["redis", "etcd"], indirect=True)
MODES = pytest.mark.parametrize("mode", ["permit", "election"])
#: The semaphore's limit in ``permit`` mode.
LIMIT = 2
#: Seconds within which a worker or the observer must show what a test waits for (liveness only).
SETTLE = 30.0


def _coordination_run(server: Server, tmp_path: Path, mode: str, **kwargs: Any) -> Run:
    observers = 1 if mode == "election" else 0
    return _run(server, tmp_path, workers=3, mode=mode, limit=LIMIT, writes=2, observers=observers, **kwargs)


def _await(what: str, found: Any) -> Any:
    """What ``found()`` returns once it is truthy, waiting (bounded) for another process to get there."""
    deadline = time.monotonic() + SETTLE
    while not (result := found()):
        assert time.monotonic() < deadline, f"{what} within {SETTLE} s"
        time.sleep(0.005)  # another process's progress: there is no event to await
    return result


def _await_seen(run: Run, since: int, newer_than: int) -> dict[str, Any]:
    """The observer's first record, logged at ``since`` or later, of a leader with a token above ``newer_than``."""

    def found() -> dict[str, Any] | None:
        return next(
            (
                r
                for r in run.seen()
                if r["event"] == "seen" and r["at"] >= since and r["token"] is not None and r["token"] > newer_than
            ),
            None,
        )

    seen: dict[str, Any] = _await(f"the observer saw no leader after token {newer_than}", found)
    return seen


def _records_of(run: Run, token: int, event: str) -> list[dict[str, Any]]:
    return [r for r in run.records() if r["event"] == event and r.get("token") == token]


def _taken_over(run: Run, token: int, mode: str) -> bool:
    """Whether what ``token`` held went to others: ``limit`` higher-token permit sections that overlapped
    each other (so one of them had the frozen holder's permit), or a higher-token term, each of them
    past its read (so the store has seen their tokens)."""
    later = [r for r in run.records() if r["event"] == "section" and r["token"] > token and "read_at" in r]
    if mode == "election":
        return bool(later)
    return any(
        a["token"] != b["token"] and a["obtained_at"] < b["done_at"] and b["obtained_at"] < a["done_at"]
        for a in later
        for b in later
    )


def _stop_outside_the_store(run: Run, pid: int) -> None:
    """SIGSTOP ``pid`` where it does not hold the store's ``flock``: frozen inside an access, it would
    block every worker's access until resumed (a database would time such a lock out), and the others
    could never take over. Resumed at once and stopped again in that case."""
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        if run.store.free(within=0.2):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)  # let it leave the store
    raise AssertionError("the holder was inside the store every time it was stopped")


@BACKENDS
@MODES
def test_holder_paused_past_its_ttl_is_fenced_off(server: Server, tmp_path: Path, mode: str, figures: Figures) -> None:
    """A permit holder or a leader frozen (SIGSTOP) until what it held has gone to others -- its TTL ran
    out: two other workers held the 2 permits at once, or another worker led -- and they have shown their
    higher tokens to the store; then resumed (SIGCONT). Twice.

    Expected: more workers than ``limit`` believed they held at once (``overlaps`` >= 1 per pause); the
    store accepts nothing the resumed one writes with its old token (it has seen ``limit`` higher ones),
    and the resumed one learns it lost: its permit's release raises ``LockNotHeldError``, its term's
    ``campaign()`` block raises ``LockLostError``. At most ``limit`` accepted sections ever overlap
    (``check``); every worker finishes; nothing is left behind. Figures: ``paused_ms``, each pause's length.
    """
    figures.update(backend=_backend(server), mode=mode, faults={"holder_sigstop_past_ttl": 0}, paused_ms=[])
    # Each section works on after its write (a leader's refresher finds the term gone meanwhile), so that
    # the others still have sections to run during the second pause.
    with _coordination_run(server, tmp_path, mode, sections=10 if mode == "permit" else 4, linger=0.25) as run:
        paused: list[tuple[int, int]] = []  # (token, resumed at)
        token = 0
        for _ in range(2):
            holder = _await_holder(run, token)
            token, pid = int(holder["token"]), int(holder["pid"])
            _stop_outside_the_store(run, pid)
            stopped_at = time.monotonic_ns()
            figures["faults"]["holder_sigstop_past_ttl"] += 1
            try:
                _await(f"what token {token} held never went to others", partial(_taken_over, run, token, mode))
            finally:
                paused.append((token, time.monotonic_ns()))
                os.kill(pid, signal.SIGCONT)
            figures["paused_ms"].append(round((paused[-1][1] - stopped_at) / 1e6))
        run.wait(FINISH)
    counts = check(run, figures)
    assert counts["overlaps"] >= 2, counts
    for token, resumed_at in paused:
        late = [w for w in _records_of(run, token, "section") if w.get("write_at", resumed_at) >= resumed_at]
        assert not any(w.get("accepted") for w in late), f"a write of token {token} was accepted after the pause"
        (ended,) = _records_of(run, token, "term" if mode == "election" else "section")
        if mode == "election":
            assert ended["error"] == "LockLostError", ended
        else:
            assert ended["release"] == "not-held", ended
    _assert_no_lock_left(server, figures, mode)


@BACKENDS
@pytest.mark.parametrize("mode", ["semaphore", "election"])
def test_holder_killed(server: Server, tmp_path: Path, mode: str, figures: Figures) -> None:
    """``kill -9`` of a permit holder or a leader: what it held comes back after its TTL, and the others
    go on.

    Every worker holds on, before its first write, until the test lets go (``--hold-while``), so the order
    is fixed. Permits (``semaphore()`` blocks, so that the held-back holders keep theirs alive): two workers
    hold the 2 permits; one is killed; the third worker gets a permit while the other holder still holds
    -- so the dead one's permit came back. Election: the leader is killed;
    another worker leads with a higher token, and the observer sees it. Then the survivors finish all their
    sections, with every invariant of ``check``; nothing is left behind once the TTL has run out.
    Figures: ``back_after_ms``, from the kill to the grant (permits) or to the observer seeing the new
    leader (election) -- at least the TTL, not asserted beyond liveness.
    """
    hold = tmp_path / "hold"
    hold.touch()
    figures.update(backend=_backend(server), mode=mode, faults={"holder_kill9": 0})
    hold_args = {n: ["--hold-while", str(hold)] for n in range(3)}
    with _coordination_run(server, tmp_path, mode, sections=3, worker_args=hold_args) as run:
        wanted = LIMIT if mode == "semaphore" else 1
        holders = _await(f"{wanted} workers never held", lambda: (h := run.holders()) and len(h) == wanted and h)
        victim = holders[0]
        run.kill_worker(run.worker_of(victim))
        killed_at = time.monotonic_ns()
        figures["faults"]["holder_kill9"] += 1
        if mode == "semaphore":
            others = {h["client"] for h in holders[1:]}
            (back,) = _await(
                "the killed holder's permit never came back",
                lambda: [h for h in run.holders() if h["client"] not in others | {victim["client"]}],
            )
            assert {h["client"] for h in run.holders()} == others | {back["client"]}, "the other holder let go"
            figures["back_after_ms"] = round((time.monotonic_ns() - killed_at) / 1e6)
        else:
            seen = _await_seen(run, killed_at, int(victim["token"]))
            figures["back_after_ms"] = round((seen["at"] - killed_at) / 1e6)
            assert seen["value"] != victim["client"]
        hold.unlink()
        run.wait(FINISH)
    counts = check(run, figures)
    assert counts["sections"] == 2 * 3, counts  # the survivors' sections (or terms), all of them
    _assert_no_lock_left(server, figures, "permit" if mode == "semaphore" else mode, expiring=True)


@BACKENDS
@MODES
def test_server_killed_and_restarted(server: Server, tmp_path: Path, mode: str, figures: Figures) -> None:
    """kill -9 of the server and restart, twice, each time while a worker holds: typed errors while it is
    down (a restart can be quick enough that no call meets it), and the workers carry on after. Redis
    (without persistence: the harder case) forgets every permit and term, and hands them out again while
    their old holders still believe they hold; the tokens keep rising (from the server clock), so the
    store refuses the old holders beyond the window. The invariants of ``check`` hold throughout, the
    observer ends up seeing nobody lead, every worker finishes its sections, and nothing is left behind."""
    figures.update(backend=_backend(server), mode=mode, faults={"server_kill9_restart": 0})
    with _coordination_run(server, tmp_path, mode, sections=4) as run:
        _restart_twice_while_held(server, run, figures)
    counts = check(run, figures)
    assert counts["sections"] == 3 * 4, counts
    # A release that failed while the server was down leaves its entry until its TTL has run out.
    figures["releases_failed"] = sum(1 for r in run.records() if "token" in r and r.get("error") == "BackendError")
    _assert_no_lock_left(server, figures, mode, expiring=figures["releases_failed"] > 0)
