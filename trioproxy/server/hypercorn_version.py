"""The Hypercorn releases the guards of :mod:`trioproxy.server.hypercorn` were read against.

Rules: serving (and ``trioproxy serve``'s start-up check) refuses any other
major.minor release in one line, before a guard is installed; ``pyproject.toml``
bounds the dependency the same way.
"""

from __future__ import annotations

import importlib.metadata

__all__ = ["TESTED_HYPERCORN", "UnsupportedHypercorn", "check_hypercorn_version"]

TESTED_HYPERCORN = ("0.17", "0.18")  # major.minor releases the guards were read against


class UnsupportedHypercorn(RuntimeError):
    """The installed Hypercorn is not a release the guards were read against."""


def check_hypercorn_version(version: str | None = None) -> None:
    """Refuse a Hypercorn release the guards were not read against (one clear line)."""
    version = version or importlib.metadata.version("hypercorn")
    if ".".join(version.split(".")[:2]) not in TESTED_HYPERCORN:
        raise UnsupportedHypercorn(
            f"Hypercorn {version} is not supported: trioproxy's guards were read against "
            f"{', '.join(TESTED_HYPERCORN)} (pip install 'hypercorn>=0.17,<0.19')"
        )
