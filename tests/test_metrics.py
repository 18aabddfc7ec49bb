"""/metrics parses with prometheus_client's parser and counts a scripted sequence."""

from __future__ import annotations

import pathlib
from contextlib import aclosing

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import chat, open_mocks, provider, running
from trioproxy.admission.auth import new_key
from trioproxy.config import load_config
from trioproxy.observe.metrics import MAX_MODEL_LABELS
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import RawClient, request

KEY, BLOCK = new_key("tenant")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_a_scripted_sequence() -> None:
    async with running() as (gw, recorder):
        for _ in range(2):
            await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t3-i5"))
        await request(gw.url, "POST", "/v1/chat/completions", b"{not json")
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t1000-i10"))
        await client.response_head()
        async with aclosing(client.body_chunks()) as chunks:
            await chunks.__anext__()
        await client.close()
        await recorder.wait_for(4)
        response = await request(gw.url, "GET", "/metrics")
        assert response.headers[b"content-type"].startswith(b"text/plain; version=0.0.4")
        samples = _samples(response.body.decode())
        provider = gw.mock.base_url.removeprefix("http://") + "/openai" if gw.mock else ""

        def requests(model: str, outcome: str, prov: str = provider) -> float:
            served = model if prov != "none" else ""
            labels = (("model", model), ("outcome", outcome), ("provider", prov), ("route", "chat"),
                      ("upstream_model", served))  # fmt: skip
            return samples.get(("trioproxy_requests_total", tuple(sorted(labels))), 0.0)

        assert requests("mock-t3-i5", "done") == 2
        assert requests("", "bad_request", "none") == 1
        assert requests("mock-t1000-i10", "client_disconnect") == 1
        assert samples[("trioproxy_upstream_cancellations_total", ())] == 1
        assert samples[("trioproxy_cancel_latency_seconds_count", ())] == 1
        assert samples[("trioproxy_ttft_seconds_count", (("route", "chat"),))] == 3
        assert samples[("trioproxy_stream_max_gap_seconds_count", (("route", "chat"),))] == 3
        assert samples[("trioproxy_active_requests", ())] == 0
        assert samples[("trioproxy_limiter_in_use", ())] == 0
        # Every chunk of the two finished streams counted once in the per-event histogram.
        done = [r for r in recorder.records if r.outcome == "done"]
        added = samples[("trioproxy_event_added_latency_seconds_count", ())]
        assert sum(r.chunks for r in done) <= added <= sum(r.chunks for r in recorder.records)
        gaps = samples[("trioproxy_inter_token_gap_seconds_count", ())]
        assert gaps == sum(r.events - 1 for r in recorder.records if r.events)
        assert samples[("trioproxy_provider_healthy", (("provider", provider),))] == 1
        assert samples[("trioproxy_provider_ejections_total", (("provider", provider),))] == 0


async def test_model_label_is_bounded() -> None:
    """MAX_MODEL_LABELS + 5 models served: the first MAX_MODEL_LABELS keep their
    names in /metrics, the rest are counted as ``other``."""
    async with running(metrics=True) as (gw, recorder):
        for i in range(MAX_MODEL_LABELS + 5):
            served = await request(gw.url, "POST", "/v1/chat/completions", chat(f"mock-t1-i0-x{i}"))
            assert served.status == 200
        await recorder.wait_for(MAX_MODEL_LABELS + 5)
        scraped = await request(gw.url, "GET", "/metrics")
    requests = [
        s
        for family in text_string_to_metric_families(scraped.body.decode())
        for s in family.samples
        if s.name == "trioproxy_requests_total"
    ]
    counts = {s.labels["model"]: s.value for s in requests}
    assert len(counts) == MAX_MODEL_LABELS + 1 and counts["other"] == 5, sorted(counts)
    assert counts["mock-t1-i0-x0"] == 1 and "mock-t1-i0-x204" not in counts
    # The model that answered is named by the upstream: bounded the same way.
    assert len({s.labels["upstream_model"] for s in requests}) == MAX_MODEL_LABELS + 1


async def test_a_key_cannot_fill_the_model_labels_with_names_it_may_not_use(
    tmp_path: pathlib.Path,
) -> None:
    """The attack: a key allowed only ``mock-t*`` sends MAX_MODEL_LABELS + 10
    model names it may not use. Before, each became a label and the real
    models that came later were all counted as ``other``."""
    (tmp_path / "keys.toml").write_text(BLOCK.replace('models = ["*"]', 'models = ["mock-t*"]'))
    keys = load_config(tmp_path / "keys.toml").keys
    auth = [("authorization", f"Bearer {KEY}")]
    async with running(keys=keys, metrics=True) as (gw, recorder):
        for i in range(MAX_MODEL_LABELS + 10):
            refused = await request(gw.url, "POST", "/v1/chat/completions", chat(f"x{i}"), auth)
            assert refused.status == 403
        served = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"), auth)
        assert served.status == 200
        await recorder.wait_for(MAX_MODEL_LABELS + 11)
        assert gw.app.metrics is not None
        text = gw.app.metrics.render().decode()
    models = {
        s.labels["model"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "trioproxy_requests_total"
    }
    assert models == {"", "mock-t2-i0"}


async def test_requests_are_labelled_with_the_provider_and_model_that_served_them() -> None:
    """A request for ``m`` that failed over from provider a (``m`` is an alias
    for a failing model there) to b (``m`` is ``mock-t3-i0`` there) counts
    under model m, upstream_model mock-t3-i0, provider b."""
    async with open_mocks(Fault()) as (mock,):
        providers = (
            provider("a", mock, models=["x"], aliases={"m": "mock-e500"}),
            provider("b", mock, models=["x"], aliases={"m": "mock-t3-i0"}),
        )
        async with running(providers=providers, metrics=True) as (gw, recorder):
            served = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
            assert served.status == 200
            await recorder.wait_for(1)
            scraped = await request(gw.url, "GET", "/metrics")
    labels = [
        (s.labels["model"], s.labels["upstream_model"], s.labels["provider"], s.labels["outcome"])
        for family in text_string_to_metric_families(scraped.body.decode())
        for s in family.samples
        if s.name == "trioproxy_requests_total"
    ]
    assert labels == [("m", "mock-t3-i0", "b", "done")]
    failovers = [
        s.labels
        for family in text_string_to_metric_families(scraped.body.decode())
        for s in family.samples
        if s.name == "trioproxy_failovers_total"
    ]
    assert failovers == [{"provider": "a", "reason": "upstream_broken"}]
