"""Streams translated event by event (sans-IO): every recorded upstream stream,
any split, to the client dialects it is not.

What a client reads is checked with a reader written here, not with the
gateway's: the text, the reasoning, the tool calls, the stop reason, the usage
and the error of the upstream's stream, in the client's API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.shapes import SHAPES
from trioproxy.dialects import ERROR, FINISH, USAGE, classify, is_final
from trioproxy.relay.sse import SSEFramer
from trioproxy.testing.mock_gemini import gemini_script
from trioproxy.testing.mock_scripts import script_for
from trioproxy.testing.mock_tools import with_tool_call
from trioproxy.translate import StreamTranslator, TranslatingFramer

KIND_OF_ROUTE = {"chat": "openai", "messages": "anthropic"}


def _script_events(route: str, tool: bool = False, n: int = 5) -> tuple[bytes, ...]:
    if route == "gemini":
        script = gemini_script("gemini-2.5-flash", n, 1, tool=tool)
    else:
        script = script_for(route, "m", n, include_usage=True, seq=1)
        script = with_tool_call(script, route) if tool else script
    return (*script.head, *(script.token(i) for i in range(n)), *script.tail)


def _streams() -> dict[str, tuple[str, tuple[bytes, ...]]]:
    """Every recorded stream shape of a dialect we translate, and the mock's (tools too)."""
    found = {
        name: (KIND_OF_ROUTE[shape.route], shape.events)
        for name, shape in SHAPES.items()
        if shape.route in KIND_OF_ROUTE
    }
    for route, kind in (("chat", "openai"), ("messages", "anthropic"), ("gemini", "gemini")):
        found[f"mock_{route}"] = (kind, _script_events(route))
        found[f"mock_{route}_tool"] = (kind, _script_events(route, tool=True))
    return found


STREAMS = _streams()
PAIRS = [
    (name, dialect)
    for name, (kind, _) in STREAMS.items()
    for dialect in ("openai", "anthropic")
    if dialect != kind
]


def _data(block: bytes) -> Any:
    lines = [line[5:].lstrip(b" ") for line in block.splitlines() if line.startswith(b"data:")]
    return json.loads(b"\n".join(lines)) if lines and lines != [b"[DONE]"] else None


def translate(kind: str, dialect: str, pieces: list[bytes]) -> list[bytes]:
    framer = TranslatingFramer(SSEFramer(), StreamTranslator(kind, dialect, created=1))
    out = [block for piece in pieces for block in framer.feed(piece)]
    return out + framer.close()


def upstream_reads(kind: str, events: tuple[bytes, ...], whole: bool = True) -> dict[str, Any]:
    """What the upstream said, read the upstream API's way."""
    text, calls = "", []
    for event in events:
        obj = _data(event.replace(b"\r\n", b"\n"))
        if not isinstance(obj, dict):
            continue
        if kind == "openai":
            for choice in obj.get("choices") or []:
                text += choice.get("delta", {}).get("content") or ""
                for call in choice.get("delta", {}).get("tool_calls") or []:
                    if call.get("function", {}).get("name"):
                        calls.append([call["function"]["name"], ""])
                    if calls:
                        calls[-1][1] += call.get("function", {}).get("arguments") or ""
        elif kind == "anthropic":
            delta = obj.get("delta") or {}
            text += delta.get("text", "") if delta.get("type") == "text_delta" else ""
            if obj.get("content_block", {}).get("type") == "tool_use":
                calls.append([obj["content_block"]["name"], ""])
            if delta.get("type") == "input_json_delta" and calls:
                calls[-1][1] += delta["partial_json"]
        else:
            for candidate in obj.get("candidates") or []:
                for part in candidate.get("content", {}).get("parts") or []:
                    text += part.get("text", "") if not part.get("thought") else ""
                    if "functionCall" in part:
                        call = part["functionCall"]
                        calls.append([call["name"], json.dumps(call["args"])])
    return {"text": text, "calls": [(n, json.loads(a) if whole else a) for n, a in calls]}


