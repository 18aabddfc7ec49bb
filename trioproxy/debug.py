"""Introspection for ``GET /debug/state`` and ``GET /debug/records``.

Off unless ``debug_endpoints = true``: the state names upstream URLs and the
records name models and request ids. ``trioproxy chaos`` and the tests read the
cancellation invariants from here: active requests, limiter tokens, channel
occupancy, detached work, the trio task count and the process RSS.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .app import Gateway

__all__ = ["debug_state", "rss_bytes", "task_names"]


def task_names() -> dict[str, int]:
    """Every task of this trio run (walked from the root task), counted by name."""
    names: dict[str, int] = {}
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        name = task.name.rsplit(".", 1)[-1]
        names[name] = names.get(name, 0) + 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def debug_state(gateway: Gateway) -> dict[str, Any]:
    stats = gateway.statistics()
    tasks = task_names()
    buffered = [
        ex.channel.statistics().current_buffer_used
        for ex in gateway.active
        if ex.channel is not None
    ]
    return {
        **dataclasses.asdict(stats),
        "channels": {
            "open": len(buffered),
            "buffered_chunks": sum(buffered),
            "max_buffered": max(buffered, default=0),
            "capacity_each": gateway.config.channel_size,
        },
        "tasks": sum(tasks.values()),
        "task_names": tasks,
        "rss_bytes": rss_bytes(),
        "upstreams": {
            kind: [p.spec.base_url for p in gateway.router.providers if p.spec.kind == kind]
            for kind in ("openai", "anthropic")
        },
        "providers": [
            dataclasses.asdict(p) for p in gateway.router.statistics(trio.current_time())
        ],
        "records_kept": len(gateway.recent) if gateway.recent is not None else 0,
        "config": {
            name: getattr(gateway.config, name)
            for name in (
                "ttft_timeout",
                "idle_timeout",
                "client_stall_timeout",
                "max_streams",
                "channel_size",
                "heartbeat_resets_idle",
                "max_attempts",
            )
        },
    }
