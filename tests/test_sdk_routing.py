"""The official SDKs through routing: a continued answer, a retried 429, a context fallback.

What a client library makes of the gateway's routing, not what our own parser
does: the continued stream must read as one answer (one id, the whole text, the
summed usage, a normal end), a cut that cannot be continued must raise, and
retries and fallbacks must be invisible.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
import trio

from tests.conftest import open_mocks, provider, running
from trioproxy.testing.mock_scripts import WORDS, Fault

pytestmark = pytest.mark.slow  # not in `make quick`

FULL = "".join(WORDS[i % len(WORDS)] + " " for i in range(60))


def _cut_then_capable(mock: Any, cut: str, kind: str = "openai") -> tuple[dict[str, Any], ...]:
    return (
        provider("a", mock, kind=kind, aliases={"m": cut}),
        provider("b", mock, kind=kind, priority=1, accepts_prefill=True,
                 aliases={"m": "mock-t60-i1"}),
    )  # fmt: skip


def _openai_stream(base_url: str) -> tuple[str, set[str], Any, str | None]:
    with openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        text, ids, usage, finish = "", set(), None, None
        for chunk in stream:
            ids.add(chunk.id)
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        return text, ids, usage, finish


def _anthropic_stream(base_url: str) -> tuple[str, Any, str | None]:
    with anthropic.Anthropic(base_url=base_url, api_key="sk-test", max_retries=0) as client:
        with client.messages.stream(
            model="m", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        return text, final.usage, final.stop_reason


async def test_the_openai_sdk_reads_a_continued_stream_as_one_answer() -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = _cut_then_capable(mock, "mock-t60-i1-drop40")
        async with running(providers=providers, continue_on_cut=True) as (gw, _):
            text, ids, usage, finish = await trio.to_thread.run_sync(_openai_stream, gw.url)
    assert text == FULL and len(ids) == 1 and finish == "stop"
    assert usage is not None and usage.completion_tokens == 60


async def test_the_anthropic_sdk_reads_a_continued_stream_as_one_answer() -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = _cut_then_capable(mock, "mock-t60-i1-drop40", kind="anthropic")
        async with running(providers=providers, continue_on_cut=True) as (gw, _):
            text, usage, stop = await trio.to_thread.run_sync(_anthropic_stream, gw.url)
    assert text == FULL and stop == "end_turn" and usage.output_tokens == 60


async def test_a_cut_that_cannot_be_continued_raises_in_the_openai_sdk() -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = (provider("a", mock, aliases={"m": "mock-t60-i1-drop40"}),)
        async with running(providers=providers, continue_on_cut=True) as (gw, _):
            with pytest.raises(openai.APIError, match="upstream"):
                await trio.to_thread.run_sync(_openai_stream, gw.url)


async def test_a_retried_429_and_a_context_fallback_are_invisible_to_the_sdk() -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = (
            provider("a", mock, retries=1, models=[],
                     aliases={"m": "mock-e429-n1-ra1-t60-i1-x1", "small": "mock-error-vllm_context"}),
            provider("b", mock, models=[], aliases={"large": "mock-t60-i1"}),
        )  # fmt: skip
        overrides = {"providers": providers, "context_window_fallbacks": {"small": "large"}}
        async with running(**overrides) as (gw, recorder):
            text, _, usage, _ = await trio.to_thread.run_sync(_openai_stream, gw.url)
            assert text == FULL and usage.completion_tokens == 60

            def small() -> str:
                with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as c:
                    answer = c.chat.completions.create(
                        model="small", messages=[{"role": "user", "content": "hi"}]
                    )
                    return answer.choices[0].message.content or ""

            assert (await trio.to_thread.run_sync(small)).split() == FULL.split()
            records = await recorder.wait_for(2)
            assert records[0].failovers == (("a", "upstream_rate_limited"),)
            assert records[1].failovers == (("a", "context_length_exceeded"),)