def client_reads(dialect: str, blocks: list[bytes], whole: bool = True) -> dict[str, Any]:
    """What a client of ``dialect`` reads of the translated stream."""
    got: dict[str, Any] = {"text": "", "reasoning": "", "calls": [], "stop": None,
                           "usage": None, "error": None, "final": False, "ids": set()}  # fmt: skip
    for block in blocks:
        got["final"] = got["final"] or is_final(block)
        obj = _data(block)
        if not isinstance(obj, dict):
            continue
        if dialect == "openai":
            if "error" in obj:
                got["error"] = obj["error"]["type"]
                continue
            got["ids"].add(obj["id"])
            got["usage"] = obj.get("usage") or got["usage"]
            for choice in obj["choices"]:
                delta = choice["delta"]
                got["text"] += delta.get("content") or ""
                got["reasoning"] += delta.get("reasoning_content") or ""
                for call in delta.get("tool_calls") or []:
                    if "id" in call:
                        got["calls"].append([call["function"]["name"], ""])
                    if got["calls"]:
                        got["calls"][call["index"]][1] += call["function"]["arguments"]
                got["stop"] = choice["finish_reason"] or got["stop"]
        else:
            kind, delta = obj["type"], obj.get("delta") or {}
            if kind == "error":
                got["error"] = obj["error"]["type"]
            elif kind == "message_start":
                got["ids"].add(obj["message"]["id"])
            elif kind == "content_block_start" and obj["content_block"]["type"] == "tool_use":
                got["calls"].append([obj["content_block"]["name"], ""])
            elif kind == "content_block_delta":
                got["text"] += delta.get("text", "")
                got["reasoning"] += delta.get("thinking", "")
                if delta["type"] == "input_json_delta" and got["calls"]:
                    got["calls"][-1][1] += delta["partial_json"]
            elif kind == "message_delta":
                got["stop"], got["usage"] = delta["stop_reason"], obj["usage"]
    if whole:  # the arguments of a whole stream are JSON
        got["calls"] = [(n, json.loads(a)) for n, a in got["calls"]]
    return got


@pytest.mark.parametrize(("name", "dialect"), PAIRS)
def test_a_client_reads_what_the_upstream_said(name: str, dialect: str) -> None:
    kind, events = STREAMS[name]
    said, read = (
        upstream_reads(kind, events),
        client_reads(dialect, translate(kind, dialect, list(events))),
    )
    assert read["text"] == said["text"] and read["calls"] == said["calls"]
    assert len(read["ids"]) == 1
    shape = SHAPES.get(name)
    if shape is not None and shape.error is not None:  # ended by the upstream's error
        assert read["error"] == shape.error and read["stop"] is None
        return
    assert read["error"] is None and read["final"]
    tool = {"openai": "tool_calls", "anthropic": "tool_use"}[dialect]
    assert (read["stop"] == tool) == bool(said["calls"])
    if (
        shape is not None and shape.usage is not None
    ):  # the upstream's counts, in the client's names
        names = (
            ("prompt_tokens", "completion_tokens")
            if dialect == "openai"
            else ("input_tokens", "output_tokens")
        )
        assert (read["usage"][names[0]], read["usage"][names[1]]) == shape.usage


@settings(max_examples=40, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize(("name", "dialect"), PAIRS)
def test_any_split_translates_to_the_same_events(
    name: str, dialect: str, data: st.DataObject
) -> None:
    kind, events = STREAMS[name]
    raw = b"".join(events)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=12)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert translate(kind, dialect, pieces) == translate(kind, dialect, [raw])


@pytest.mark.parametrize(("name", "dialect"), PAIRS)
def test_every_upstream_token_is_sent_for_the_event_that_brought_it(
    name: str, dialect: str
) -> None:
    """No text waits for a later event: each upstream event's text is in what its own feed returns."""
    kind, events = STREAMS[name]
    translator = StreamTranslator(kind, dialect)
    for event in events:
        said = upstream_reads(kind, (event,), whole=False)["text"]
        blocks = translator.feed(event.replace(b"\r\n", b"\n"))
        assert client_reads(dialect, blocks, whole=False)["text"] == said


