"""The relay's guarantees hold on a translated route: hang-ups, timers,
failover across kinds, errors in the client's dialect, receipts of both sides,
the model list, nothing sent upstream for a request that cannot be translated."""

from __future__ import annotations

import hashlib
from contextlib import aclosing
from typing import Any

import orjson

from tests.conftest import (
    chat,
    events_of,
    hang_up_latencies,
    open_mocks,
    provider,
    quantile,
    running,
    signed_receipt,
    within,
)
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import RawClient, request


def _claude(mock: Any, **extra: Any) -> dict[str, Any]:
    return provider("claude", mock, kind="anthropic", models=["mock-*"], **extra)


def _messages(model: str, stream: bool = True) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }


async def test_a_hang_up_closes_a_translated_upstream_at_once() -> None:
    async with (
        open_mocks(Fault()) as (mock,),
        running(providers=(_claude(mock),)) as (gw, recorder),
    ):

        async def first_chunk(client: RawClient) -> None:
            assert (await client.response_head())[0] == 200
            async with aclosing(client.body_chunks()) as chunks:
                await chunks.__anext__()

        latencies = await hang_up_latencies(gw.url, mock, "mock-t2000-i20", first_chunk)
        records = await recorder.wait_for(5)
    assert quantile(latencies, 0.5) < within(0.050), latencies
    assert {r.outcome for r in records} == {"client_disconnect"}
    assert {r.translated for r in records} == {"anthropic->openai"}
    assert gw.app.limiter.statistics().borrowed_tokens == 0


async def test_a_stall_after_the_first_byte_ends_with_an_error_event_in_the_clients_dialect() -> (
    None
):
    async with (
        open_mocks(Fault()) as (mock,),
        running(providers=(provider("gpt", mock, models=["mock-*"]),), idle_timeout=0.3) as (
            gw,
            recorder,
        ),
    ):
        response = await request(gw.url, "POST", "/v1/messages", _messages("mock-t10-stall3"))
        records = await recorder.wait_for(1)
    events = events_of(response.body)
    assert events[-1].startswith(b"event: error\n")  # Anthropic's error event, not OpenAI's
    assert orjson.loads(events[-1].split(b"data: ", 1)[1])["type"] == "error"
    assert sum(b"text_delta" in e for e in events) == 3 and b"message_stop" not in response.body
    assert records[0].outcome == "upstream_idle_timeout" and records[0].truncated


async def test_failover_before_the_first_byte_crosses_kinds() -> None:
    """One alias on two kinds: the first tier's provider fails, the other kind answers,
    translated or not, on either route."""
    async with open_mocks(Fault()) as (mock,):
        for first, second in (("openai", "anthropic"), ("anthropic", "openai")):
            providers = (
                provider(first, mock, kind=first, models=[], aliases={"m": "mock-e500"}),
                provider(
                    second, mock, kind=second, models=[], aliases={"m": "mock-t4"}, priority=1
                ),
            )
            async with running(providers=providers) as (gw, recorder):
                answers = [
                    await request(gw.url, "POST", "/v1/chat/completions", chat("m")),
                    await request(gw.url, "POST", "/v1/messages", _messages("m")),
                ]
                records = await recorder.wait_for(2)
            assert answers[0].body.endswith(b"data: [DONE]\n\n")
            assert answers[1].body.endswith(
                b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
            )
            assert all(r.failovers == ((first, "upstream_broken"),) for r in records)  # its 500
            assert [(r.provider, r.translated) for r in records] == (
                [(second, "anthropic->openai"), (second, None)] if second == "anthropic"
                else [(second, None), (second, "openai->anthropic")]
            )  # fmt: skip


async def test_ttft_timeout_on_a_translated_stream_is_an_error_in_the_clients_dialect() -> None:
    async with (
        open_mocks(Fault()) as (mock,),
        running(providers=(_claude(mock),), ttft_timeout=0.3) as (gw, recorder),
    ):
        response = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t3-f5000"))
        records = await recorder.wait_for(1)
    assert response.status == 504 and response.json()["error"]["code"] == "upstream_ttft_timeout"
    assert records[0].outcome == "upstream_ttft_timeout"


async def test_a_request_that_cannot_be_translated_is_a_400_and_reaches_no_upstream() -> None:
    async with open_mocks(Fault()) as (mock,), running(providers=(_claude(mock),)) as (gw, _):
        response = await request(
            gw.url, "POST", "/v1/chat/completions", chat("mock-t3", logit_bias={"1": 5})
        )
    assert response.status == 400
    assert (
        response.json()["error"]["message"]
        == "'logit_bias' cannot be translated for an Anthropic model"
    )
    assert mock.statistics().requests_total == 0


