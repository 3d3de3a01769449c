"""The import-time check of the ``_compat_*`` modules: does the installed client library still have the
private names we rely on? A release that renamed one fails at import with a message naming the
installed version and the supported range, instead of an ``AttributeError`` in the middle of a lock."""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, requires, version

__all__ = ["require_names"]


def _named(cls: type, name: str) -> bool:
    """Whether ``cls`` has ``name``: as a method, class attribute or slot, or set by any of its methods."""
    if hasattr(cls, name):
        return True
    for klass in cls.__mro__:
        for member in vars(klass).values():
            code = getattr(member, "__code__", None)
            if code is not None and name in code.co_names:
                return True
    return False


def supported(distribution: str) -> str:
    """The range of ``distribution`` that distlock-async declares, as its installed metadata says."""
    try:
        declared = requires("distlock-async") or []
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        declared = []
    for requirement in declared:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)", requirement)
        if match and match.group(1).lower().replace("_", "-") == distribution:
            return f"{distribution}{match.group(3).split(';')[0].strip() or ' (any version)'}"
    return f"{distribution} as pyproject.toml declares it"


def require_names(distribution: str, needs: Iterable[tuple[type, Iterable[str]]]) -> None:
    """Raise ``ImportError`` unless every class of ``needs`` has every name listed with it."""
    missing = [
        f"{cls.__module__}.{cls.__qualname__}.{name}" for cls, names in needs for name in names if not _named(cls, name)
    ]
    if missing:
        try:
            installed = version(distribution)
        except PackageNotFoundError:  # pragma: no cover - imported, so installed somehow
            installed = "unknown"
        raise ImportError(
            f"distlock_async does not support the installed {distribution} {installed}: it lacks "
            f"{', '.join(missing)}, which distlock_async relies on; install a supported version "
            f"({supported(distribution)})"
        )