def _anthropic(*events: tuple[str, dict[str, Any]]) -> list[bytes]:
    return [f"event: {n}\ndata: {json.dumps(o)}\n\n".encode() for n, o in events]


def _chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
    obj = {
        "id": "c1",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **more,
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@pytest.mark.parametrize(
    ("kind", "reason", "openai", "anthropic"),
    [
        ("openai", "stop", "stop", "end_turn"),
        ("openai", "length", "length", "max_tokens"),
        ("openai", "tool_calls", "tool_calls", "tool_use"),
        ("openai", "content_filter", "content_filter", "refusal"),
        ("anthropic", "end_turn", "stop", "end_turn"),
        ("anthropic", "max_tokens", "length", "max_tokens"),
        ("anthropic", "tool_use", "tool_calls", "tool_use"),
        ("anthropic", "stop_sequence", "stop", "stop_sequence"),
        ("anthropic", "refusal", "content_filter", "refusal"),
        ("gemini", "STOP", "stop", "end_turn"),
        ("gemini", "MAX_TOKENS", "length", "max_tokens"),
        ("gemini", "SAFETY", "content_filter", "refusal"),
    ],
)
def test_stop_reasons_map_by_the_table(kind: str, reason: str, openai: str, anthropic: str) -> None:
    if kind == "openai":
        events = [_chunk({"content": "x"}), _chunk({}, reason), b"data: [DONE]\n\n"]
    elif kind == "anthropic":
        events = _anthropic(
            ("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 1}}}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason}, "usage": {"output_tokens": 1}}),
            ("message_stop", {"type": "message_stop"}),
        )  # fmt: skip
    else:
        last = {
            "candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}],
            "responseId": "r",
        }
        events = [b"data: " + json.dumps(last).encode() + b"\r\n\r\n"]
    for dialect, expected in (("openai", openai), ("anthropic", anthropic)):
        if dialect != kind:
            assert client_reads(dialect, translate(kind, dialect, events))["stop"] == expected


def test_cache_tokens_cross_in_both_directions() -> None:
    start = {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {
        "input_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}}}  # fmt: skip
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 7},
    }
    events = _anthropic(
        ("message_start", start), ("message_delta", end), ("message_stop", {"type": "message_stop"})
    )
    usage = client_reads("openai", translate("anthropic", "openai", events))["usage"]
    assert usage["prompt_tokens"] == 125 and usage["completion_tokens"] == 7
    assert usage["prompt_tokens_details"]["cached_tokens"] == 100
    assert usage["cache_creation_input_tokens"] == 20

    cached = {"prompt_tokens": 80, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 50},
              "completion_tokens_details": {"reasoning_tokens": 2}}  # fmt: skip
    events = [_chunk({"content": "x"}), _chunk({}, "stop"), b"data: " + json.dumps(
        {"id": "c1", "choices": [], "usage": cached}).encode() + b"\n\n", b"data: [DONE]\n\n"]  # fmt: skip
    usage = client_reads("anthropic", translate("openai", "anthropic", events))["usage"]
    assert usage == {"input_tokens": 30, "output_tokens": 3, "cache_read_input_tokens": 50,
                     "cache_creation_input_tokens": 0}  # fmt: skip


def test_reasoning_crosses_as_each_api_streams_it() -> None:
    shape = SHAPES["anthropic_thinking"]
    read = client_reads("openai", translate("anthropic", "openai", list(shape.events)))
    assert read["reasoning"] == "".join(f"r{i} " for i in range(6))
    events = [
        _chunk({"reasoning_content": "think "}),
        _chunk({"content": "say"}),
        _chunk({}, "stop"),
        b"data: [DONE]\n\n",
    ]
    read = client_reads("anthropic", translate("openai", "anthropic", events))
    assert (read["reasoning"], read["text"]) == ("think ", "say")


def test_what_the_relay_reads_of_a_translated_stream() -> None:
    """The relay's own reading (final event, usage, stop reason, error) works on the client's events."""
    for name, dialect in PAIRS:
        kind, events = STREAMS[name]
        flags = [classify(b) for b in translate(kind, dialect, list(events))]
        if SHAPES.get(name) is not None and SHAPES[name].error is not None:
            assert any(f & ERROR for f in flags), name
        else:
            assert any(f & FINISH for f in flags) and any(f & USAGE for f in flags), name


def test_heartbeats_stay_heartbeats_and_a_cut_stream_gets_no_end() -> None:
    translator = StreamTranslator("anthropic", "openai")
    assert translator.feed(b": keep-alive\n\n") == [b": keep-alive\n\n"]
    assert translator.feed(b'event: ping\ndata: {"type": "ping"}\n\n') == [b": ping\n\n"]
    commented = b": a comment\n" + _chunk({"content": "x"})  # comments and data in one event
    assert (
        client_reads(
            "anthropic", StreamTranslator("openai", "anthropic").feed(commented), whole=False
        )["text"]
        == "x"
    )
    cut = [_chunk({"content": "x"})]  # no stop reason: a clean end here is no end
    assert not any(is_final(b) for b in translate("openai", "anthropic", cut))
    finished = [_chunk({"content": "x"}), _chunk({}, "stop")]  # a server that writes no [DONE]
    assert is_final(translate("openai", "anthropic", finished)[-1])


def test_an_upstream_starting_endless_tool_calls_is_cut_off_with_an_error() -> None:
    """The attack: an upstream that starts tool calls without end; the state kept per answer is bounded."""
    from trioproxy.translate.events import MAX_TOOL_CALLS

    start = {"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {}}}
    events = _anthropic(("message_start", start))
    for i in range(MAX_TOOL_CALLS + 50):
        block = {"type": "tool_use", "id": f"t{i}", "name": "f", "input": {}}
        events += _anthropic(
            (
                "content_block_start",
                {"type": "content_block_start", "index": i, "content_block": block},
            )
        )
    out = translate("anthropic", "openai", events)
    read = client_reads("openai", out, whole=False)
    assert len(read["calls"]) == MAX_TOOL_CALLS and read["error"] == "api_error"
    assert classify(out[-1]) & ERROR  # the error is the last event: nothing after it
    chunks = [
        {"index": i, "id": f"c{i}", "function": {"name": "f", "arguments": ""}}
        for i in range(MAX_TOOL_CALLS + 50)
    ]
    events = [_chunk({"tool_calls": [c]}) for c in chunks]
    out = translate("openai", "anthropic", events)
    assert client_reads("anthropic", out, whole=False)["error"] == "api_error"
    assert sum(b"content_block_start" in b for b in out) == MAX_TOOL_CALLS


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_KEYS = ["id", "model", "choices", "delta", "content", "tool_calls", "index", "function", "usage",
         "type", "message", "content_block", "text", "partial_json", "stop_reason", "candidates",
         "parts", "functionCall", "finishReason", "usageMetadata", "error"]  # fmt: skip
_events = st.dictionaries(st.sampled_from(_KEYS), _json, max_size=5)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["openai", "anthropic", "gemini"]), objs=st.lists(_events, max_size=6))
@example(  # an index a dict cannot be keyed by
    kind="anthropic",
    objs=[
        {
            "type": "content_block_delta",
            "index": [1],
            "delta": {"type": "input_json_delta", "partial_json": "x"},
        }
    ],
)
@example(
    kind="openai",
    objs=[{"id": "c", "choices": [{"delta": {"tool_calls": [{"index": [0], "id": "x"}]}}]}],
)
def test_no_upstream_event_crashes_a_translation(kind: str, objs: list[dict[str, Any]]) -> None:
    """Any JSON an upstream writes, in its fields' places, gives events or nothing, never an exception."""
    names = [b"content_block_delta", b"content_block_start", b"message_start", b"message_delta"]
    for dialect in ("openai", "anthropic"):
        translator = StreamTranslator(kind, dialect)
        for i, obj in enumerate(objs):
            data = b"data: " + json.dumps(obj).encode() + b"\n\n"
            block = b"event: " + names[i % 4] + b"\n" + data if kind == "anthropic" else data
            for out in translator.feed(block):
                assert out.endswith(b"\n\n")
        translator.close()
