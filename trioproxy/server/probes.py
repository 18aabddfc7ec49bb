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
- With ``request = true`` instead, each ejected model (at most
  :data:`MAX_MODELS_PROBED` a round) gets a one-token, non-streaming request
  in the provider's dialect; a 2xx ends that model's ejection at once. Each
  such probe may be billed: it is opt in.
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

import orjson
import trio

from .. import dialects, translate
from ..errors import GatewayError
from ..routing.pools import Router
from ..routing.providers import Provider
from ..upstream.client import Upstream

__all__ = ["MAX_MODELS_PROBED", "MAX_PROBE_SECONDS", "probe_forever"]

log = logging.getLogger("trioproxy.routing")
MAX_PROBE_SECONDS = 10.0
MAX_MODELS_PROBED = 8  # one-token requests per provider and round (each may be billed)
_PING = [{"role": "user", "content": "ping"}]


async def probe_forever(router: Callable[[], Router], upstream: Upstream) -> None:
    """The probing loop (a background task: runs until cancelled)."""
    due: dict[str, float] = {}
    while True:
        current = router()
        now = current.clock()
        checked = [(p, p.spec.health_check) for p in current.providers if p.spec.health_check]
        async with trio.open_nursery() as probes:
            for provider, check in checked:
                if now >= due.get(provider.name, 0.0) and provider.state(now) == "ejected":
                    probes.start_soon(_probe, current, provider, upstream, name="health-probe")
                    due[provider.name] = now + check.interval
        wait = min((check.interval for _, check in checked), default=1.0)
        await trio.sleep(min(wait, 1.0))  # real time: a test's clock only moves health


async def _probe(router: Router, provider: Provider, upstream: Upstream) -> None:
    spec = provider.spec
    check = spec.health_check
    assert check is not None
    headers = {
        **dialects.default_headers(spec.kind),
        **spec.headers,
        **dialects.credential_headers(spec.kind, provider.credential),
    }
    bound = min(check.interval, MAX_PROBE_SECONDS)
    if not check.request:
        if await _passes(upstream, "GET", spec.base_url + check.path, headers, b"", bound):
            log.info("health probe of %s passed", spec.name)
            provider.probed(router.clock())
        return
    path = "/v1/messages" if spec.kind == "anthropic" else "/chat/completions"
    url = spec.base_url + dialects.upstream_path(spec.kind, path)
    headers["content-type"] = "application/json"
    for model in provider.ejected_models(router.clock())[:MAX_MODELS_PROBED]:
        body = orjson.dumps({"model": model, "max_tokens": 1, "messages": _PING})
        if spec.kind == "gemini":  # the model is in the URL, the body is Gemini's own
            url = spec.base_url + translate.gemini_path(model, stream=False)
            body = orjson.dumps(translate.request_for("gemini", "openai", orjson.loads(body)))
        if await _passes(upstream, "POST", url, headers, body, bound):
            log.info("health probe of %s passed: model %s answered", spec.name, model)
            provider.probed(router.clock(), model)


async def _passes(
    upstream: Upstream, method: str, url: str, headers: dict[str, str], body: bytes, bound: float
) -> bool:
    """A 2xx within ``bound`` seconds (the response closed however it ends)."""
    with trio.move_on_after(bound):
        try:
            response = await upstream.send(method, url, headers, body)
        except GatewayError as exc:
            log.debug("health probe %s %s failed: %s", method, url, exc.message)
            return False
        try:
            return 200 <= response.status_code < 300
        finally:
            await response.aclose()
    return False
