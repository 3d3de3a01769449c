"""The command line as users run it: a real subprocess."""

from __future__ import annotations

import re
import subprocess
import sys

from .servers import EtcdServer, RedisServer, free_port


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distlock_async", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "error"},
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
    result = run("--url", redis_server.url, "demo", "--workers", "3", "--rounds", "2", "--hold", "0.02")
    assert result.returncode == 0, result.stderr
    acquired = re.findall(r"^\s*[\d.]+\s+(w\d)\s+acquired\s+(\d+)", result.stdout, re.MULTILINE)
    assert len(acquired) == 6
    tokens = [int(token) for _, token in acquired]
    assert tokens == sorted(tokens)


def test_demo_against_a_dead_server_exits_with_backend_unavailable() -> None:
    result = run("--url", f"redis://127.0.0.1:{free_port()}/0?socket_timeout=1", "demo")
    assert result.returncode == 4, result.stderr
    assert "backend unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_command_is_a_usage_error() -> None:
    result = run()
    assert result.returncode == 2
    assert "COMMAND" in result.stderr
