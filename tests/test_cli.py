"""The command line as users run it: a real subprocess."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from distlock_async._cli import verdict
from distlock_async.testing.servers import EtcdServer, RedisServer, free_port


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distlock_async", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "error", **(env or {})},
    )


def test_demo_shows_workers_taking_turns_with_rising_fencing_tokens() -> None:
    result = run("demo", "--workers", "3", "--rounds", "2", "--hold", "0.02")
    assert result.returncode == 0, result.stderr
    assert "3 workers contend for lock 'demo' on memory://" in result.stdout
    acquired = re.findall(r"^\s*[\d.]+\s+(w\d)\s+acquired\s+(\d+)", result.stdout, re.MULTILINE)
    assert len(acquired) == 6
    assert {worker for worker, _ in acquired} == {"w1", "w2", "w3"}
    tokens = [int(token) for _, token in acquired]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)
    # Every acquisition is followed by its own release before the next one starts.
    events = re.findall(r"^\s*[\d.]+\s+(w\d)\s+(acquired|released)", result.stdout, re.MULTILINE)
    assert [e for _, e in events] == ["acquired", "released"] * 6
    assert all(events[i][0] == events[i + 1][0] for i in range(0, len(events), 2))


def test_demo_on_a_terminal_redraws_a_live_table() -> None:
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "distlock_async", "demo", "--workers", "2", "--rounds", "2", "--hold", "0.02"],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "error", "TERM": "xterm"},
    ) as proc:
        os.close(terminal)
        output = b""
        with contextlib.suppress(OSError):  # EIO once the demo has exited and closed the terminal
            while chunk := os.read(controller, 65536):
                output += chunk
        os.close(controller)
        assert proc.wait(timeout=60) == 0
    text = output.decode()
    assert "\x1b[5F" in text, "the table (a header, 2 workers, 2 lines of totals) is redrawn over itself"
    assert "holder: w" in text
    assert re.search(r"^\d+ hand-offs", text, re.MULTILINE)
    assert text.rstrip().endswith("fencing tokens rose with each.")


def test_the_demo_verdict_is_computed_from_the_sections() -> None:
    """The closing line says what the recorded sections show, including when they show a violation."""
    good = [(0.0, 1.0, 1, "w1"), (1.0, 2.0, 2, "w2"), (2.5, 3.0, 3, "w1")]
    assert verdict(good) == "none of the 3 sections overlapped another, and fencing tokens rose with each"
    overlapping = [(0.0, 1.0, 1, "w1"), (0.5, 2.0, 2, "w2"), (2.5, 3.0, 3, "w1")]
    assert verdict(overlapping).startswith("1 of 3 sections overlapped another (w2's began before w1's ended)")
    falling = [(0.0, 1.0, 5, "w1"), (1.0, 2.0, 4, "w2")]
    assert verdict(falling).endswith("fencing tokens did not rise 1 times (w2 got 4 after w1's 5)")


def test_the_demo_on_memory_serves_workers_in_the_order_they_asked() -> None:
    """The default backend is FIFO: in the event log, the workers acquire in the order they started waiting."""
    result = run("demo", "--plain", "--workers", "5", "--rounds", "3", "--hold", "0.01")
    assert result.returncode == 0, result.stderr
    asked: list[str] = []
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "waiting":
            asked.append(fields[1])
        elif len(fields) >= 3 and fields[2] == "acquired" and fields[1] in asked:
            assert asked.pop(0) == fields[1], f"{fields[1]} overtook a worker that waited longer:\n{result.stdout}"
    assert "none of the 15 sections overlapped another" in result.stdout


def test_version_and_a_bare_distlock_that_prints_help() -> None:
    version = run("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("distlock (distlock-async) ")
    bare = run()
    assert bare.returncode == 2
    assert bare.stdout.startswith("usage: distlock")
    assert "hold a lock" not in bare.stderr  # the help is the output, not an error


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
def test_bad_seconds_get_one_message_naming_the_option(value: str) -> None:
    result = run("run", "--ttl", value, "k", "--", "true")
    assert result.returncode == 2
    assert f"argument --ttl: must be a finite number of seconds > 0, got '{value}'" in result.stderr


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_bad_wait_gets_one_message_naming_the_option(value: str) -> None:
    result = run("run", "--wait", value, "k", "--", "true")
    assert result.returncode == 2
    assert f"argument --wait: must be a number of seconds >= 0, or inf, got '{value}'" in result.stderr


def test_demo_with_a_bad_hold_names_it_and_prints_nothing() -> None:
    result = run("demo", "--hold", "-1")
    assert result.returncode == 2
    assert "argument --hold: must be a finite number of seconds > 0, got '-1'" in result.stderr
    assert result.stdout == ""


def test_subcommand_help_names_the_default_url_and_its_own_exit_codes() -> None:
    for command in ("run", "status", "demo"):
        text = " ".join(run(command, "--help").stdout.split())  # as read, whatever the line breaks
        assert "(default: $DISTLOCK_URL, else memory://)" in text, command
    status = run("status", "--help").stdout
    assert "the backend is unavailable" in status
    assert "126" not in status  # run's, not status's
    assert "lock was lost" not in status


def test_unavailable_backend_scheme_exits_with_usage_error() -> None:
    result = run("--url", "zookeeper://localhost:2181", "demo")
    assert result.returncode == 2
    assert "scheme 'zookeeper' is not supported" in result.stderr


def test_malformed_etcd_url_exits_with_usage_error() -> None:
    result = run("--url", "etcd://localhost", "demo")
    assert result.returncode == 2
    assert "host:port" in result.stderr


def test_demo_on_etcd_hands_the_lock_around(etcd_server: EtcdServer) -> None:
    result = run("--url", f"etcd://{etcd_server.endpoint}", "demo", "--workers", "3", "--rounds", "2", "--hold", "0.02")
    assert result.returncode == 0, result.stderr
    acquired = re.findall(r"^\s*[\d.]+\s+(w\d)\s+acquired\s+(\d+)", result.stdout, re.MULTILINE)
    assert len(acquired) == 6
    tokens = [int(token) for _, token in acquired]
    assert tokens == sorted(tokens)


def test_demo_against_a_dead_etcd_exits_with_backend_unavailable() -> None:
    result = run("--url", f"etcd://127.0.0.1:{free_port()}", "demo")
    assert result.returncode == 4, result.stderr
    assert "backend unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_on_redis_hands_the_lock_around(redis_server: RedisServer) -> None:
    """Redis tokens start at the server's clock in µs: the demo shows them relative, and says so."""
    result = run("--url", redis_server.url, "demo", "--workers", "3", "--rounds", "2", "--hold", "0.02")
    assert result.returncode == 0, result.stderr
    acquired = re.findall(r"^\s*[\d.]+\s+(w\d)\s+acquired\s+\+(\d+)", result.stdout, re.MULTILINE)
    assert len(acquired) == 6
    tokens = [int(token) for _, token in acquired]
    assert tokens[0] == 1
    assert tokens == sorted(tokens)
    [base] = re.findall(r"shown as \+N: the token minus (\d+)", result.stdout)
    assert int(base) > 1_000_000


