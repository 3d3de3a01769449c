"""Every code block of the README and of docs/ is run here, or is not Python.

What a block's fence says decides what happens to it:

- ``python``: a complete program, run as a user would paste it (as ``__main__``). The addresses in it are
  placeholders, rewritten to the suite's own servers before it runs (``host:port``, ``"host", port`` and
  ``host="host", port=port`` forms; ``N`` is a member's number, from 1):

  ==========================  ===========================================================================
  placeholder                 server
  ==========================  ===========================================================================
  ``localhost:6379``          ``redis_server``
  ``localhost:2379``          ``etcd_server``
  ``redis.internal:6380``     a Redis with TLS, the password ``s3cret`` and an ACL user ``locks`` (below);
                              ``/etc/ssl/redis-ca.pem`` and ``/etc/ssl/locks-client.{pem,key}`` name its files
  ``etcd.internal:2379``      an etcd with TLS, client certificates and the user ``locks`` (below);
                              ``/etc/etcd/{ca,client,client-key}.pem`` name its files, and the
                              password is in ``$ETCD_PASSWORD``
  ``sentinel-N:26379``        ``redis_sentinel``'s Sentinel (one Sentinel stands for all), master ``mymaster``
  ``redis-node-N:7000``       ``redis_cluster``'s N-th node
  ``etcd-N:2379``             ``etcd_cluster``'s N-th member
  ==========================  ===========================================================================

  A placeholder host with a port not in the table fails the block, so no example silently talks to
  a server the suite does not run.
- ``python title="test_….py"``: a pytest module of the user's suite; run by pytest in a subprocess with
  pytest-asyncio in strict mode and this package's pytest plugin, and every test in it must pass.
- a block that only includes a file (``--8<-- "examples/….py"``, any language): the file is one of
  ``examples/``, which ``tests/test_examples.py`` or ``tests/test_recipes.py`` imports and runs.
- ``sh``, ``bash``, ``console``: shell. Every ``distlock …`` or ``python -m distlock_async …`` command in
  it (after ``$ `` in ``console``) must parse with the command line's own argument parser.
- ``text``: output, diagrams, crontabs; not run.

Any other fence (``py``, ``pycon``, none at all) fails ``test_every_block_is_run_or_not_python``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import distlock_async
from distlock_async._cli import _parser
from distlock_async.testing.servers import EtcdServer, TLSRedisServer, running

from .helpers import run_user_suite, running_or_skip

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
INCLUDE = re.compile(r'\A--8<-- "(?P<path>[^"]+)"\n\Z')
SHELL = {"sh", "bash", "console"}
#: The test modules that import and run ``examples/``.
EXAMPLE_RUNNERS = ("test_examples.py", "test_recipes.py")
NOT_PYTHON = {"text", *SHELL}


@dataclass(frozen=True)
class Block:
    where: str  # path and line of the opening fence
    lang: str
    title: str
    body: str


def _blocks() -> list[Block]:
    found = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            lang, _, attrs = match["info"].strip().partition(" ")
            title = re.search(r'title="([^"]*)"', attrs)
            indent = match["indent"]
            body = "".join(line.removeprefix(indent) for line in match["body"].splitlines(keepends=True))
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(f"{path.relative_to(ROOT)}:{line}", lang, title[1] if title else "", body))
    return found


BLOCKS = _blocks()
PROGRAMS = [b for b in BLOCKS if b.lang == "python" and not b.title and not INCLUDE.match(b.body)]
PYTEST_MODULES = [b for b in BLOCKS if b.lang == "python" and b.title.startswith("test_")]
INCLUDES = [b for b in BLOCKS if INCLUDE.match(b.body)]
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELL]


def _ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


def test_the_docs_have_runnable_examples() -> None:
    assert len(PROGRAMS) >= 20
    assert PYTEST_MODULES
    assert INCLUDES


def test_every_block_is_run_or_not_python() -> None:
    unrun = [
        f"{b.where} ({b.lang or 'no language'})"
        for b in BLOCKS
        if b not in PROGRAMS and b not in PYTEST_MODULES and b not in INCLUDES and b.lang not in NOT_PYTHON
    ]
    assert not unrun, f"code blocks that no test runs; see this module's docstring: {unrun}"


def test_the_reference_renders_every_public_name() -> None:
    reference = "".join((ROOT / "docs" / "reference" / page).read_text() for page in ("api.md", "exceptions.md"))
    rendered = set(re.findall(r"^::: distlock_async\.(\w+)$", reference, re.M))
    assert rendered == set(distlock_async.__all__)


# --- complete programs -----------------------------------------------------------------------------------


class DocsTLSRedis(TLSRedisServer):
    """The docs' ``redis.internal:6380``: TLS, a password, and the ACL user ``locks``.

    The server does not ask for client certificates, so the client certificate a doc passes (the server's
    own pair here) is loaded, not checked.
    """

    password = "s3cret"

    def __init__(self) -> None:
        super().__init__()
        self.extra += ["--user", "locks", "on", f">{self.password}", "~*", "&*", "+@all"]
        self.files = {
            "/etc/ssl/redis-ca.pem": str(self.ca_file),
            "/etc/ssl/locks-client.pem": str(self.dir / "cert.pem"),
            "/etc/ssl/locks-client.key": str(self.dir / "key.pem"),
        }


@pytest.fixture(scope="module")
def docs_tls_redis() -> Iterator[DocsTLSRedis]:
    yield from running_or_skip(DocsTLSRedis())


class DocsTLSEtcd(EtcdServer):
    """The docs' ``etcd.internal:2379``: TLS with client certificates, and users (``locks``, allowed the
    locker's keys)."""

    password = "s3cret"

    def __init__(self) -> None:
        super().__init__(client_cert_auth=True, server_names=("127.0.0.1", "etcd.internal"))
        self.files = {
            "/etc/etcd/ca.pem": str(self.ca_file),
            "/etc/etcd/client.pem": str(self.client_cert_file),
            "/etc/etcd/client-key.pem": str(self.client_key_file),
        }

    def start(self) -> None:
        super().start()
        self.enable_auth("root-pass")
        self.add_user("locks", self.password, "distlock/")


