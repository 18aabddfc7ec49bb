"""Continuation after a cut (``continue_on_cut``): one complete answer from two providers.

The cut provider drops its connection (or stalls) after 40 of 60 tokens; the
capable one is a mock that continues a prefilled final assistant turn as vLLM
(``continue_final_message``) and Anthropic (a prefill) do, from the words it
was given.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.conftest import events_of, open_mocks, provider, running, signed_receipt
from trioproxy.dialects import Dialect
from trioproxy.relay.splice import PartialAnswer, Splicer, continuation_body
from trioproxy.testing.mock_scripts import WORDS, Fault
from trioproxy.testing.rawclient import request
from trioproxy.testing.shapes import SHAPES

FULL = "".join(WORDS[i % len(WORDS)] + " " for i in range(60))


def _pair(cut: str, capable: bool = True, **extra: Any) -> tuple[dict[str, Any], ...]:
    return (
        {**extra, "name": "a", "aliases": {"m": cut}},
        {**extra, "name": "b", "priority": 1, "accepts_prefill": capable,
         "aliases": {"m": "mock-t60-i1"}},
    )  # fmt: skip


def _with_mock(tables: tuple[dict[str, Any], ...], mock: Any) -> tuple[dict[str, Any], ...]:
    return tuple(provider(t["name"], mock, **{k: v for k, v in t.items() if k != "name"})
                 for t in tables)  # fmt: skip


def _openai_text(events: list[bytes]) -> tuple[str, set[str], dict[str, Any] | None]:
    text, ids, usage = "", set(), None
    for event in events:
        if event == b"data: [DONE]":
            continue
        obj = orjson.loads(event.removeprefix(b"data: "))
        ids.add(obj["id"])
        for choice in obj.get("choices", []):
            text += choice["delta"].get("content") or ""
        usage = obj.get("usage") or usage
    return text, ids, usage


@pytest.mark.parametrize("cut", ["mock-t60-i1-drop40", "mock-t60-i1-stall40"])
async def test_a_stream_cut_after_40_of_60_tokens_reaches_the_client_whole(cut: str) -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = _with_mock(_pair(cut), mock)
        overrides = {"providers": providers, "continue_on_cut": True, "idle_timeout": 0.3}
        async with running(**overrides) as (gw, recorder):
            body = {
                "model": "m", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100,
            }  # fmt: skip
            response = await request(gw.url, "POST", "/v1/chat/completions", body)
            assert response.status == 200
            events = events_of(response.body)
            assert events[-1] == b"data: [DONE]" and events.count(b"data: [DONE]") == 1
            text, ids, usage = _openai_text(events)
            assert text == FULL  # every token once, in order: nothing repeated, nothing lost
            assert len(ids) == 1  # one completion id
            assert usage is not None and usage["completion_tokens"] == 60
            assert not any(b'"error"' in e for e in events)
            sent = orjson.loads(mock.last_body or b"{}")
            assert sent["continue_final_message"] is True and sent["max_tokens"] == 60
            assert sent["messages"][-1]["content"] == " ".join(FULL.split()[:40]) + " "
            (record,) = await recorder.wait_for(1)
            assert (record.outcome, record.truncated, record.provider) == ("done", False, "b")
            assert record.attempts == 2 and len(record.failovers) == 1
            assert [p for p, _ in record.continued] == ["a", "b"]
            ref = response.headers[b"x-trioproxy-receipt-id"].decode()
            receipt = (await signed_receipt(gw.url, ref))["receipt"]
            assert [c["provider"] for c in receipt["continued"]] == ["a", "b"]
            hashes = {c["upstream_sha256"] for c in receipt["continued"]}
            assert len(hashes) == 2 and receipt["completion_tokens"] == 60


async def test_an_anthropic_stream_is_continued_from_a_prefill() -> None:
    async with open_mocks(Fault()) as (mock,):
        tables = _pair("mock-t60-i1-drop40", kind="anthropic")
        providers = _with_mock(tables, mock)
        async with running(providers=providers, continue_on_cut=True) as (gw, recorder):
            body = {"model": "m", "stream": True, "max_tokens": 100,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            response = await request(gw.url, "POST", "/v1/messages", body)
            events = events_of(response.body)
            names = [e.split(b"\n", 1)[0] for e in events]
            assert names.count(b"event: message_start") == 1
            assert names.count(b"event: message_stop") == 1 and names[-1] == b"event: message_stop"
            text = ""
            for event in events:
                if event.startswith(b"event: content_block_delta"):
                    text += orjson.loads(event.split(b"data: ", 1)[1])["delta"]["text"]
            assert text == FULL
            delta = next(e for e in events if e.startswith(b"event: message_delta"))
            assert orjson.loads(delta.split(b"data: ", 1)[1])["usage"]["output_tokens"] == 60
            sent = orjson.loads(mock.last_body or b"{}")
            prefill = " ".join(FULL.split()[:40])  # without the trailing space Anthropic refuses
            assert sent["messages"][-1]["content"] == prefill
            (record,) = await recorder.wait_for(1)
            assert record.outcome == "done" and record.completion_tokens == 60


async def test_without_a_capable_provider_the_cut_ends_with_one_error_event() -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = _with_mock(_pair("mock-t60-i1-drop40", capable=False), mock)
        async with running(providers=providers, continue_on_cut=True) as (gw, recorder):
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
            response = await request(gw.url, "POST", "/v1/chat/completions", body)
            events = events_of(response.body)
            assert b'"code":"upstream_broken"' in events[-1]
            assert mock.statistics().requests_total == 1  # b never asked
            (record,) = await recorder.wait_for(1)
            assert record.continued == () and record.truncated


async def test_a_capable_provider_that_fails_first_leaves_the_clean_error_event() -> None:
    async with open_mocks(Fault()) as (mock,):
        tables = (
            {"name": "a", "aliases": {"m": "mock-t60-i1-drop40"}},
            {"name": "b", "priority": 1, "accepts_prefill": True, "aliases": {"m": "mock-e503"}},
        )
        providers = _with_mock(tables, mock)
        async with running(providers=providers, continue_on_cut=True) as (gw, recorder):
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
            response = await request(gw.url, "POST", "/v1/chat/completions", body)
            events = events_of(response.body)
            assert b'"code":"upstream_broken"' in events[-1] and b"[DONE]" not in events[-2]
            (record,) = await recorder.wait_for(1)
            assert record.continued == () and record.attempts == 2 and record.truncated


async def test_a_cut_in_the_middle_of_an_event_is_never_continued() -> None:
    """The client already holds half an event: anything spliced after it would be
    read as its other half. One error event instead, and nobody else asked."""
    async with open_mocks(Fault()) as (mock,):
        providers = _with_mock(_pair("mock-t60-i1-half40"), mock)
        async with running(providers=providers, continue_on_cut=True) as (gw, recorder):
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
            response = await request(gw.url, "POST", "/v1/chat/completions", body)
            assert b'"code":"upstream_broken"' in events_of(response.body)[-1]
            assert mock.statistics().requests_total == 1
            (record,) = await recorder.wait_for(1)
            assert record.continued == ()


async def test_continue_max_bounds_the_continuations() -> None:
    async with open_mocks(Fault()) as (mock,):
        tables = (
            {"name": "a", "aliases": {"m": "mock-t60-i1-drop20"}},
            {"name": "b", "priority": 1, "accepts_prefill": True,
             "aliases": {"m": "mock-t60-i1-drop40"}},
        )  # fmt: skip
        providers = _with_mock(tables, mock)
        async with running(providers=providers, continue_on_cut=True) as (gw, recorder):
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
            response = await request(gw.url, "POST", "/v1/chat/completions", body)
            events = events_of(response.body)
            assert b'"code":"upstream_broken"' in events[-1]  # b cut too: one continuation only
            text, ids, _ = _openai_text(events[:-1])
            assert text == FULL[: len(" ".join(FULL.split()[:40])) + 1] and len(ids) == 1
            (record,) = await recorder.wait_for(1)
            assert [p for p, _ in record.continued] == ["a"] and record.attempts == 2


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"id": "c1", "choices": [choice]}) + b"\n\n"


def test_tool_calls_reasoning_and_finished_answers_are_never_continued() -> None:
    for stopper in (
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}),
        _chunk({"reasoning_content": "hmm"}),
        _chunk({}, finish="stop"),
        b'data: {"error": {"message": "overloaded"}}\n\n',
        b"data: [DONE]\n\n",
    ):
        partial = PartialAnswer(Dialect.OPENAI)
        partial.feed(_chunk({"role": "assistant", "content": ""}))
        partial.feed(_chunk({"content": "Hello"}))
        assert partial.continuable and partial.text == "Hello"
        partial.feed(stopper)
        assert not partial.continuable, stopper


def test_every_real_servers_text_stream_is_collected_and_reasoning_ones_refused() -> None:
    reasoning = {"deepseek_no_space", "anthropic_thinking"}  # reasoning / thinking deltas
    for name, shape in SHAPES.items():
        if shape.route not in ("chat", "messages"):
            continue
        dialect = Dialect.ANTHROPIC if shape.route == "messages" else Dialect.OPENAI
        partial = PartialAnswer(dialect)
        for event in shape.events[: shape.head + shape.content_events]:  # cut before its end
            partial.feed(event)
        if name in reasoning:
            assert not partial.continuable, name
        else:
            assert partial.continuable and partial.tokens == shape.content_events, name
            assert len(partial.text.split()) == shape.content_events, name


def test_the_splice_keeps_the_id_drops_the_opening_and_sums_usage() -> None:
    partial = PartialAnswer(Dialect.OPENAI)
    for word in ("a ", "b "):
        partial.feed(_chunk({"content": word}))
    splicer = Splicer(Dialect.OPENAI, "first-id", partial)
    assert splicer.rewrite(_chunk({"role": "assistant", "content": ""})) is None
    out = splicer.rewrite(_chunk({"content": "c "}))
    assert out is not None and orjson.loads(out[6:])["id"] == "first-id"
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3}}\n\n'
    summed = splicer.rewrite(usage)
    assert summed is not None
    assert orjson.loads(summed[6:])["usage"] == {
        "prompt_tokens": 10 + 12, "completion_tokens": 2 + 3, "total_tokens": 27,
    }  # fmt: skip
    body = orjson.loads(
        continuation_body({"messages": [], "max_tokens": 5}, partial, "openai", "x")
    )
    assert body["messages"][-1] == {"role": "assistant", "content": "a b "}
    assert (body["max_tokens"], body["model"], body["add_generation_prompt"]) == (3, "x", False)
