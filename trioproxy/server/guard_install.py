"""Putting the Hypercorn guards in and taking them out: one patch each, applied once.

Rules:
- A guard is a factory returning its patch ``(owner, name, replacement)``; it is
  called when the guard is installed, never at import, so importing changes nothing.
- :func:`install` records each original before replacing it, once per guard;
  :func:`uninstall` puts the originals back in reverse order. ``INSTALLED``
  (:mod:`.guard_stats`) says which guards are in and what each replaced.
- :func:`install_hypercorn_guards` (the server, as it starts serving) checks the
  Hypercorn release first; :func:`uninstall_hypercorn_guards` (tests) puts
  Hypercorn back as released.
- The guards themselves, and every private Hypercorn name, live in
  :mod:`trioproxy.server.hypercorn`; this module touches only what a patch names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from .connections import CONNECTIONS
from .guard_stats import INSTALLED, Patch
from .hypercorn import GUARDS
from .hypercorn_version import check_hypercorn_version

__all__ = ["install", "install_hypercorn_guards", "uninstall", "uninstall_hypercorn_guards"]


def install_hypercorn_guards(
    names: tuple[str, ...] = tuple(GUARDS),
    max_connections: int | None = None,
    per_ip: int | None = None,
    trusted_proxies: tuple[str, ...] = (),
) -> None:
    """Install the named guards (all by default), once each per process;
    ``max_connections``, ``per_ip`` and ``trusted_proxies`` set guard 3's caps.

    Error handling: raises :class:`~trioproxy.server.hypercorn_version.UnsupportedHypercorn`
    for an untested release.
    """
    check_hypercorn_version()
    if max_connections is not None:
        CONNECTIONS.limit = max_connections
    if per_ip is not None:
        CONNECTIONS.per_ip = per_ip
        CONNECTIONS.trusted = frozenset(trusted_proxies)
    install(GUARDS, names)


def uninstall_hypercorn_guards() -> tuple[str, ...]:
    """Put Hypercorn back as it was; returns the guards that were installed."""
    return uninstall()


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
