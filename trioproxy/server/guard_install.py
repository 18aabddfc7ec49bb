"""Putting the Hypercorn guards in and taking them out: one patch each, applied once.

Rules:
- A guard is a factory returning its patch ``(owner, name, replacement)``; it is
  called when the guard is installed, never at import, so importing changes nothing.
- :func:`install` records each original before replacing it, once per guard;
  :func:`uninstall` puts the originals back in reverse order. ``INSTALLED`` says
  which guards are in (a guard that needs another one reads it).
- The guards themselves, and every private Hypercorn name, live in
  :mod:`trioproxy.server.hypercorn`; this module touches only what a patch names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["INSTALLED", "Patch", "install", "uninstall"]

Patch = tuple[Any, str, Any]  # (class or module, name, replacement)
INSTALLED: dict[str, Patch] = {}  # guard -> (owner, name, original)


def install(guards: Mapping[str, Callable[[], Patch]], names: Iterable[str]) -> None:
    """Install the named guards not in yet."""
    for name in names:
        if name in INSTALLED:
            continue
        owner, attr, replacement = guards[name]()
        INSTALLED[name] = (owner, attr, owner.__dict__[attr])
        setattr(owner, attr, replacement)


def uninstall() -> tuple[str, ...]:
    """Put every original back; returns the guards that were installed."""
    names = tuple(INSTALLED)
    for name in reversed(names):
        owner, attr, original = INSTALLED.pop(name)
        setattr(owner, attr, original)
    return names
