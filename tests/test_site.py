"""The documentation site as readers see it: built with ``mkdocs build --strict``, then the rendered API
and Exceptions pages are read for what the docstrings must not leave behind.

Docstrings are Markdown (mkdocstrings renders them), so a cross-reference is written
``[`Options`][distlock_async.Options]``; a reST role such as ``:class:`Options``` would be printed as is.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("reference/api", "reference/exceptions")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed here (it comes with the docs dependency group, which tests includes)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _html(site: Path, page: str) -> str:
    return (site / page / "index.html").read_text(encoding="utf-8")


def _text(markup: str) -> str:
    """What a reader sees of ``markup``: the text, without tags and attributes."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


@pytest.mark.parametrize("page", PAGES)
def test_no_rest_role_is_printed_literally(site: Path, page: str) -> None:
    # Markdown turns the role's backticks into <code>, so the text shows ":class:Options" and the like.
    text = _text(_html(site, page))
    roles = re.findall(r":(?:class|meth|func|attr|exc|obj|data|mod):\S*", text)
    assert roles == []


#: Cross-references written in the docstrings that each page renders, which must have become links.
LINKED = {
    "reference/api": {
        "distlock_async.Options",  # Locker
        "distlock_async.Lock",  # Locker
        "distlock_async.Locker.obtain",  # Lock, Locker.lock
        "distlock_async.Locker.inspect",  # KeyState
        "distlock_async.Lock.refresh",  # Lock.start_refresh
        "distlock_async.Lock.start_refresh",  # Refresher
        "distlock_async.LockLostError",  # Locker.lock, Locker.aclose
        "distlock_async.BackendError",  # RedisLocker
        "distlock_async.MemoryStore",  # MemoryLocker
        "distlock_async.MemoryLocker",  # MemoryStore, from_url
        "distlock_async.RedisLocker.from_url",  # from_url
        "distlock_async.EtcdLocker.from_url",  # from_url
        "distlock_async.EtcdOptions",  # EtcdLocker.from_url
    },
    "reference/exceptions": {"distlock_async.LockNotHeldError", "distlock_async.BackendError"},  # LockLostError
}


@pytest.mark.parametrize("page", PAGES)
def test_every_cross_reference_is_a_link(site: Path, page: str) -> None:
    markup = _html(site, page)
    # autorefs leaves a reference it could not resolve as its Markdown, or as an <autoref> tag.
    assert re.findall(r"\]\[distlock_async[\w.]*\]", _text(markup)) == []
    assert "<autoref" not in markup
    targets = set(re.findall(r'<a class="autorefs autorefs-internal"[^>]*href="[^"#]*#([^"]+)"', markup))
    assert LINKED[page] <= targets


@pytest.mark.parametrize("page", PAGES)
def test_no_private_name_shows(site: Path, page: str) -> None:
    text = _text(_html(site, page))
    assert "Bases: LockerBase" not in text
    private = re.findall(r"\b(?:LockerBase|HeldLock|RefreshTask|LockContext|distlock_async\._\w+)", text)
    assert private == []
    signatures = re.findall(r'<div class="doc-signature.*?</pre>', _html(site, page), re.S)
    assert re.findall(r"(?<![\w.])_[A-Za-z]\w*", _text("".join(signatures))) == []  # a private TypeVar, say


def test_long_signatures_are_wrapped_one_parameter_a_line(site: Path) -> None:
    # mkdocstrings formats signatures with ruff (or black); without either they stay on one long line.
    markup = _html(site, "reference/api")
    start = markup.index('class="doc-signature', markup.index('id="distlock_async.Locker.obtain"'))
    signature = _text(markup[start : markup.index("</pre>", start)])
    lines = [line.strip() for line in signature.splitlines() if line.strip()]
    assert "key: str," in lines
    assert "timeout: float | None = None," in lines
