"""Development sessions: ``nox -s lint typecheck tests docs``.

``tests`` runs on the interpreter that runs nox (so a fresh machine with one Python works);
``tests_all`` runs the suite on every supported Python that is installed.
"""

from __future__ import annotations

import os
import shutil

import nox

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


#: Server binaries the tests start (and etcdctl, the Go client of the interop test), and their Debian packages.
SERVERS = {"redis-server": "redis-server", "etcd": "etcd-server", "etcdctl": "etcd-client"}


#: Tools some tier-2 tests need (network namespaces for the etcd partition); without them those tests
#: skip, saying why. Installed only when the session can (root with apt-get).
OPTIONAL = {"ip": "iproute2"}


def _ensure_servers(session: nox.Session) -> None:
    """Take the servers from PATH, or install Debian's packages when running as root."""
    missing = sorted({package for binary, package in SERVERS.items() if shutil.which(binary) is None})
    can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if missing and not can_install:
        session.error(f"the tests need {', '.join(missing)} on PATH; install them (as root: apt-get install ...)")
    if can_install:
        missing += sorted({package for binary, package in OPTIONAL.items() if shutil.which(binary) is None})
    if not missing:
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, external=True, env=env)


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
