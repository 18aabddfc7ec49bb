from __future__ import annotations

import orjson
import pytest

from trioproxy.relay.sse import SSEFramer, parse_event
from trioproxy.testing.mock_scripts import Fault, FaultSpecError, parse_fault, script_for


def test_fault_spec() -> None:
    defaults = Fault(tokens=16, itl_ms=20)
    assert parse_fault("gpt-4o", defaults) is defaults
    fault = parse_fault("mock-t50-i2.5-f100-stall10-e429-bad3-hb7-p20-drop9", defaults)
    assert fault == Fault(50, 2.5, 100.0, 10, 9, 429, 3, 7, 20.0, None)
    with pytest.raises(FaultSpecError, match="unknown mock option"):
        parse_fault("mock-q1", defaults)
    with pytest.raises(FaultSpecError):
        parse_fault("mock-e200", defaults)


@pytest.mark.parametrize("route", ["chat", "completions", "responses", "messages"])
def test_every_template_event_is_valid_json(route: str) -> None:
    script = script_for(route, 'model "quoted"', 5, True, 1)
    body = b"".join([*script.head, *(script.token(i) for i in range(5)), *script.tail])
    blocks = SSEFramer().feed(body)
    for block in blocks:
        data = parse_event(block).data
        assert data is not None
        if data != b"[DONE]":
            orjson.loads(data)
    assert orjson.loads(script.whole)["id"] == script.id
    assert script.id.encode() in blocks[0]
