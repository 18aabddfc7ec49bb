"""Active health checks: an ejected provider brought back without client traffic.

Rules:
- A provider with ``health_check = { interval = 5, path = "/models" }`` is
  probed every ``interval`` seconds while one of its models is ejected: a GET
  of ``base_url + path`` with its credential, bounded by the interval (at most
  :data:`MAX_PROBE_SECONDS`). A 2xx answer is a pass
  (:meth:`~trioproxy.routing.health.Health.probed`): an ejection for
  unreachability ends at once; any other ejected model gets its trial with the
  next request instead of after its wait. A failed probe changes nothing:
  passive health decides what fails.
- Healthy providers are not probed: real requests say more about them.
- The loop looks every ``min(interval, 1 s)``; the probes of one round run
  at once, in its own nursery. The router is read each round, so a reloaded
  config's providers are probed from then on.

Resource handling: each probe's response is closed however it ends.
Error handling: a probe's error is a failed probe (logged at debug), never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .. import dialects
from ..errors import GatewayError
from ..routing.pools import Router
from ..routing.providers import Provider
from ..upstream.client import Upstream

__all__ = ["MAX_PROBE_SECONDS", "probe_forever"]

log = logging.getLogger("trioproxy.routing")
MAX_PROBE_SECONDS = 10.0


async def probe_forever(router: Callable[[], Router], upstream: Upstream) -> None:
    """The probing loop (a background task: runs until cancelled)."""
    due: dict[str, float] = {}
    while True:
        current = router()
        now = current.clock()
        checked = [p for p in current.providers if p.spec.health_check is not None]
        async with trio.open_nursery() as probes:
            for provider in checked:
                if now >= due.get(provider.name, 0.0) and provider.state(now) == "ejected":
                    probes.start_soon(_probe, current, provider, upstream, name="health-probe")
                    assert provider.spec.health_check is not None
                    due[provider.name] = now + provider.spec.health_check[0]
        wait = min((p.spec.health_check[0] for p in checked if p.spec.health_check), default=1.0)
        await trio.sleep(min(wait, 1.0))  # real time: a test's clock only moves health


async def _probe(router: Router, provider: Provider, upstream: Upstream) -> None:
    spec = provider.spec
    assert spec.health_check is not None
    interval, path = spec.health_check
    headers = {
        **dialects.default_headers(spec.kind),
        **spec.headers,
        **dialects.credential_headers(spec.kind, provider.credential),
    }
    ok = False
    with trio.move_on_after(min(interval, MAX_PROBE_SECONDS)):
        try:
            response = await upstream.send("GET", spec.base_url + path, headers, b"")
        except GatewayError as exc:
            log.debug("health probe of %s failed: %s", spec.name, exc.message)
        else:
            try:
                ok = 200 <= response.status_code < 300
            finally:
                await response.aclose()
    if ok:
        log.info("health probe of %s passed", spec.name)
        provider.probed(router.clock())
    else:
        log.debug("health probe of %s did not pass", spec.name)
