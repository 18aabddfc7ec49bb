"""Guarantee 10: the official SDKs stream through the gateway and get the full text."""

from __future__ import annotations

import anthropic
import openai
import pytest
import trio

from tests.conftest import running
from trioproxy.testing.mock_scripts import WORDS

pytestmark = pytest.mark.slow  # not in `make quick`

EXPECTED = "".join(WORDS[i % len(WORDS)] + " " for i in range(12))


def _openai_calls(base_url: str) -> tuple[str, str, str]:
    with openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="mock-t12-i1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        whole = client.chat.completions.create(
            model="mock-t12", messages=[{"role": "user", "content": "hi"}]
        )
        completion = client.completions.create(model="mock-t12", prompt="hi", stream=True)
        text = "".join(c.choices[0].text for c in completion if c.choices)
        return streamed, whole.choices[0].message.content or "", text


def _anthropic_calls(base_url: str) -> tuple[str, str]:
    with anthropic.Anthropic(base_url=base_url, api_key="sk-test", max_retries=0) as client:
        with client.messages.stream(
            model="mock-t12-i1", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            streamed = "".join(stream.text_stream)
        whole = client.messages.create(
            model="mock-t12", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
        block = whole.content[0]
        assert block.type == "text"
        return streamed, block.text


def _openai_error(base_url: str) -> int:
    with openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0) as client:
        try:
            client.chat.completions.create(model="", messages=[])
        except openai.BadRequestError as exc:
            return exc.status_code
    return 0


async def test_openai_sdk_streams_and_calls_through_the_gateway() -> None:
    async with running() as (gw, _):
        streamed, whole, text = await trio.to_thread.run_sync(_openai_calls, gw.url)
        assert streamed == whole == text == EXPECTED
        assert await trio.to_thread.run_sync(_openai_error, gw.url) == 400


async def test_anthropic_sdk_streams_and_calls_through_the_gateway() -> None:
    async with running() as (gw, _):
        streamed, whole = await trio.to_thread.run_sync(_anthropic_calls, gw.url)
        assert streamed == whole == EXPECTED
