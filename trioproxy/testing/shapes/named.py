"""Streams of named events (``event:`` lines): Anthropic's Messages API and OpenAI's
Responses API, as their servers write them.

Each builder takes the number of tokens and returns the :class:`~.shape.Shape`;
where a stream came from is in its docstring and ``source``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .shape import Shape, compact


def _named(name: str, obj: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + compact(obj) + b"\n\n"


def _message_start(input_tokens: int) -> bytes:
    message: dict[str, object] = {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
               "content": [], "model": "claude-sonnet-4-5", "stop_reason": None,
               "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}  # fmt: skip
    return _named("message_start", {"type": "message_start", "message": message})


def _block(index: int, kind: str, pieces: list[tuple[str, str]]) -> list[bytes]:
    """One content block: its start, a delta per (delta type, text), its stop."""
    start = {"type": kind, kind: ""}
    events = [
        _named("content_block_start",
               {"type": "content_block_start", "index": index, "content_block": start})
    ]  # fmt: skip
    for delta_type, text in pieces:
        field = {"text_delta": "text", "thinking_delta": "thinking"}.get(delta_type, "signature")
        delta = {"type": delta_type, field: text}
        events.append(
            _named(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )
    events.append(_named("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def _message_end(output_tokens: int) -> list[bytes]:
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    usage = {"output_tokens": output_tokens}
    return [
        _named("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}),
        _named("message_stop", {"type": "message_stop"}),
    ]


def _anthropic(tokens: int) -> Shape:
    """Anthropic's Messages stream: ``message_start`` (input tokens), ``ping``,
    ``content_block_start``, text deltas, ``content_block_stop``, ``message_delta``
    (``stop_reason``, output tokens), ``message_stop`` (the event flow of
    docs.anthropic.com/en/api/messages-streaming, as Anthropic's SDKs model it)."""
    events = [_message_start(25), _named("ping", {"type": "ping"})]
    events += _block(0, "text", [("text_delta", f"t{i} ") for i in range(tokens)])
    events += _message_end(tokens)
    source = "docs.anthropic.com/en/api/messages-streaming (its event flow)"
    return Shape(source, tuple(events), tokens, (25, tokens), route="messages", head=3)


def _anthropic_thinking(tokens: int) -> Shape:
    """Extended thinking: a ``thinking`` block of ``thinking_delta`` events closed by
    a ``signature_delta``, then the ``text`` block, ``message_delta`` with the output
    tokens of both, ``message_stop`` (docs.anthropic.com, "Streaming with extended
    thinking"). The signature counts as one more content event."""
    half = tokens // 2
    thinking = [("thinking_delta", f"r{i} ") for i in range(half)]
    thinking.append(("signature_delta", "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"))
    events = [_message_start(36)]
    events += _block(0, "thinking", thinking)
    events += _block(1, "text", [("text_delta", f"t{i} ") for i in range(half, tokens)])
    events += _message_end(tokens)
    source = "docs.anthropic.com/en/docs/build-with-claude/extended-thinking (streaming)"
    return Shape(source, tuple(events), tokens + 1, (36, tokens), route="messages", head=2)


def _anthropic_overloaded(tokens: int) -> Shape:
    """An Anthropic stream that the API ends with an error event: ``overloaded_error``
    (what a 529 would be without streaming), in the spacing of the documentation's
    example, after some text; no ``message_delta``, no ``message_stop``
    (docs.anthropic.com/en/api/messages-streaming, "Error events")."""
    events = [_message_start(25), _named("ping", {"type": "ping"})]
    events += _block(0, "text", [("text_delta", f"t{i} ") for i in range(tokens)])[:-1]
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    events.append(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")
    source = "docs.anthropic.com/en/api/messages-streaming (error events)"
    return Shape(
        source, tuple(events), tokens, None, route="messages", head=3, error="overloaded_error"
    )


def _openai_responses(tokens: int) -> Shape:
    """OpenAI's Responses API (``/v1/responses``): named events each with a
    ``sequence_number``: ``response.created``, ``response.in_progress``, the output
    item and content part added, ``response.output_text.delta`` per token, their
    ``done`` events, and ``response.completed`` with ``usage`` (``input_tokens``,
    ``output_tokens``); no ``[DONE]`` (developers.openai.com streaming-responses
    guide; the openai-interface crate's ``ResponseStreamEvent``)."""
    seq = iter(range(10**6))
    rid, item = "resp_67c9fdcecf488190bdd9a0409de3a1ec", "msg_67c9fdcf37fc8190ba82116e33fb28c5"
    response: dict[str, object] = {"id": rid, "object": "response", "created_at": 1741290958,
                                   "status": "in_progress", "model": "gpt-4.1-2025-04-14",
                                   "output": [], "usage": None}  # fmt: skip

    def event(name: str, **fields: object) -> bytes:
        return _named(name, {"type": name, "sequence_number": next(seq), **fields})

    text = "".join(f"t{i} " for i in range(tokens))
    part = {"type": "output_text", "text": "", "annotations": []}
    message = {
        "id": item,
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    events = [
        event("response.created", response=response),
        event("response.in_progress", response=response),
        event("response.output_item.added", output_index=0, item=message),
        event(
            "response.content_part.added", item_id=item, output_index=0, content_index=0, part=part
        ),
    ]
    events += [
        event(
            "response.output_text.delta",
            item_id=item,
            output_index=0,
            content_index=0,
            delta=f"t{i} ",
        )
        for i in range(tokens)
    ]
    done_part = {**part, "text": text}
    done_message = {**message, "status": "completed", "content": [done_part]}
    usage = {"input_tokens": 37, "output_tokens": tokens, "total_tokens": 37 + tokens}
    completed = {**response, "status": "completed", "output": [done_message], "usage": usage}
    events += [
        event(
            "response.output_text.done", item_id=item, output_index=0, content_index=0, text=text
        ),
        event(
            "response.content_part.done",
            item_id=item,
            output_index=0,
            content_index=0,
            part=done_part,
        ),
        event("response.output_item.done", output_index=0, item=done_message),
        event("response.completed", response=completed),
    ]
    source = "developers.openai.com/docs/guides/streaming-responses; openai-interface crate"
    return Shape(source, tuple(events), tokens, (37, tokens), route="responses", head=4)


BUILDERS: dict[str, Callable[[int], Shape]] = {
    "anthropic": _anthropic,
    "anthropic_thinking": _anthropic_thinking,
    "anthropic_overloaded": _anthropic_overloaded,
    "openai_responses": _openai_responses,
}