@pytest.fixture(scope="module")
def docs_tls_etcd() -> Iterator[DocsTLSEtcd]:
    yield from running(DocsTLSEtcd())


ADDRESS = re.compile(
    r"""(?P<q>["']?)(?P<host>localhost|redis\.internal|etcd\.internal|sentinel-(?P<n>\d)|redis-node-(?P<m>\d)|etcd-(?P<e>\d))"""
    r"""(?P=q)(?P<sep>:|,\s*(?:port=)?)(?P<port>\d+)"""
)

#: (placeholder host, with N for a member's number; port) -> the fixture, and its real port for member N.
SERVERS: dict[tuple[str, int], tuple[str, Callable[[Any, int], int]]] = {
    ("localhost", 6379): ("redis_server", lambda server, n: server.port),
    ("localhost", 2379): ("etcd_server", lambda server, n: server.port),
    ("redis.internal", 6380): ("docs_tls_redis", lambda server, n: server.tls_port),
    ("etcd.internal", 2379): ("docs_tls_etcd", lambda server, n: server.port),
    ("sentinel-N", 26379): ("redis_sentinel", lambda servers, n: servers.sentinel.port),
    ("redis-node-N", 7000): ("redis_cluster", lambda cluster, n: cluster.ports[n - 1]),
    ("etcd-N", 2379): ("etcd_cluster", lambda cluster, n: cluster.members[n - 1].port),
}