def test_demo_piped_into_head_stops_quietly() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "distlock_async", "demo", "--plain", "--rounds", "500", "--hold", "0.001"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline()
        proc.stdout.close()  # what head does once it has its lines (2,000 sections: far more than a pipe holds)
        assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
        assert proc.stderr is not None
        assert proc.stderr.read() == b""


def test_demo_against_a_dead_server_exits_with_backend_unavailable() -> None:
    result = run("--url", f"redis://127.0.0.1:{free_port()}/0?socket_timeout=1", "demo")
    assert result.returncode == 4, result.stderr
    assert "backend unavailable" in result.stderr
    assert "Traceback" not in result.stderr


# --- run and status, against the suite's Redis server ---------------------------------------------------

#: The command that ``distlock run`` runs in these tests: it marks that it started, then waits for a
#: signal, which it records in a file named after the signal before exiting with ``argv[2]`` (or, with
#: ``argv[2] == "stay"``, staying put until it is killed).
CHILD = """
import pathlib, signal, sys
marks = pathlib.Path(sys.argv[1])
def on_signal(sig, frame):
    (marks / f"got-{sig}").write_text("")
    if sys.argv[2] != "stay":
        sys.exit(int(sys.argv[2]))
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
(marks / "started").write_text("")
while True:
    signal.pause()
"""

