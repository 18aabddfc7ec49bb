"""The gateway's log: one format for every process, and what it says at start-up.

Rules:
- Every process that serves sets up logging the same way (:func:`setup_logging`):
  ``trioproxy serve``, and each worker process of ``serve --workers N``, which
  starts as a fresh interpreter and would otherwise log nothing at all.
- Each serving process says once where it listens, where its data lives and,
  without API keys, that it is open to anyone who reaches it (:func:`announce`).
"""

from __future__ import annotations

import logging
import sys

from ..config import Config

__all__ = ["announce", "setup_logging"]

log = logging.getLogger("trioproxy")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is ours
    # coredis logs every lost connection (with an empty traceback) at INFO: an outage
    # and its end are one line each of ours (trioproxy.redis).
    logging.getLogger("coredis").setLevel(logging.WARNING)


def announce(config: Config, url: str, who: str = "trioproxy") -> None:
    """The start-up lines of one serving process (``who``: this process)."""
    log.info("%s listening on %s", who, url)
    if config.receipts:
        log.info("data dir %s (signing key, receipts)", config.data_dir)
    if not config.keys:
        log.warning(
            "OPEN MODE: no API keys configured, anyone who can reach %s may use it "
            "(add [[keys]]: trioproxy keys new --name NAME)",
            url,
        )
