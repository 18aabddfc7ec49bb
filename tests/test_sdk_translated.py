"""The official SDKs against a model of another API: any client, any model.

The openai SDK against Anthropic and Gemini upstreams, the anthropic SDK
(``messages.stream``) against OpenAI-compatible and Gemini upstreams, each
through the gateway's translation (:mod:`trioproxy.translate`): the streamed
text is the upstream's, a streamed tool call is assembled by the SDK itself, the
stop reason and the usage are the upstream's, a non-streaming call answers, and
an upstream cut mid-stream is an error in the SDK, never a clean end.
"""

from __future__ import annotations

import time
from typing import Any

import anthropic
import openai
import pytest
import trio

from tests.conftest import open_mocks, running
from trioproxy.testing.mock_scripts import WORDS, Fault

pytestmark = pytest.mark.slow  # not in `make quick`

EXPECTED = "".join(WORDS[i % len(WORDS)] + " " for i in range(12))
HI = [{"role": "user", "content": "hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
# What each alias is on every provider: the mock's behaviour by model name.
ALIASES = {
    "text": "mock-t12-i1",
    "tool": "mock-t3-tool1",
    "cut": "mock-t20-i5-drop5",
    "paced": "mock-t10-i60",
}


def _providers(mock: Any, kind: str) -> tuple[dict[str, Any], ...]:
    base = mock.base_url + ("/v1" if kind == "openai" else "")
    return ({"name": kind, "kind": kind, "base_url": base, "models": [], "aliases": ALIASES},)


def _openai_calls(url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="text", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        text, finish, usage = "", None, None
        for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        out["text"], out["finish"], out["usage"] = text, finish, usage
        tool = {"type": "function", "function": {"name": WEATHER["name"],
                "description": WEATHER["description"], "parameters": WEATHER["schema"]}}  # fmt: skip
        with client.chat.completions.stream(model="tool", messages=HI, tools=[tool]) as events:
            final = events.get_final_completion()
        call = final.choices[0].message.tool_calls[0]
        out["tool"] = (call.function.name, call.function.arguments, final.choices[0].finish_reason)
        whole = client.chat.completions.create(model="text", messages=HI)
        out["whole"] = (
            whole.choices[0].message.content,
            whole.choices[0].finish_reason,
            whole.usage,
        )
    return out


def _openai_cut(url: str) -> str:
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0) as client:
        stream = client.chat.completions.create(model="cut", messages=HI, stream=True)
        try:
            for _ in stream:
                pass
        except openai.APIError as exc:
            return str(exc)
    return "ended cleanly"


def _anthropic_calls(url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with anthropic.Anthropic(base_url=url, api_key="sk-test", max_retries=0) as client:
        with client.messages.stream(model="text", max_tokens=64, messages=HI) as stream:
            out["text"] = "".join(stream.text_stream)
            final = stream.get_final_message()
        out["finish"], out["usage"] = final.stop_reason, final.usage
        tool = {"name": WEATHER["name"], "description": WEATHER["description"],
                "input_schema": WEATHER["schema"]}  # fmt: skip
        with client.messages.stream(
            model="tool",
            max_tokens=64,
            messages=HI,
            tools=[tool],
        ) as stream:
            final = stream.get_final_message()
        use = next(b for b in final.content if b.type == "tool_use")
        out["tool"] = (use.name, use.input, final.stop_reason)
        whole = client.messages.create(model="text", max_tokens=64, messages=HI)
        block = whole.content[0]
        out["whole"] = (
            block.text if block.type == "text" else None,
            whole.stop_reason,
            whole.usage,
        )
    return out


def _anthropic_cut(url: str) -> str:
    with anthropic.Anthropic(base_url=url, api_key="sk-test", max_retries=0) as client:
        try:
            with client.messages.stream(model="cut", max_tokens=64, messages=HI) as stream:
                for _ in stream.text_stream:
                    pass
        except anthropic.APIError as exc:
            return str(exc)
    return "ended cleanly"


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
async def test_the_openai_sdk_against_a_model_of_another_api(kind: str) -> None:
    async with (
        open_mocks(Fault()) as (mock,),
        running(providers=_providers(mock, kind)) as (gw, recorder),
    ):
        got = await trio.to_thread.run_sync(_openai_calls, gw.url)
        cut = await trio.to_thread.run_sync(_openai_cut, gw.url)
        records = await recorder.wait_for(4)
    assert got["text"] == EXPECTED and got["finish"] == "stop"
    assert (got["usage"].prompt_tokens, got["usage"].completion_tokens) == (8, 12)
    name, arguments, finish = got["tool"]
    assert name == "get_weather" and finish == "tool_calls"
    assert arguments.replace(" ", "") == '{"city":"Paris"}'
    text, finish, usage = got["whole"]
    assert text == EXPECTED and finish == "stop" and usage.completion_tokens == 12
    assert cut != "ended cleanly" and "upstream" in cut
    assert {r.translated for r in records} == {f"{kind}->openai"}


@pytest.mark.parametrize("kind", ["openai", "gemini"])
async def test_the_anthropic_sdk_against_a_model_of_another_api(kind: str) -> None:
    async with (
        open_mocks(Fault()) as (mock,),
        running(providers=_providers(mock, kind)) as (gw, recorder),
    ):
        got = await trio.to_thread.run_sync(_anthropic_calls, gw.url)
        cut = await trio.to_thread.run_sync(_anthropic_cut, gw.url)
        records = await recorder.wait_for(4)
    assert got["text"] == EXPECTED and got["finish"] == "end_turn"
    assert (got["usage"].input_tokens, got["usage"].output_tokens) == (8, 12)
    assert got["tool"] == ("get_weather", {"city": "Paris"}, "tool_use")
    text, finish, usage = got["whole"]
    assert text == EXPECTED and finish == "end_turn" and usage.output_tokens == 12
    assert cut != "ended cleanly" and "upstream" in cut
    assert {r.translated for r in records} == {f"{kind}->anthropic"}


def _openai_arrivals(url: str) -> list[float]:
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0) as client:
        stream = client.chat.completions.create(model="paced", messages=HI, stream=True)
        return [time.monotonic() for c in stream if c.choices and c.choices[0].delta.content]


def _anthropic_arrivals(url: str) -> list[float]:
    client = anthropic.Anthropic(base_url=url, api_key="sk-test", max_retries=0)
    with client, client.messages.stream(model="paced", max_tokens=64, messages=HI) as stream:
        return [time.monotonic() for _ in stream.text_stream]


@pytest.mark.parametrize(
    ("kind", "calls"),
    [
        ("anthropic", _openai_arrivals),
        ("gemini", _openai_arrivals),
        ("openai", _anthropic_arrivals),
    ],
)
async def test_tokens_reach_the_sdk_as_the_upstream_paced_them(kind: str, calls: Any) -> None:
    """Ten tokens 60 ms apart: nothing is held back for a later event."""
    async with open_mocks(Fault()) as (mock,), running(providers=_providers(mock, kind)) as (gw, _):
        arrivals = await trio.to_thread.run_sync(calls, gw.url)
    assert len(arrivals) == 10
    assert arrivals[-1] - arrivals[0] >= 0.5  # 9 gaps of 60 ms: 0.54 s when unbuffered