_keys = itertools.count()


@pytest.fixture
def key() -> str:
    return f"cli-{os.getpid()}-{next(_keys)}"


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    yield client
    client.close()


def lock_key(key: str) -> str:
    return f"distlock:{{{key}}}"


def start(url: str, *args: str) -> subprocess.Popen[str]:
    """``distlock run`` in the background, in a session of its own: no terminal sends it signals."""
    return subprocess.Popen(
        [sys.executable, "-m", "distlock_async", "--url", url, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "error"},
        start_new_session=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"distlock exited with {proc.returncode} before {path.name} appeared: {err}")
        assert time.monotonic() < deadline, f"{path.name} did not appear within 30 s"
        time.sleep(0.01)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def child(tmp_path: Path, on_signal: str = "0") -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return [sys.executable, str(script), str(tmp_path), on_signal]


def test_run_holds_the_lock_while_the_command_runs_and_passes_its_exit_code(
    redis_server: RedisServer, admin: redis.Redis, key: str
) -> None:
    status = f"{sys.executable} -m distlock_async status --url {redis_server.url}"
    script = f'{status} {key} && {status} --json {key} && echo "$DISTLOCK_KEY $DISTLOCK_FENCING_TOKEN $PPID" && exit 7'
    result = run("--url", redis_server.url, "run", key, "--", "/bin/sh", "-c", script)
    assert result.returncode == 7, result.stderr
    text, doc, env = result.stdout.splitlines()
    # The holder is distlock run itself, the shell's parent: "<hostname>:<pid>" by default.
    distlock_pid = env.rpartition(" ")[2]
    holder = f"{socket.gethostname()}:{distlock_pid}"
    assert re.fullmatch(rf"'{key}' is held by '{re.escape(holder)}', \d+\.\d{{3}} s left; fencing counter \d+", text)
    state = json.loads(doc)
    assert state["key"] == key
    assert state["held"] is True
    assert 0 < state["ttl"] <= 30
    assert state["holder"] == holder
    assert env == f"{key} {state['fencing_counter']} {distlock_pid}", "the command knows its key and fencing token"
    assert admin.exists(lock_key(key)) == 0, "released when the command exited"


def test_status_of_a_free_key_and_a_fencing_counter_that_rises(redis_server: RedisServer, key: str) -> None:
    result = run("--url", redis_server.url, "status", key)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"'{key}' is free; no fencing counter kept\n"
    assert json.loads(run("--url", redis_server.url, "status", "--json", key).stdout) == {
        "key": key,
        "held": False,
        "ttl": None,
        "fencing_counter": None,
        "holder": None,
    }
    counters = []
    for _ in range(2):
        assert run("--url", redis_server.url, "run", key, "--", "true").returncode == 0
        state = json.loads(run("--url", redis_server.url, "status", "--json", key).stdout)
        assert state["held"] is False
        counters.append(state["fencing_counter"])
    assert counters[0] < counters[1]
    text = run("--url", redis_server.url, "status", key).stdout
    assert text == f"'{key}' is free; fencing counter {counters[1]}\n"


