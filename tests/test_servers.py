"""The test servers of ``distlock_async.testing.servers`` die with the process that started them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_START = """
from distlock_async.testing.servers import EtcdServer, RedisServer
servers = [RedisServer(), EtcdServer()]
for server in servers:
    server.start()
print(*(server.proc.pid for server in servers), flush=True)
for server in servers:
    print(server.dir, flush=True)
input()  # killed here
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that nobody reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_servers_die_with_a_test_process_killed_before_its_cleanup() -> None:
    """A test run killed by SIGKILL (a CI timeout, say) never runs its fixtures' cleanup; its Redis and
    etcd servers must not run on."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", _START], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    ) as parent:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2, "the servers did not start"
        dirs = [Path(parent.stdout.readline().strip()) for _ in pids]
        assert all(_alive(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if _alive(pid)] == [], "a server outlived the test process that started it"
    for path in dirs:  # what the killed process's cleanup would have removed
        shutil.rmtree(path, ignore_errors=True)
