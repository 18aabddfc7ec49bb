"""What the mock upstream says: fault specs and byte templates (sans-IO).

A request's model name picks its behaviour: ``mock`` followed by dash-separated
options, e.g. ``mock-t50-i20-stall10``. Any other model name gets the server's
defaults.

========  =====================================================================
option    meaning
========  =====================================================================
t<N>      N tokens
i<MS>     inter-token latency, milliseconds (float)
f<MS>     time to first token, milliseconds (float; headers are sent at once)
stall<K>  stall forever after K tokens (the connection stays open; K=0: no data event)
drop<K>   close the TCP connection after K tokens, mid-body
half<K>   after K tokens send half of the next event, then reset the connection
e<CODE>   answer HTTP CODE (e.g. 500, 429) before any byte of the stream
n<K>      the error (e<CODE> or error-NAME) for the first K requests of this
          model name only; later ones stream as usual
ra<S>     send ``Retry-After: S`` with the error (a 429 sends 1 unless told)
error-E   answer error E as a real server words it (:mod:`trioproxy.testing.shapes.errors`)
flap<S>   HTTP 500 for S seconds from the first request of this model name, then healthy
rst1      reset the connection before any byte of an answer
wait<MS>  send nothing for MS milliseconds (not even the head), then answer
noprefill1  refuse (400) a request to continue a final assistant message
(what these answer before a stream: :mod:`trioproxy.testing.mock_answers`)
bad<K>    send one malformed event (invalid JSON) after K tokens, then go on
hb<K>     after K tokens send only ``: ping`` comments, forever (K=0: no data event)
p<MS>     interval of those pings, milliseconds (default 100)
x<N>      a tag, otherwise ignored: lets a test or ``chaos`` match its requests
tool1     end the answer with a tool call (:mod:`trioproxy.testing.mock_tools`)
shape-S   stream as server shape S does (:mod:`trioproxy.testing.shapes`:
          json_dumps, groq, azure, anthropic, ...), with the timing and faults above
========  =====================================================================

Events are built from templates per stream (one bytes concatenation per token),
never by JSON-encoding an object per token.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace

import orjson

from .shapes import BUILDERS, build
from .shapes.errors import ERRORS

__all__ = ["Fault", "FaultSpecError", "Script", "parse_fault", "script_for", "shaped"]

SHAPE_NAMES = frozenset(BUILDERS)

WORDS = [
    "The",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "streams",
    "flow",
    "through",
    "trio",
    "nurseries",
    "and",
    "every",
    "token",
    "arrives",
    "on",
    "time",
    "without",
    "buffering",
]


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Fault:
    tokens: int = 16
    itl_ms: float = 0.0
    ttft_ms: float = 0.0
    stall_after: int | None = None
    drop_after: int | None = None
    error_status: int | None = None
    bad_after: int | None = None
    heartbeat_after: int | None = None
    ping_ms: float = 100.0
    tag: int | None = None
    shape: str | None = None  # a real server's stream (trioproxy.testing.shapes)
    error_name: str | None = None  # a real server's error answer (shapes/errors.py)
    error_times: int | None = None  # the error for this many requests of the model, then none
    retry_after: int | None = None  # Retry-After on the error
    flap_s: float | None = None  # HTTP 500 this long from the model's first request
    reset: int = 0  # 1: reset before any byte of an answer
    head_wait_ms: float = 0.0  # nothing at all this long
    no_prefill: int = 0  # 1: refuse to continue a final assistant message
    half_after: int | None = None  # send half an event after this many tokens, then reset
    tool_call: int = 0  # 1: the answer ends in a tool call (mock_tools.py)


_OPTION = re.compile(
    r"(stall|drop|half|bad|hb|ra|flap|rst|wait|noprefill|tool|t|i|f|e|p|x|n)(\d+(?:\.\d+)?)"
)
_FIELDS = {
    "t": "tokens",
    "i": "itl_ms",
    "f": "ttft_ms",
    "stall": "stall_after",
    "drop": "drop_after",
    "half": "half_after",
    "e": "error_status",
    "bad": "bad_after",
    "hb": "heartbeat_after",
    "p": "ping_ms",
    "x": "tag",
    "n": "error_times",
    "ra": "retry_after",
    "flap": "flap_s",
    "rst": "reset",
    "wait": "head_wait_ms",
    "noprefill": "no_prefill",
    "tool": "tool_call",
}
_FLOATS = {"itl_ms", "ttft_ms", "ping_ms", "flap_s", "head_wait_ms"}


def parse_fault(model: str, defaults: Fault) -> Fault:
    if model != "mock" and not model.startswith("mock-"):
        return defaults
    changes: dict[str, float | int | str] = {}
    parts = iter(model.split("-")[1:])
    for part in parts:
        if part == "shape":  # shape-NAME: a real server's stream shape
            name = next(parts, "")
            if name not in SHAPE_NAMES:
                raise FaultSpecError(f"unknown stream shape {name!r}: one of {sorted(SHAPE_NAMES)}")
            changes["shape"] = name
            continue
        if part == "error":  # error-NAME: a real server's error answer
            name = next(parts, "")
            if name not in ERRORS:
                raise FaultSpecError(f"unknown error {name!r}: one of {sorted(ERRORS)}")
            changes["error_name"] = name
            changes["error_status"] = ERRORS[name][0]
            continue
        m = _OPTION.fullmatch(part)
        if m is None:
            raise FaultSpecError(f"unknown mock option {part!r} in model {model!r}")
        name = _FIELDS[m.group(1)]
        changes[name] = float(m.group(2)) if name in _FLOATS else int(float(m.group(2)))
    fault = replace(defaults, **changes)  # type: ignore[arg-type]
    if fault.error_status is not None and not 400 <= fault.error_status <= 599:
        raise FaultSpecError("e<CODE> takes an HTTP error status, 400-599")
    return fault


def _j(value: object) -> bytes:
    return orjson.dumps(value)


@dataclass(slots=True)
class Script:
    """The bytes of one response: ``head`` events, one per token, ``tail`` events."""

    id: str
    head: list[bytes]
    prefix: bytes
    suffix: bytes
    tail: list[bytes]
    whole: bytes  # the non-streaming body
    bad: bytes
    words: list[bytes]
    tokens: list[bytes] | None = None  # a shape's own token events

    def token(self, i: int) -> bytes:
        if self.tokens is not None:
            return self.tokens[i]
        return self.prefix + self.words[i % len(self.words)] + self.suffix


def script_for(
    route: str, model: str, n: int, include_usage: bool, seq: int, skip: int = 0
) -> Script:
    """Templates for ``route`` (chat, completions, responses, messages); ``skip``:
    tokens a prefill already holds (the usage then counts the rest, and the prompt them)."""
    m = _j(model)
    now = str(int(time.time())).encode()
    words = [w.encode() + b" " for w in WORDS]
    # The words over and over (a multiplication: a flood of 400,000 tokens in a
    # few ms, not the 70 ms a join per token kept the mock's event loop from
    # noticing hang-ups, which a chaos campaign timed as the gateway's).
    cycle = "".join(w + " " for w in WORDS)
    text = cycle * (n // len(WORDS)) + "".join(w + " " for w in WORDS[: n % len(WORDS)])
    usage_p, usage_c = 8 + skip, n - skip
    bad = b'data: {"id": this is not json\n\n'
    if route == "messages":
        mid = f"msg_mock{seq:08d}".encode()
        start = (
            b'event: message_start\ndata: {"type":"message_start","message":{"id":"' + mid
            + b'","type":"message","role":"assistant","model":' + m
            + b',"content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":'
            + b"%d,\"output_tokens\":1}}}\n\n" % usage_p
        )  # fmt: skip
        return Script(
            id=mid.decode(),
            head=[
                start,
                b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                b'"content_block":{"type":"text","text":""}}\n\n',
                b'event: ping\ndata: {"type": "ping"}\n\n',
            ],
            prefix=b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"',
            suffix=b'"}}\n\n',
            tail=[
                b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
                b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
                b'"end_turn","stop_sequence":null},"usage":{"output_tokens":%d}}\n\n' % usage_c,
                b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
            ],
            whole=_j(
                {
                    "id": mid.decode(),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": usage_p, "output_tokens": usage_c},
                }
            ),
            bad=b"event: content_block_delta\n" + bad,
            words=words,
        )
    if route == "responses":
        rid = f"resp_mock{seq:08d}".encode()
        resp = {
            "id": rid.decode(),
            "object": "response",
            "created_at": int(now),
            "status": "completed",
            "model": model,
            "output": [
                {
                    "type": "message",
                    "id": "msg_" + rid.decode(),
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": usage_p,
                "output_tokens": usage_c,
                "total_tokens": usage_p + usage_c,
            },
        }
        created = dict(resp, status="in_progress", output=[], usage=None)
        return Script(
            id=rid.decode(),
            head=[
                b"event: response.created\ndata: "
                + _j({"type": "response.created", "sequence_number": 0, "response": created})
                + b"\n\n"
            ],
            prefix=b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"item_id":"msg_' + rid + b'","output_index":0,"content_index":0,"delta":"',
            suffix=b'"}\n\n',
            tail=[
                b"event: response.completed\ndata: "
                + _j({"type": "response.completed", "sequence_number": n + 1, "response": resp})
                + b"\n\n"
            ],
            whole=_j(resp),
            bad=b"event: response.output_text.delta\n" + bad,
            words=words,
        )
    chat = route == "chat"
    cid = (f"chatcmpl-mock{seq:08d}" if chat else f"cmpl-mock{seq:08d}").encode()
    obj = b"chat.completion.chunk" if chat else b"text_completion"
    common = b'data: {"id":"' + cid + b'","object":"' + obj + b'","created":' + now
    common += b',"model":' + m + b',"choices":[{"index":0,'
    usage = {"prompt_tokens": usage_p, "completion_tokens": usage_c, "total_tokens": usage_p + n}
    if chat:
        head = [common + b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n']
        prefix, suffix = common + b'"delta":{"content":"', b'"},"finish_reason":null}]}\n\n'
        last = common + b'"delta":{},"finish_reason":"stop"}]}\n\n'
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        head = []
        prefix, suffix = common + b'"text":"', b'","logprobs":null,"finish_reason":null}]}\n\n'
        last = common + b'"text":"","logprobs":null,"finish_reason":"stop"}]}\n\n'
        choice = {"index": 0, "text": text, "logprobs": None}
    tail = [last]
    if include_usage:
        tail.append(
            b'data: {"id":"' + cid + b'","object":"' + obj + b'","created":' + now
            + b',"model":' + m + b',"choices":[],"usage":' + _j(usage) + b"}\n\n"
        )  # fmt: skip
    tail.append(b"data: [DONE]\n\n")
    whole = _j(
        {
            "id": cid.decode(),
            "object": "chat.completion" if chat else "text_completion",
            "created": int(now),
            "model": model,
            "choices": [dict(choice, finish_reason="stop")],
            "usage": usage,
        }
    )
    return Script(cid.decode(), head, prefix, suffix, tail, whole, bad, words)


def shaped(script: Script, shape: str, n: int) -> Script:
    """``script`` streaming as server shape ``shape`` does, with ``n`` tokens (its
    non-streaming body stays the mock's own)."""
    built = build(shape, n)
    events, head = built.events, built.head
    return replace(
        script, head=list(events[:head]), tokens=list(events[head : head + n]),
        tail=list(events[head + n :]),
    )  # fmt: skip