def test_status_names_the_holder_that_obtained_with_a_label(redis_server: RedisServer, key: str) -> None:
    probe = f"""
import asyncio, subprocess, sys
from distlock_async import Options, from_url

async def main():
    async with from_url({redis_server.url!r}, Options(holder="nightly build ü")) as locker:
        async with locker.lock({key!r}):
            status = [sys.executable, "-m", "distlock_async", "--url", {redis_server.url!r}, "status"]
            print(subprocess.run([*status, {key!r}], capture_output=True, text=True).stdout, end="")
            print(subprocess.run([*status, "--json", {key!r}], capture_output=True, text=True).stdout, end="")

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    text, doc = result.stdout.splitlines()
    assert re.fullmatch(rf"'{key}' is held by 'nightly build ü', \d+\.\d{{3}} s left; fencing counter \d+", text)
    assert json.loads(doc)["holder"] == "nightly build ü"


def test_status_of_a_lock_without_a_label_says_held_without_naming_anyone(
    redis_server: RedisServer, admin: redis.Redis, key: str
) -> None:
    admin.set(lock_key(key), "someone-else", px=60_000)  # written by hand, or by an older release
    text = run("--url", redis_server.url, "status", key).stdout
    assert re.fullmatch(rf"'{key}' is held, \d+\.\d{{3}} s left; no fencing counter kept\n", text)
    assert json.loads(run("--url", redis_server.url, "status", "--json", key).stdout)["holder"] is None
    admin.delete(lock_key(key))


def test_a_command_killed_by_a_signal_exits_with_128_plus_the_signal(redis_server: RedisServer, key: str) -> None:
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    result = run("--url", redis_server.url, "run", key, "--", sys.executable, "-c", kill_self)
    assert result.returncode == 128 + signal.SIGKILL, result.stderr


def test_run_exits_with_3_without_running_the_command_when_the_lock_is_held(
    redis_server: RedisServer, admin: redis.Redis, key: str, tmp_path: Path
) -> None:
    admin.set(lock_key(key), "someone-else", px=60_000)
    marker = tmp_path / "ran"
    result = run("--url", redis_server.url, "run", "--wait", "0.2", key, "--", "touch", str(marker))
    assert result.returncode == 3, result.stderr
    assert f"lock '{key}' not obtained" in result.stderr
    assert not marker.exists()
    assert admin.get(lock_key(key)) == b"someone-else"


def test_run_wait_is_seconds_whatever_the_retry_delay(
    redis_server: RedisServer, admin: redis.Redis, key: str, tmp_path: Path
) -> None:
    # --wait is obtain()'s timeout: a retry delay far beyond it does not stretch the wait (it used to be
    # turned into a count of retries, here one retry 60 s later).
    admin.set(lock_key(key), "someone-else", px=60_000)
    marker = tmp_path / "ran"
    started = time.monotonic()
    result = run(
        "--url", redis_server.url, "run", "--wait", "1", "--retry-delay", "60", key, "--", "touch", str(marker)
    )
    waited = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert 0.9 <= waited < 20, waited
    assert not marker.exists()


def test_a_signal_while_waiting_for_the_lock_ends_the_wait_without_running_the_command(
    redis_server: RedisServer, admin: redis.Redis, key: str, tmp_path: Path
) -> None:
    admin.set(lock_key(key), "someone-else", px=60_000)
    marker = tmp_path / "ran"
    proc = start(redis_server.url, "run", "--wait", "inf", key, "--", "touch", str(marker))
    deadline = time.monotonic() + 30
    # Subscribed to the lock's release channel: it waits, with its signal handlers in place.
    while admin.pubsub_numsub(lock_key(key))[0][1] == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "distlock run never started waiting"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert not marker.exists()
    assert admin.get(lock_key(key)) == b"someone-else"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_are_passed_to_the_command_and_the_lock_released_after_it(
    redis_server: RedisServer, admin: redis.Redis, key: str, tmp_path: Path, sig: signal.Signals
) -> None:
    proc = start(redis_server.url, "run", key, "--", *child(tmp_path, on_signal="42"))
    wait_for(tmp_path / "started", proc)
    assert admin.exists(lock_key(key)) == 1
    proc.send_signal(sig)
    code, err = finish(proc)
    assert code == 42, err
    assert (tmp_path / f"got-{int(sig)}").exists()
    assert admin.exists(lock_key(key)) == 0


def test_a_lost_lock_stops_the_command_with_sigterm_and_exits_with_5(
    redis_server: RedisServer, admin: redis.Redis, key: str, tmp_path: Path
) -> None:
    proc = start(redis_server.url, "run", "--ttl", "10", "--refresh", "0.1", key, "--", *child(tmp_path))
    wait_for(tmp_path / "started", proc)
    admin.delete(lock_key(key))  # an operator, or a failover that lost the key
    wait_for(tmp_path / f"got-{int(signal.SIGTERM)}", proc)
    code, err = finish(proc)
    assert code == 5, err
    assert f"lock '{key}' was lost" in err
    assert "Traceback" not in err


def test_a_command_that_ignores_sigterm_after_a_loss_is_killed_after_the_grace_period(
    redis_server: RedisServer, admin: redis.Redis, key: str, tmp_path: Path
) -> None:
    args = ("run", "--ttl", "10", "--refresh", "0.1", "--grace", "0.2", key, "--", *child(tmp_path, "stay"))
    proc = start(redis_server.url, *args)
    wait_for(tmp_path / "started", proc)
    admin.delete(lock_key(key))
    code, err = finish(proc)
    assert code == 5, err
    assert (tmp_path / f"got-{int(signal.SIGTERM)}").exists()
    assert "sending SIGKILL" in err


def test_a_missing_command_exits_with_127_without_taking_the_lock(
    redis_server: RedisServer, admin: redis.Redis, key: str
) -> None:
    result = run("--url", redis_server.url, "run", key, "--", "no-such-command-anywhere")
    assert result.returncode == 127
    assert "command not found: no-such-command-anywhere" in result.stderr
    assert admin.exists(lock_key(key)) == 0


def test_status_against_a_dead_server_exits_with_backend_unavailable() -> None:
    result = run("--url", f"redis://127.0.0.1:{free_port()}/0?socket_timeout=1", "status", "k")
    assert result.returncode == 4, result.stderr
    assert "backend unavailable" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["run", "k", "--", "true"], ["status", "k"]], ids=["run", "status"])
def test_run_and_status_refuse_memory_urls_with_a_usage_error(command: list[str]) -> None:
    result = run(*command)  # no --url, no $DISTLOCK_URL: memory://
    assert result.returncode == 2
    assert "memory:// locks live inside one process" in result.stderr
    assert "Traceback" not in result.stderr


def test_url_comes_from_the_environment(redis_server: RedisServer, key: str) -> None:
    result = run("status", key, env={"DISTLOCK_URL": redis_server.url})
    assert result.returncode == 0, result.stderr
    assert "is free" in result.stdout


def test_help_lists_the_exit_codes() -> None:
    result = run("run", "--help")
    assert result.returncode == 0
    for code in ("2 ", "3 ", "4 ", "5 ", "126", "127", "128+N"):
        assert f"\n  {code}" in result.stdout


# --- run --limit, elect, leader: semaphores and elections, on Redis and etcd ---------------------------

#: A command for ``run --limit``: it marks itself running in ``argv[1]``, notes an overlap beyond
#: ``argv[2]`` commands, and waits for the file ``go`` before it leaves.
PERMIT_CHILD = """
import os, pathlib, sys, time
marks, limit = pathlib.Path(sys.argv[1]), int(sys.argv[2])
mine = marks / f"running-{os.getpid()}"
mine.write_text("")
(marks / f"ran-{os.getpid()}").write_text("")
if len(list(marks.glob("running-*"))) > limit:
    (marks / "overlap").write_text("")
