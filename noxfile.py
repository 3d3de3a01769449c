"""Development sessions: ``nox -s lint typecheck tests docs``.

``tests`` runs on the interpreter that runs nox (so a fresh machine with one Python works);
``tests_all`` runs the suite on every supported Python that is installed.
"""

from __future__ import annotations

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


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite against real servers, on the Python running nox."""
    _install(session, "tests")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHONS)
def tests_all(session: nox.Session) -> None:
    """The test suite on every supported Python."""
    _install(session, "tests")
    session.run("pytest", *session.posargs)


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
