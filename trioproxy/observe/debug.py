"""Introspection for ``GET /debug/state`` and ``GET /debug/records``.

Off unless ``debug_endpoints = true``: the state names upstream URLs and the
records name models and request ids. ``trioproxy chaos`` and the tests read the
cancellation invariants from here: active requests, limiter tokens, channel
occupancy, detached work, the trio task count and the process RSS.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import trio

from ..relay.exchange import Exchange
from ..relay.record import CompletionRecord
from ..routing.providers import ProviderStatistics

__all__ = ["debug_state", "find_trace", "rss_bytes", "task_names"]


def task_names(exclude: Iterable[trio.Nursery] = ()) -> dict[str, int]:
    """Every task of this trio run (walked from the root task), counted by name,
    but those under the ``exclude`` nurseries (the built-in mock upstream's,
    which shares the gateway's trio run but is not the gateway) and the Redis
    client's connection tasks (coredis keeps a reader and a writer per pooled
    connection: as many as its pool, whatever the requests do)."""
    skipped = set(map(id, exclude))
    names: dict[str, int] = {}
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None or task.name.startswith("coredis."):
            continue
        name = task.name.rsplit(".", 1)[-1]
        names[name] = names.get(name, 0) + 1
        for nursery in task.child_nurseries:
            if id(nursery) not in skipped:
                stack.extend(nursery.child_tasks)
    return names


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def debug_state(
    statistics: Any,
    channels: Iterable[trio.MemoryChannelStatistics],
    providers: Sequence[ProviderStatistics],
    upstreams: Mapping[str, list[str]],
    records_kept: int,
    config: Mapping[str, Any],
    exclude: Iterable[trio.Nursery] = (),
) -> dict[str, Any]:
    """``statistics``: the gateway's frozen statistics record; ``channels``: the
    relay channel of each exchange being relayed."""
    tasks = task_names(exclude)
    buffered = [ch.current_buffer_used for ch in channels]
    return {
        **dataclasses.asdict(statistics),
        "channels": {
            "open": len(buffered),
            "buffered_chunks": sum(buffered),
            "max_buffered": max(buffered, default=0),
            "capacity_each": config.get("channel_size"),
        },
        "tasks": sum(tasks.values()),
        "task_names": tasks,
        "rss_bytes": rss_bytes(),
        "upstreams": dict(upstreams),
        "providers": [dataclasses.asdict(p) for p in providers],
        "records_kept": records_kept,
        "config": dict(config),
    }


def find_trace(
    request_id: str,
    active: Iterable[Exchange],
    recent: Sequence[CompletionRecord],
    stored_at: Mapping[str, float] | None = None,
) -> dict[str, Any] | None:
    """A request's timeline: live if it is in flight, else from the newest record,
    with ``receipt_stored`` when its receipt was stored (``stored_at``: wall clock
    by request id)."""
    for ex in active:
        if ex.request_id == request_id:
            return {"request_id": request_id, "live": True, "outcome": ex.outcome,
                    "timeline": ex.timeline.rows()}  # fmt: skip
    for record in reversed(recent):
        if record.request_id == request_id:
            timeline = list(record.timeline)
            stored = (stored_at or {}).get(request_id)
            if stored is not None:
                timeline.append(("receipt_stored", round((stored - record.created) * 1000, 3)))
            return {"request_id": request_id, "live": False, "outcome": record.outcome,
                    "timeline": timeline}  # fmt: skip
    return None