while not (marks / "go").exists():
    time.sleep(0.01)
mine.unlink()
"""


@pytest.fixture(params=["redis", "etcd"])
def server_url(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue("redis_server" if request.param == "redis" else "etcd_server")
    return str(server.url)


def _wait_until(condition: Callable[[], bool], procs: list[subprocess.Popen[str]], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                _, err = proc.communicate()
                raise AssertionError(f"distlock exited with {proc.returncode} before {what}: {err}")
        assert time.monotonic() < deadline, f"not within 30 s: {what}"
        time.sleep(0.01)


def test_run_limit_runs_at_most_n_commands_at_once(server_url: str, key: str, tmp_path: Path) -> None:
    script = tmp_path / "permit.py"
    script.write_text(PERMIT_CHILD)
    procs = [
        start(
            server_url,
            "run",
            "--limit",
            "2",
            "--wait",
            "inf",
            key,
            "--",
            sys.executable,
            str(script),
            str(tmp_path),
            "2",
        )
        for _ in range(3)
    ]
    _wait_until(lambda: len(list(tmp_path.glob("running-*"))) == 2, procs, "two commands run")
    time.sleep(0.5)  # the third waits for a permit (a false pass at worst, never a false failure)
    assert len(list(tmp_path.glob("ran-*"))) == 2
    (tmp_path / "go").write_text("")
    for proc in procs:
        code, err = finish(proc)
        assert code == 0, err
    assert len(list(tmp_path.glob("ran-*"))) == 3
    assert not (tmp_path / "overlap").exists()


def test_elect_runs_the_command_while_leading_and_leader_shows_it(server_url: str, key: str) -> None:
    leader = f"{sys.executable} -m distlock_async leader --url {server_url}"
    script = f'{leader} {key} && {leader} --json {key} && echo "$DISTLOCK_KEY $DISTLOCK_FENCING_TOKEN"'
    result = run("--url", server_url, "elect", "--value", "replica-7", key, "--", "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    text, doc, env = result.stdout.splitlines()
    token = int(env.split()[-1])
    assert text == f"'{key}' is led by 'replica-7' (fencing token {token})"
    assert json.loads(doc) == {"name": key, "leader": {"value": "replica-7", "fencing_token": token}}
    assert env == f"{key} {token}"
    after = run("--url", server_url, "leader", key)
    assert after.returncode == 0, after.stderr
    assert after.stdout == f"'{key}' has no leader\n", "the leader resigned when its command exited"


def test_a_second_candidate_leads_once_the_first_command_exits(server_url: str, key: str, tmp_path: Path) -> None:
    first = start(server_url, "elect", "--value", "first", key, "--", *child(tmp_path, on_signal="0"))
    wait_for(tmp_path / "started", first)
    second_marks = tmp_path / "second"
    second_marks.mkdir()
    second = start(server_url, "elect", "--value", "second", key, "--", "touch", str(second_marks / "led"))
    time.sleep(0.5)  # it campaigns behind the leader (a false pass at worst)
    assert not (second_marks / "led").exists()
    assert "'first'" in run("--url", server_url, "leader", key).stdout
    first.send_signal(signal.SIGTERM)
    code, err = finish(first)
    assert code == 0, err
    code, err = finish(second)
    assert code == 0, err
    assert (second_marks / "led").exists()


def test_leader_watch_prints_each_change_and_ends_with_the_signal(server_url: str, key: str) -> None:
    watcher = start(server_url, "leader", "--watch", key)
    assert watcher.stdout is not None
    assert watcher.stdout.readline() == f"'{key}' has no leader\n"
    result = run("--url", server_url, "elect", "--value", "w", key, "--", "true")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"'{key}' is led by 'w' \(fencing token \d+\)\n", watcher.stdout.readline())
    assert watcher.stdout.readline() == f"'{key}' has no leader\n"
    watcher.send_signal(signal.SIGINT)
    code, err = finish(watcher)
    assert code == 128 + signal.SIGINT, err
    assert "Traceback" not in err


def test_a_signal_while_campaigning_ends_the_wait_without_running_the_command(
    server_url: str, key: str, tmp_path: Path
) -> None:
    first = start(server_url, "elect", key, "--", *child(tmp_path, on_signal="0"))
    wait_for(tmp_path / "started", first)
    marker = tmp_path / "ran"
    second = start(server_url, "elect", key, "--", "touch", str(marker))
    time.sleep(0.5)
    second.send_signal(signal.SIGTERM)
    code, err = finish(second)
    assert code == 128 + signal.SIGTERM, err
    assert not marker.exists()
    first.send_signal(signal.SIGTERM)
    assert finish(first)[0] == 0


@pytest.mark.parametrize("command", [["elect", "n", "--", "true"], ["leader", "n"]], ids=["elect", "leader"])
def test_elect_and_leader_refuse_memory_urls_with_a_usage_error(command: list[str]) -> None:
    result = run(*command)
    assert result.returncode == 2
    assert "memory:// locks live inside one process" in result.stderr


def test_elect_without_a_command_is_a_usage_error(redis_server: RedisServer) -> None:
    result = run("--url", redis_server.url, "elect", "n")
    assert result.returncode == 2
    assert "elect needs a command: distlock elect NAME -- CMD" in result.stderr


# --- status --semaphore, status --election ---------------------------------------------------------------

#: Two permits held by lockers with labels, a third caller queued behind them: what ``status --semaphore``
#: shows meanwhile, and once all are gone. The status commands run as subprocesses while the event loop
#: keeps the waiter's place alive.
SEMAPHORE_PROBE = """
import asyncio, sys
import anyio
from distlock_async import Options, from_url

