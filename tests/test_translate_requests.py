"""Requests translated between the APIs (sans-IO): what maps, what is refused by
name, what is on the allow-list, and the round trips where the APIs say the same."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioproxy.errors import BadRequest
from trioproxy.translate import error_answer, request_for, translate_answer
from trioproxy.translate.chat_to_gemini import chat_to_gemini
from trioproxy.translate.chat_to_messages import chat_to_messages
from trioproxy.translate.messages_to_chat import messages_to_chat

PNG = "data:image/png;base64,iVBORw0KGgo="
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
CHAT = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": PNG}},
                                     {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ],
    "max_tokens": 100, "temperature": 0.5, "top_p": 0.9, "stop": ["END"], "user": "u-1",
    "tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False,
    "stream": True, "stream_options": {"include_usage": True}, "seed": 7, "n": 1,
}  # fmt: skip


def test_a_chat_request_as_anthropic_messages() -> None:
    out = chat_to_messages(CHAT)
    assert out["system"] == "Be brief." and out["max_tokens"] == 100
    assert (out["temperature"], out["top_p"], out["stop_sequences"]) == (0.5, 0.9, ["END"])
    assert out["metadata"] == {"user_id": "u-1"} and out["stream"] is True
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["tools"][0]["input_schema"] == TOOL["function"]["parameters"]
    user, assistant, result, last = out["messages"]
    assert user["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert user["content"][2]["source"] == {"type": "url", "url": "https://x.test/a.jpg"}
    assert assistant["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert result == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}],
    }
    assert last == {"role": "user", "content": "thanks"}
    assert "seed" not in out and "n" not in out and "stream_options" not in out  # the allow-list


def test_anthropic_messages_as_a_chat_request() -> None:
    body = {
        "model": "m", "max_tokens": 2000, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                              {"type": "text", "text": "Let me check."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                                         {"type": "text", "text": "and tomorrow?"}]},
        ],
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "top_k": 5, "stream": True,
        "tool_choice": {"type": "tool", "name": "get_weather"}, "metadata": {"user_id": "u-1"},
    }  # fmt: skip
    out = messages_to_chat(body)
    system, _user, assistant, tool, follow = out["messages"]
    assert system == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert assistant["content"] == "Let me check." and assistant["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}  # fmt: skip
    assert tool == {
        "role": "tool",
        "tool_call_id": "toolu_1",
        "content": "sunny",
    }  # before the user's text
    assert follow == {"role": "user", "content": [{"type": "text", "text": "and tomorrow?"}]}
    assert out["reasoning_effort"] == "low" and out["top_k"] == 5 and out["user"] == "u-1"
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert out["stream_options"] == {"include_usage": True}  # message_delta carries the usage


@pytest.mark.parametrize(
    ("kind", "dialect", "change", "field"),
    [
        ("anthropic", "openai", {"logit_bias": {"1": 2}}, "logit_bias"),
        ("anthropic", "openai", {"n": 2}, "n"),
        ("anthropic", "openai", {"response_format": {"type": "json_object"}}, "response_format"),
        ("anthropic", "openai", {"tools": [{"type": "custom", "name": "x"}]}, "tools[0].type"),
        (
            "anthropic",
            "openai",
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            "anthropic",
            "openai",
            {"messages": [{"role": "user", "content": "x", "audio": 1}]},
            "messages[0].audio",
        ),
        ("anthropic", "openai", {"reasoning_effort": "extreme"}, "reasoning_effort"),
        ("gemini", "openai", {"logit_bias": {"1": 2}}, "logit_bias"),
        (
            "anthropic",
            "openai",
            {"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
            "tools[0].function.strict",
        ),
        (
            "gemini",
            "openai",
            {"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
            "tools[0].function.strict",
        ),
        ("gemini", "openai", {"parallel_tool_calls": False}, "parallel_tool_calls"),
        ("openai", "anthropic", {"container": "c"}, "container"),
        (
            "openai",
            "anthropic",
            {"tools": [{"type": "web_search_20250305", "name": "web"}]},
            "tools[0].type",
        ),
        (
            "openai",
            "anthropic",
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
        ("openai", "anthropic", {"metadata": {"user_id": "u", "team": "x"}}, "metadata.team"),
        ("gemini", "anthropic", {"mcp_servers": []}, "mcp_servers"),
    ],
)
def test_a_field_that_cannot_be_translated_is_refused_by_name(
    kind: str, dialect: str, change: dict[str, Any], field: str
) -> None:
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with pytest.raises(BadRequest, match=f"'{field.replace('[', '.').replace(']', '.')}'"):
        request_for(kind, dialect, {**body, **change})


def test_a_chat_request_as_gemini() -> None:
    out = chat_to_gemini(
        {
            **CHAT,
            "reasoning_effort": "medium",
            "parallel_tool_calls": True,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }
    )
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    user, model, result, _last = out["contents"]
    assert user["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    assert user["parts"][2] == {
        "fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.test/a.jpg"}
    }
    assert model == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
    }
    assert result["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}}
    ]
    assert out["generationConfig"] == {
        "maxOutputTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"], "seed": 7,
        "thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": True},
    }  # fmt: skip
    assert out["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    assert (
        out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]
        == TOOL["function"]["parameters"]
    )
    assert "model" not in out  # Gemini's model is in the URL


# -- round trips ------------------------------------------------------------------------
_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_args = st.dictionaries(
    st.sampled_from(["city", "day", "n"]), st.text("abc", max_size=4), max_size=2
)


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Chat requests of what both APIs say alike (the round-trip's domain)."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_text)})
    for turn in range(draw(st.integers(1, 4))):
        parts = draw(st.lists(st.one_of(
            st.builds(lambda t: {"type": "text", "text": t}, _text),
            st.sampled_from([{"type": "image_url", "image_url": {"url": PNG}},
                             {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]),
        ), min_size=1, max_size=3))  # fmt: skip
        messages.append({"role": "user", "content": draw(st.sampled_from([draw(_text), parts]))})
        calls = draw(st.lists(_args, max_size=2))
        if calls:
            ids = [f"call_{turn}_{i}" for i in range(len(calls))]
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": i, "type": "function", "function": {"name": "f", "arguments": json.dumps(a, separators=(",", ":"), ensure_ascii=False)}}
                for i, a in zip(ids, calls, strict=True)]})  # fmt: skip
            messages += [{"role": "tool", "tool_call_id": i, "content": draw(_text)} for i in ids]
        else:
            messages.append({"role": "assistant", "content": draw(_text.filter(bool))})
    body: dict[str, Any] = {
        "model": "m",
        "messages": messages,
        "max_tokens": draw(st.integers(20_000, 30_000)),
    }
    optional = {
        "temperature": st.floats(0, 1), "top_p": st.floats(0, 1), "stop": st.lists(_text.filter(bool), min_size=1, max_size=2),
        "user": _text.filter(bool), "tools": st.just([TOOL]), "reasoning_effort": st.sampled_from(["low", "medium", "high"]),
        "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}}]),
    }  # fmt: skip
    for name, values in optional.items():
        if draw(st.booleans()):
            body[name] = draw(values)
    return body


@settings(max_examples=200, deadline=None)
@given(chat_requests())
def test_requests_round_trip_through_the_other_api(body: dict[str, Any]) -> None:
    """chat -> messages -> chat gives the request back; so does messages -> chat -> messages."""
    messages = chat_to_messages(body)
    assert messages_to_chat(messages) == body
    assert chat_to_messages(messages_to_chat(messages)) == messages


# -- whole answers and errors ----------------------------------------------------------------
OPENAI_ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "ok",
                 "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}},
}  # fmt: skip
ANTHROPIC_ANSWER = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "max_tokens",
    "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "ok"}],
    "usage": {"input_tokens": 2, "output_tokens": 3, "cache_read_input_tokens": 8, "cache_creation_input_tokens": 1},
}  # fmt: skip
GEMINI_ANSWER = {
    "candidates": [{"content": {"parts": [{"text": "ok"}], "role": "model"}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 3, "thoughtsTokenCount": 2, "cachedContentTokenCount": 1},
    "modelVersion": "gemini-2.5-flash", "responseId": "r1",
}  # fmt: skip


def test_whole_answers_in_the_clients_api() -> None:
    out = json.loads(
        translate_answer("openai", "anthropic", json.dumps(OPENAI_ANSWER).encode(), 1)[0]
    )
    assert out["content"] == [
        {"type": "text", "text": "ok"},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
    ]
    assert out["stop_reason"] == "tool_use" and out["id"] == "chatcmpl-1"
    assert out["usage"] == {
        "input_tokens": 6,
        "output_tokens": 3,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0,
    }
    out = json.loads(
        translate_answer("anthropic", "openai", json.dumps(ANTHROPIC_ANSWER).encode(), 1)[0]
    )
    message = out["choices"][0]["message"]
    assert (
        message["content"],
        message["reasoning_content"],
        out["choices"][0]["finish_reason"],
    ) == ("ok", "hm", "length")
    assert (
        out["usage"]["prompt_tokens"] == 11
        and out["usage"]["prompt_tokens_details"]["cached_tokens"] == 8
    )
    out = json.loads(
        translate_answer("gemini", "openai", json.dumps(GEMINI_ANSWER, indent=2).encode(), 1)[0]
    )
    assert (
        out["id"] == "r1"
        and out["model"] == "gemini-2.5-flash"
        and out["choices"][0]["message"]["content"] == "ok"
    )
    assert (
        out["usage"]["completion_tokens"],
        out["usage"]["completion_tokens_details"]["reasoning_tokens"],
    ) == (5, 2)
    with pytest.raises(ValueError):
        translate_answer("openai", "anthropic", b'{"id": "x"}', 1)  # not a chat completion
    bare = {k: v for k, v in OPENAI_ANSWER.items() if k != "usage"}  # a server that reports none
    out, reported = translate_answer("openai", "anthropic", json.dumps(bare).encode(), 1)
    assert not reported and json.loads(out)["usage"]["output_tokens"] == 0  # the record estimates
    assert "usage" not in json.loads(translate_answer("anthropic", "openai", json.dumps(
        {k: v for k, v in ANTHROPIC_ANSWER.items() if k != "usage"}).encode(), 1)[0])  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "bad key", "type": "invalid_request_error"}}',
        b'{"type": "error", "error": {"type": "authentication_error", "message": "bad key"}}',
        b'{"error": {"code": 401, "message": "bad key", "status": "UNAUTHENTICATED"}}',
    ],
)
def test_an_upstream_error_answer_takes_the_clients_shape(body: bytes) -> None:
    assert json.loads(error_answer(401, body, "anthropic")) == {
        "type": "error", "error": {"type": "authentication_error", "message": "bad key"}}  # fmt: skip
    assert json.loads(error_answer(401, body, "openai"))["error"] == {
        "message": "bad key", "type": "authentication_error", "param": None, "code": None}  # fmt: skip
    assert (
        json.loads(error_answer(404, b"<html>", "openai"))["error"]["message"]
        == "the upstream answered 404"
    )


def test_a_field_name_in_a_refusal_is_bounded_and_printable() -> None:
    """The attack: a key of 100,000 characters with a newline, to flood the log and the record."""
    hostile = "x\n" * 50_000
    with pytest.raises(BadRequest) as refused:
        request_for("anthropic", "openai", {"model": "m", "messages": [], hostile: 1})
    message = refused.value.message
    assert len(message) < 200 and "\n" not in message
    assert message.startswith("'x?x?") and "...' cannot be translated" in message
