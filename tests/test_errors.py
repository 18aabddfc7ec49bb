from __future__ import annotations

import httpx
import orjson
import pytest
import trio

from trioproxy.errors import (
    Dialect,
    Overloaded,
    UpstreamBroken,
    UpstreamIdleTimeout,
    UpstreamUnreachable,
    from_upstream_exception,
    render_json,
    render_sse,
)
from trioproxy.sse import SSEFramer, SSEFramingError, parse_event


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("refused"), UpstreamUnreachable),
        (httpx.ConnectTimeout("slow"), UpstreamUnreachable),
        (httpx.ReadError("reset"), UpstreamBroken),
        (httpx.RemoteProtocolError("incomplete chunked read"), UpstreamBroken),
        (trio.BrokenResourceError(), UpstreamBroken),
        (SSEFramingError("too big"), UpstreamBroken),
        (ConnectionRefusedError(), UpstreamUnreachable),
        (KeyError("x"), UpstreamBroken),
    ],
)
def test_mapping_table(exc: BaseException, expected: type) -> None:
    mapped = from_upstream_exception(exc)
    assert type(mapped) is expected
    assert mapped.status == 502 and mapped.outcome == "upstream_error"


def test_openai_dialect() -> None:
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


def test_anthropic_dialect() -> None:
    err = Overloaded("full")
    body = orjson.loads(render_json(err, Dialect.ANTHROPIC))
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "full"}}
    [block] = SSEFramer().feed(render_sse(err, Dialect.ANTHROPIC))
    event = parse_event(block)
    assert event.event == b"error" and orjson.loads(event.data or b"") == body
