"""Every OpenAI/Anthropic difference, from the one module that knows them."""

from __future__ import annotations

import orjson
import pytest

from trioproxy import dialects
from trioproxy.dialects import Dialect, render_json, render_sse
from trioproxy.errors import Overloaded, UpstreamIdleTimeout
from trioproxy.relay.sse import SSEFramer, parse_event


def test_openai_error_body_and_event() -> None:
    err = UpstreamIdleTimeout("no event for 30 s")
    body = orjson.loads(render_json(err, Dialect.OPENAI))
    assert body == {
        "error": {
            "message": "no event for 30 s",
            "type": "server_error",
            "param": None,
            "code": "upstream_idle_timeout",
        }
    }
    [block] = SSEFramer().feed(render_sse(err, Dialect.OPENAI))
    assert orjson.loads(parse_event(block).data or b"") == body


def test_anthropic_error_body_and_event() -> None:
    err = Overloaded("full")
    body = orjson.loads(render_json(err, Dialect.ANTHROPIC))
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "full"}}
    [block] = SSEFramer().feed(render_sse(err, Dialect.ANTHROPIC))
    event = parse_event(block)
    assert event.event == b"error" and orjson.loads(event.data or b"") == body


def test_dialect_of_a_path() -> None:
    assert dialects.dialect_for_path("/v1/messages/batches") is Dialect.ANTHROPIC
    assert dialects.dialect_for_path("/v1/whatever") is Dialect.OPENAI


@pytest.mark.parametrize(
    ("block", "final"),
    [
        (b"data: [DONE]\n\n", True),
        (b"event: message_stop\ndata: {}\n\n", True),
        (b"event: response.completed\ndata: {}\n\n", True),
        (b"event: response.failed\ndata: {}\n\n", True),
        (b"event: response.incomplete\ndata: {}\n\n", True),
        (b'data: {"choices": []}\n\n', False),
        (b"event: message_delta\ndata: {}\n\n", False),
        (b"data: [DONE] \n\n", False),
    ],
)
def test_final_events(block: bytes, final: bool) -> None:
    assert dialects.is_final(block) is final


def test_completion_ids_of_each_api() -> None:
    assert dialects.completion_id({"id": "chatcmpl-1"}) == "chatcmpl-1"
    assert dialects.completion_id({"message": {"id": "msg_1"}}) == "msg_1"
    assert dialects.completion_id({"response": {"id": "resp_1"}}) == "resp_1"
    assert dialects.completion_id({"id": 7}) is None


def test_anthropic_usage_merges_message_start_and_the_last_delta() -> None:
    first = {"message": {"id": "msg_1", "usage": {"input_tokens": 9, "output_tokens": 1}}}
    last = {"type": "message_delta", "usage": {"output_tokens": 42}}
    usage = dialects.usage(first, last, Dialect.ANTHROPIC)
    assert usage == {"input_tokens": 9, "output_tokens": 42}


def test_openai_usage_from_the_usage_chunk_only() -> None:
    first = {"id": "c1", "choices": []}
    assert dialects.usage(first, None, Dialect.OPENAI) is None
    last = {"id": "c1", "choices": [], "usage": {"total_tokens": 3}}
    assert dialects.usage(first, last, Dialect.OPENAI) == {"total_tokens": 3}


def test_responses_usage_nested_in_response() -> None:
    last = {"response": {"usage": {"output_tokens": 4}}}
    assert dialects.usage({"response": {"id": "r1"}}, last, Dialect.OPENAI) == {"output_tokens": 4}


def test_upstream_headers_per_kind() -> None:
    assert dialects.credential_headers("openai", "k") == {"authorization": "Bearer k"}
    assert dialects.credential_headers("anthropic", "k") == {"x-api-key": "k"}
    assert dialects.credential_headers("openai", None) == {}
    assert dialects.default_headers("anthropic") == {"anthropic-version": "2023-06-01"}
    assert dialects.default_headers("openai") == {}


def test_upstream_paths_per_kind() -> None:
    assert dialects.upstream_path("openai", "/models") == "/models"
    assert dialects.upstream_path("anthropic", "/models") == "/v1/models"
    assert dialects.upstream_path("anthropic", "/v1/messages") == "/v1/messages"