async def test_an_upstream_4xx_reaches_the_client_in_its_own_dialect() -> None:
    async with open_mocks(Fault()) as (mock,), running(providers=(_claude(mock),)) as (gw, _):
        response = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-e403"))
    assert response.status == 403
    error = response.json()["error"]  # OpenAI's shape, though Anthropic's API answered
    assert error["type"] == "permission_error" and error["message"]


async def test_a_translated_receipt_signs_both_sides() -> None:
    async with (
        open_mocks(Fault()) as (mock,),
        running(providers=(_claude(mock),)) as (gw, recorder),
    ):
        mock.record = True
        response = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t12"))
        document = await signed_receipt(
            gw.url, response.headers[b"x-trioproxy-receipt-id"].decode()
        )
        records = await recorder.wait_for(1)
    receipt = document["receipt"]
    upstream_bytes = mock.transcripts[records[0].completion_id]
    assert receipt["translated"] == "anthropic->openai"
    assert receipt["upstream_sha256"] == hashlib.sha256(upstream_bytes).hexdigest()
    assert receipt["response_sha256"] == hashlib.sha256(response.body).hexdigest()
    assert receipt["upstream_sha256"] != receipt["response_sha256"]
    assert (
        receipt["usage"]["completion_tokens"] == 12
    )  # the upstream's count, in the client's names


async def test_models_of_every_kind_are_listed() -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = (
            provider("gpt", mock, models=["llama-3"]),
            provider("claude", mock, kind="anthropic", models=["claude-sonnet"]),
            {
                "name": "gem",
                "kind": "gemini",
                "base_url": mock.base_url,
                "models": ["gemini-flash"],
            },
        )
        async with running(providers=providers) as (gw, _):
            listed = (await request(gw.url, "GET", "/v1/models")).json()
    assert [m["id"] for m in listed["data"]] == ["claude-sonnet", "gemini-flash", "llama-3"]


async def test_a_catch_all_of_each_kind_keeps_each_route_on_its_own() -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = (provider("gpt", mock, models=["*"]), _claude(mock))
        async with running(providers=providers) as (gw, recorder):
            for path, body in (
                ("/v1/chat/completions", chat("mock-t2")),
                ("/v1/messages", _messages("mock-t2")),
            ):
                assert (await request(gw.url, "POST", path, body)).status == 200
            records = await recorder.wait_for(2)
    assert [(r.provider, r.translated) for r in records] == [("gpt", None), ("claude", None)]


async def test_usage_the_upstream_did_not_report_is_an_estimate_never_a_zero() -> None:
    """An OpenAI-compatible server that ignores ``include_usage``, to an Anthropic client."""
    async with open_mocks(Fault()) as (mock,):
        providers = (provider("gpt", mock, models=["mock-*"]),)
        async with running(providers=providers) as (gw, recorder):
            model = "mock-shape-json_dumps_bare-t12"
            response = await request(gw.url, "POST", "/v1/messages", _messages(model))
            records = await recorder.wait_for(1)
    delta = next(e for e in events_of(response.body) if e.startswith(b"event: message_delta"))
    usage = orjson.loads(delta.split(b"data: ", 1)[1])["usage"]
    assert usage["output_tokens"] == 12  # the deltas sent, about one token each
    record = records[0]
    assert record.translated == "openai->anthropic" and record.usage_source == "estimated"
    assert record.completion_tokens == 12 and not record.truncated


async def test_a_fallback_model_of_another_kind_gets_the_request_translated() -> None:
    """The model's pool is OpenAI's only; its fallback's is Anthropic's: translated then."""
    async with open_mocks(Fault()) as (mock,):
        providers = (
            provider("gpt", mock, models=[], aliases={"m": "mock-e500"}),
            provider("claude", mock, kind="anthropic", models=[], aliases={"fb": "mock-t4"}),
        )
        async with running(providers=providers, fallbacks={"m": ["fb"]}) as (gw, recorder):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
            records = await recorder.wait_for(1)
    assert response.status == 200 and response.body.endswith(b"data: [DONE]\n\n")
    assert (records[0].provider, records[0].translated) == ("claude", "anthropic->openai")
    assert orjson.loads(mock.last_body)["max_tokens"] == 4096  # Anthropic's form of the request
