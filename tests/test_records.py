from __future__ import annotations

from trioproxy.records import extract_first, extract_usage

START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
    b'"usage":{"input_tokens":9,"output_tokens":1}}}\n\n'
)
DELTA = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":42}}\n\n'


def test_anthropic_usage_merges_start_and_final_delta() -> None:
    first = extract_first(START)
    assert first is not None
    assert extract_usage(first, DELTA, anthropic=True) == {"input_tokens": 9, "output_tokens": 42}


def test_openai_usage_from_the_usage_chunk_only() -> None:
    first = extract_first(b'data: {"id":"c1","choices":[]}\n\n')
    assert first is not None
    assert extract_usage(first, None, anthropic=False) is None
    usage = b'data: {"id":"c1","choices":[],"usage":{"total_tokens":3}}\n\n'
    assert extract_usage(first, usage, anthropic=False) == {"total_tokens": 3}


def test_responses_usage_nested_in_response() -> None:
    first = extract_first(b'event: response.created\ndata: {"response":{"id":"r1"}}\n\n')
    assert first is not None
    done = b'event: response.completed\ndata: {"response":{"usage":{"output_tokens":4}}}\n\n'
    assert extract_usage(first, done, anthropic=False) == {"output_tokens": 4}


def test_malformed_first_event_is_not_fatal() -> None:
    assert extract_first(b"data: {not json\n\n") is None
    assert extract_first(b": comment\n\n") is None
