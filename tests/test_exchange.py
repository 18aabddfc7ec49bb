"""The exchange's lifecycle table and the record made from it."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from trioproxy.dialects import Dialect
from trioproxy.errors import Outcome, UpstreamBroken
from trioproxy.relay.exchange import TRANSITIONS, Exchange, IllegalTransition, Phase
from trioproxy.relay.record import CompletionRecord

START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
    b'"usage":{"input_tokens":9,"output_tokens":1}}}\n\n'
)
DELTA = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":42}}\n\n'


def _exchange(**fields: object) -> Exchange:
    return Exchange(request_id="r", route="chat", method="POST", started=0.0, **fields)  # type: ignore[arg-type]


async def test_the_first_outcome_stands() -> None:
    ex = _exchange()
    ex.move(Phase.ADMITTED)
    ex.move(Phase.RELAYING)
    ex.hung_up(1.5)
    ex.settle(Outcome.DONE)  # a writer that ran on
    assert (ex.outcome, ex.disconnected_at) == (Outcome.CLIENT_DISCONNECT, 1.5)


async def test_an_error_before_the_relay_settles_it() -> None:
    ex = _exchange()
    ex.fail(UpstreamBroken("x"))
    assert ex.phase is Phase.SETTLED and ex.outcome is Outcome.UPSTREAM_ERROR


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((Phase.ADMITTED, Phase.RELAYING), Phase.RELAYING),  # a relay started twice
        ((Phase.SETTLED, Phase.RECORDED), Phase.SETTLED),  # an outcome after the record
        ((), Phase.RECORDED),  # a record of an unsettled exchange
        ((Phase.ADMITTED,), Phase.RECEIVED),
    ],
)
async def test_illegal_transitions_raise_in_strict_mode(
    path: tuple[Phase, ...], illegal: Phase
) -> None:
    ex = _exchange()
    for phase in path:
        ex.move(phase)
    assert Exchange.strict  # tests/conftest.py
    with pytest.raises(IllegalTransition):
        ex.move(illegal)


async def test_illegal_transitions_are_ignored_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Exchange, "strict", False)
    ex = _exchange()
    ex.settle(Outcome.DONE)
    ex.move(Phase.RECORDED)
    ex.settle(Outcome.SLOW_CLIENT)
    assert (ex.phase, ex.outcome) == (Phase.RECORDED, Outcome.DONE)


async def test_every_phase_can_reach_recorded() -> None:
    for phase in Phase:
        seen, todo = {phase}, [phase]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert Phase.RECORDED in seen


async def test_record_of_an_anthropic_stream_parses_first_and_usage_events_once() -> None:
    ex = _exchange(dialect=Dialect.ANTHROPIC, first_block=START, usage_block=DELTA)
    ex.settle(Outcome.DONE)
    ex.ended = 1.0
    record = CompletionRecord.from_exchange(ex)
    assert record.completion_id == "msg_1"
    assert record.usage == {"input_tokens": 9, "output_tokens": 42}
    assert ex.phase is Phase.RECORDED
    assert b'"outcome":"done"' in record.to_json()
    whole = dataclasses.asdict(record)
    del whole["timeline"]
    assert record.to_json() == orjson.dumps(whole)  # every field but the timeline, as is


async def test_a_malformed_first_event_is_not_fatal() -> None:
    ex = _exchange(first_block=b"data: {not json\n\n")
    ex.settle(Outcome.DONE)
    ex.ended = 1.0
    record = CompletionRecord.from_exchange(ex)
    assert (record.completion_id, record.usage) == (None, None)