URL, KEY = sys.argv[1], sys.argv[2]

async def status(*args):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "distlock_async", "--url", URL, "status", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    print(out.decode(), end="")

async def main():
    async with from_url(URL, Options(holder="a:1")) as a, from_url(URL, Options(holder="b 2 ü")) as b, \\
            from_url(URL, Options(holder="c")) as c:
        first = await a.obtain_permit(KEY, 2)
        second = await b.obtain_permit(KEY, 2)
        waiter = asyncio.ensure_future(c.obtain_permit(KEY, 2, timeout=60))
        with anyio.fail_after(30):
            while (await a.inspect_semaphore(KEY)).waiting == 0:
                await asyncio.sleep(0.01)
        await status("--semaphore", KEY)
        await status("--json", "--semaphore", KEY)
        await first.release()
        await (await waiter).release()
        await second.release()
    await status("--semaphore", KEY)

asyncio.run(main())
"""


def test_status_of_a_semaphore_names_its_holders_in_grant_order_and_counts_its_waiters(
    server_url: str, key: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SEMAPHORE_PROBE, server_url, key], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    text, doc, after = result.stdout.splitlines()
    state = json.loads(doc)
    counter = state["fencing_counter"]
    assert isinstance(counter, int)
    assert state == {"name": key, "held": 2, "holders": ["a:1", "b 2 ü"], "waiting": 1, "fencing_counter": counter}
    assert text == f"'{key}': 2 permits held (by 'a:1', 'b 2 ü'), 1 waiting; fencing counter {counter}"
    match = re.fullmatch(rf"'{key}': 0 permits held, 0 waiting; fencing counter (\d+)", after)
    assert match is not None, after
    assert int(match[1]) > counter, "three permits were granted since"


def test_status_of_an_unused_semaphore_holds_nothing(redis_server: RedisServer, key: str) -> None:
    result = run("--url", redis_server.url, "status", "--semaphore", key)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"'{key}': 0 permits held, 0 waiting; no fencing counter kept\n"
    assert json.loads(run("--url", redis_server.url, "status", "--semaphore", key, "--json").stdout) == {
        "name": key,
        "held": 0,
        "holders": [],
        "waiting": 0,
        "fencing_counter": None,
    }


def test_status_of_an_election_prints_the_leader_as_leader_does(server_url: str, key: str) -> None:
    distlock = f"{sys.executable} -m distlock_async --url {server_url}"
    script = (
        f"{distlock} status --election {key} && {distlock} status --json --election {key} && "
        f"{distlock} leader {key} && {distlock} leader --json {key}"
    )
    result = run("--url", server_url, "elect", "--value", "replica 7", key, "--", "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    text, doc, leader_text, leader_doc = result.stdout.splitlines()
    assert re.fullmatch(rf"'{key}' is led by 'replica 7' \(fencing token \d+\)", text)
    assert json.loads(doc)["leader"]["value"] == "replica 7"
    assert (text, doc) == (leader_text, leader_doc)
    after = run("--url", server_url, "status", "--election", key)
    assert after.returncode == 0, after.stderr
    assert after.stdout == f"'{key}' has no leader\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "status needs what to show: KEY (a lock), --semaphore NAME or --election NAME"),
        (["k", "--semaphore", "p"], "argument --semaphore: not allowed with argument KEY"),
        (["--semaphore", "p", "--election", "e"], "argument --election: not allowed with argument --semaphore"),
        (["--semaphore", ""], "name must not be empty"),
    ],
    ids=["nothing", "key-and-semaphore", "semaphore-and-election", "empty-name"],
)
def test_status_takes_exactly_one_thing_to_show(redis_server: RedisServer, args: list[str], message: str) -> None:
    result = run("--url", redis_server.url, "status", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", [["--semaphore", "p"], ["--election", "e"]], ids=["semaphore", "election"])
def test_status_of_a_semaphore_or_election_refuses_memory_and_reports_a_dead_server(args: list[str]) -> None:
    result = run("status", *args)
    assert result.returncode == 2
    assert "memory:// locks live inside one process" in result.stderr
    result = run("--url", f"redis://127.0.0.1:{free_port()}/0?socket_timeout=1", "status", *args)
    assert result.returncode == 4, result.stderr
    assert "backend unavailable" in result.stderr
