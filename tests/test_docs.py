"""Every ``python`` code block of the README and of docs/ runs, as a user would paste it.

Blocks fenced as ``python`` are complete programs; fragments that need more than one Redis server
(Sentinel, Cluster) use ``py``, and output uses ``text``. A block that talks to ``redis://localhost:6379``
or ``etcd://localhost:2379`` runs against the suite's own server instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distlock_async.testing.servers import EtcdServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LOCAL_REDIS = "redis://localhost:6379"
LOCAL_ETCD = "etcd://localhost:2379"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for path in SOURCES:
        for n, match in enumerate(BLOCK.finditer(path.read_text(encoding="utf-8")), start=1):
            found.append((f"{path.relative_to(ROOT)}#{n}", match.group(1)))
    return found


BLOCKS = _blocks()


def test_the_docs_have_runnable_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_code_block_runs(where: str, code: str, request: pytest.FixtureRequest) -> None:
    if LOCAL_REDIS in code:
        server: RedisServer = request.getfixturevalue("redis_server")
        code = code.replace(LOCAL_REDIS, f"redis://127.0.0.1:{server.port}")
    if LOCAL_ETCD in code:
        etcd: EtcdServer = request.getfixturevalue("etcd_server")
        code = code.replace(LOCAL_ETCD, etcd.url)
    exec(compile(code, where, "exec"), {"__name__": "__main__"})