def _on_test_servers(code: str, request: pytest.FixtureRequest) -> str:
    def replace(match: re.Match[str]) -> str:
        number = match["n"] or match["m"] or match["e"]
        host = match["host"] if number is None else match["host"].replace(number, "N")
        place = (host, int(match["port"]))
        if place not in SERVERS:
            pytest.fail(f"{match[0]!r} is no placeholder of a test server; see tests/test_docs.py")
        fixture, port = SERVERS[place]
        server = request.getfixturevalue(fixture)
        q = match["q"]
        return f"{q}127.0.0.1{q}{match['sep']}{port(server, int(number or 1))}"

    code = ADDRESS.sub(replace, code)
    if "redis.internal" in code:
        pytest.fail("redis.internal without its port 6380")
    if "/etc/ssl/" in code:
        server: DocsTLSRedis = request.getfixturevalue("docs_tls_redis")
        for placeholder, path in server.files.items():
            code = code.replace(placeholder, path)
    if "/etc/etcd/" in code:
        etcd: DocsTLSEtcd = request.getfixturevalue("docs_tls_etcd")
        for placeholder, path in etcd.files.items():
            code = code.replace(placeholder, path)
    return code


@pytest.mark.parametrize("block", PROGRAMS, ids=_ids(PROGRAMS))
def test_program_runs(block: Block, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _on_test_servers(block.body, request)
    if "ETCD_PASSWORD" in code:
        monkeypatch.setenv("ETCD_PASSWORD", DocsTLSEtcd.password)
    try:
        exec(compile(code, block.where, "exec"), {"__name__": "__main__"})
    finally:
        gc.collect()  # a connection the program left open warns here, in its own test


# --- pytest modules --------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", PYTEST_MODULES, ids=_ids(PYTEST_MODULES))
def test_pytest_module_passes(block: Block, tmp_path: Path) -> None:
    run_user_suite(tmp_path, block.title, block.body)


# --- included files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", INCLUDES, ids=_ids(INCLUDES))
def test_included_example_is_run_by_the_examples_test(block: Block) -> None:
    match = INCLUDE.match(block.body)
    assert match is not None
    path = Path(match["path"])
    assert path.parent == Path("examples"), f"{block.where} includes {path}, not a file of examples/"
    assert (ROOT / path).is_file()
    runners = "\n".join((ROOT / "tests" / name).read_text(encoding="utf-8") for name in EXAMPLE_RUNNERS)
    # At the top of the module, or in a test (an example whose library the tests group cannot pin).
    assert re.search(rf"^ *from examples import .*\b{path.stem}\b", runners, re.M), f"{path} is not tested"


# --- shell -----------------------------------------------------------------------------------------------


def _commands(block: Block) -> Iterator[list[str]]:
    """The argument lists of the ``distlock`` commands in a shell block."""
    for raw in block.body.splitlines():
        line = raw.strip()
        if block.lang == "console":
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|()"):
                while command and re.fullmatch(r"[A-Za-z_]\w*=.*", command[0]):
                    command.pop(0)  # VAR=value before the command
                if command and Path(command[0]).name == "distlock":
                    yield command[1:]
                elif command[1:3] == ["-m", "distlock_async"] and Path(command[0]).name.startswith("python"):
                    yield command[3:]
                command = []
            else:
                command.append(token)


def _parses(argv: list[str]) -> str | None:
    """``None`` if the command line parses, else argparse's complaint."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            _parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):  # 0: --help
            return err.getvalue()
    return None


def test_the_shell_blocks_have_distlock_commands() -> None:
    assert sum(len(list(_commands(block))) for block in SHELL_BLOCKS) >= 4


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=_ids(SHELL_BLOCKS))
def test_distlock_commands_parse(block: Block) -> None:
    errors = {shlex.join(argv): error for argv in _commands(block) if (error := _parses(argv)) is not None}
    assert not errors, errors


def test_a_bad_command_line_would_be_caught() -> None:
    bad = Block("here", "sh", "", "distlock run --ttl soon job -- true\nDISTLOCK_URL=x distlock stat k\n")
    commands = list(_commands(bad))
    assert commands == [["run", "--ttl", "soon", "job", "--", "true"], ["stat", "k"]]
    assert all(_parses(argv) for argv in commands)
