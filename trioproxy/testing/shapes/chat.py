"""OpenAI chat completion streams (``/v1/chat/completions``) of servers that are not our mock.

Each builder takes the number of tokens and returns the :class:`~.shape.Shape`;
where a stream came from is in its docstring and ``source``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .shape import Shape, compact


def _dumps_stream(tokens: int, done: bool, usage: bool, usage_inline: bool = False) -> Shape:
    """A server that builds each chunk with Python's ``json.dumps`` (spaces after
    ``:`` and ``,``): the OpenAI chunk fields, a role-only first chunk, a finish
    chunk, optionally OpenAI's usage-only chunk and ``[DONE]``."""
    base = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def event(choices: list[object], **extra: object) -> bytes:
        return b"data: " + json.dumps({**base, "choices": choices, **extra}).encode() + b"\n\n"

    counts = {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens}
    events = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
    events += [
        event([{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}])
        for i in range(tokens)
    ]
    finish = {"index": 0, "delta": {}, "finish_reason": "stop"}
    events.append(event([finish], usage=counts) if usage_inline else event([finish]))
    if usage:
        events.append(event([], usage=counts))
    if done:
        events.append(b"data: [DONE]\n\n")
    reported = (9, tokens) if usage or usage_inline else None
    source = "Python's json.dumps, as a public gateway benchmark's fake provider writes it"
    return Shape(source, tuple(events), tokens, reported)


def _groq(tokens: int) -> Shape:
    """Groq's OpenAI-compatible stream as it was without ``include_usage``: compact
    JSON, usage under ``x_groq`` in the finish chunk, then ``[DONE]`` (the chunk as
    quoted in vercel/ai issue #1651)."""
    base = {"id": "chatcmpl-8566e76f", "object": "chat.completion.chunk", "created": 1716131679,
            "model": "llama3-8b-8192", "system_fingerprint": "fp_179b0f92c9"}  # fmt: skip

    def event(choice: dict[str, object], **extra: object) -> bytes:
        return b"data: " + compact({**base, "choices": [choice], **extra}) + b"\n\n"

    events = [event({"index": 0, "delta": {"role": "assistant", "content": ""},
                     "logprobs": None, "finish_reason": None})]  # fmt: skip
    events += [
        event({"index": 0, "delta": {"content": f"t{i} "}, "logprobs": None, "finish_reason": None})
        for i in range(tokens)
    ]
    usage = {"queue_time": 0.07, "prompt_tokens": 23, "prompt_time": 0.006,
             "completion_tokens": tokens, "completion_time": 0.022, "total_tokens": 23 + tokens}  # fmt: skip
    events.append(event({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"},
                        x_groq={"id": "req_01hy8ppkajfqk987jv2vx88m9r", "usage": usage}))  # fmt: skip
    events.append(b"data: [DONE]\n\n")
    return Shape(
        "vercel/ai issue #1651 (a Groq stream's last chunk)", tuple(events), tokens, (23, tokens)
    )


def _openrouter(tokens: int) -> Shape:
    """OpenRouter: an SSE comment first (``: OPENROUTER PROCESSING``, documented on
    openrouter.ai/docs/api-reference/streaming as sent to keep connections open),
    compact chunks carrying ``provider`` and ``native_finish_reason`` and the role in
    every delta (as a recorded OpenRouter stream shows), the usage chunk
    ``include_usage`` asks for, ``[DONE]``."""
    base = {"id": "gen-1778031306-UD7bR0I1", "object": "chat.completion.chunk",
            "created": 1778031306, "model": "openai/gpt-4o-mini", "provider": "Azure"}  # fmt: skip

    def event(choices: list[object], **extra: object) -> bytes:
        return b"data: " + compact({**base, "choices": choices, **extra}) + b"\n\n"

    events = [b": OPENROUTER PROCESSING\n\n"]
    events += [
        event(
            [
                {
                    "index": 0,
                    "delta": {"content": f"t{i} ", "role": "assistant"},
                    "finish_reason": None,
                    "native_finish_reason": None,
                }
            ]
        )
        for i in range(tokens)
    ]
    events.append(event([{"index": 0, "delta": {"content": "", "role": "assistant"},
                          "finish_reason": "stop", "native_finish_reason": "stop"}]))  # fmt: skip
    counts = {"prompt_tokens": 17, "completion_tokens": tokens, "total_tokens": 17 + tokens}
    events.append(event([], usage=counts))
    events.append(b"data: [DONE]\n\n")
    source = "openrouter.ai/docs/api-reference/streaming; a recorded OpenRouter stream"
    return Shape(source, tuple(events), tokens, (17, tokens))


def _azure(tokens: int) -> Shape:
    """Azure OpenAI: a first chunk with the prompt's filter results, no choices and an
    empty id and model; content filter results in every choice; ``usage: null``
    in every chunk; ``[DONE]`` (chunks as quoted in microsoft/autogen issue #6465 and
    sashabaranov/go-openai pull request #448)."""
    safe = {"filtered": False, "severity": "safe"}
    filters = {"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe}
    base = {"id": "chatcmpl-7e5ItVD5q11G4RCkPDfVbautcdoqZ", "object": "chat.completion.chunk",
            "created": 1689787863, "model": "gpt-35-turbo-16k"}  # fmt: skip

    def event(obj: object) -> bytes:
        return b"data: " + compact(obj) + b"\n\n"

    def choice(delta: object, finish: str | None = None) -> dict[str, object]:
        return {**base, "choices": [{"index": 0, "finish_reason": finish, "delta": delta,
                                     "content_filter_results": filters}], "usage": None}  # fmt: skip

    events = [
        event({"choices": [], "created": 0, "id": "", "model": "", "object": "", "usage": None,
               "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}]}),
        event(choice({"role": "assistant"})),
    ]  # fmt: skip
    events += [event(choice({"content": f"t{i} "})) for i in range(tokens)]
    events.append(event(choice({}, "stop")))
    events.append(b"data: [DONE]\n\n")
    source = "microsoft/autogen issue #6465; sashabaranov/go-openai pull request #448"
    return Shape(source, tuple(events), tokens, None, head=2)


def _deepseek_no_space(tokens: int) -> Shape:
    """A DeepSeek R1 stream as a hosted provider writes it: ``data:`` with no space
    before the JSON and thinking as ``reasoning_content`` deltas with the role in each
    (quoted in karthink/gptel pull request #592), then the answer, the finish chunk,
    the usage chunk with empty ``choices`` and ``[DONE]`` (DeepSeek's API end, as
    dxos/dxos pull request #13015 reads its documentation)."""
    base = {"model": "deepseek-r1", "id": "chatcmpl-75945b6f-a28b-939e-a650-63762ab131f5",
            "created": 1740552606, "object": "chat.completion.chunk"}  # fmt: skip

    def event(choices: list[object], **extra: object) -> bytes:
        return b"data:" + compact({**base, "choices": choices, **extra}) + b"\n\n"

    half = tokens // 2
    events = [
        event([{"index": 0, "delta": {"reasoning_content": f"r{i} ", "role": "assistant"}}])
        for i in range(half)
    ]
    events += [event([{"index": 0, "delta": {"content": f"t{i} "}}]) for i in range(half, tokens)]
    events.append(event([{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}]))
    counts = {"prompt_tokens": 11, "completion_tokens": tokens, "total_tokens": 11 + tokens}
    events.append(event([], usage=counts))
    events.append(b"data:[DONE]\n\n")
    source = "karthink/gptel pull request #592; dxos/dxos pull request #13015"
    return Shape(source, tuple(events), tokens, (11, tokens), head=0)


def _llama_cpp(tokens: int) -> Shape:
    """llama.cpp's ``llama-server``: compact chunks with a ``system_fingerprint`` of
    its build, the finish chunk, then (usage on by default) a chunk with empty
    ``choices``, ``usage`` and ``timings``, and ``[DONE]`` (ggml-org/llama.cpp pull
    request #15444, its server.cpp; the order as strands-agents/harness-sdk pull
    request #3955 describes it)."""
    base = {"created": 1757389182, "id": "chatcmpl-qzz1Qobc2bVU2fwWIAtaxgjQ2qeFeNbo",
            "model": "qwen2.5-3b-instruct-q8_0.gguf", "system_fingerprint": "b6351-5d804a49",
            "object": "chat.completion.chunk"}  # fmt: skip

    def event(choices: list[object], **extra: object) -> bytes:
        return b"data: " + compact({"choices": choices, **base, **extra}) + b"\n\n"

    events = [event([{"finish_reason": None, "index": 0, "delta": {"role": "assistant",
                                                                   "content": None}}])]  # fmt: skip
    events += [
        event([{"finish_reason": None, "index": 0, "delta": {"content": f"t{i} "}}])
        for i in range(tokens)
    ]
    events.append(event([{"finish_reason": "stop", "index": 0, "delta": {}}]))
    counts = {"completion_tokens": tokens, "prompt_tokens": 14, "total_tokens": 14 + tokens}
    timings = {"prompt_n": 14, "prompt_ms": 20.1, "predicted_n": tokens, "predicted_ms": 80.5}
    events.append(event([], usage=counts, timings=timings))
    events.append(b"data: [DONE]\n\n")
    source = "ggml-org/llama.cpp pull request #15444; strands-agents/harness-sdk pull request #3955"
    return Shape(source, tuple(events), tokens, (14, tokens))


def _vllm_continuous_usage(tokens: int) -> Shape:
    """vLLM with ``stream_options: {include_usage, continuous_usage_stats}``: compact
    JSON (pydantic), a running ``usage`` in every chunk, the role chunk first, the
    finish chunk, the final usage chunk with empty ``choices``, ``[DONE]``
    (vllm-project/vllm pull request #6652 and issue #7262, which quotes the chunks)."""
    base = {"id": "chat-2487a8a959e2480081550c5c25694def", "object": "chat.completion.chunk",
            "created": 1723032007, "model": "meta-llama/Meta-Llama-3-8B-Instruct"}  # fmt: skip

    def usage(n: int) -> dict[str, int]:
        return {"prompt_tokens": 16, "total_tokens": 16 + n, "completion_tokens": n}

    def event(choices: list[object], n: int) -> bytes:
        return b"data: " + compact({**base, "choices": choices, "usage": usage(n)}) + b"\n\n"

    events = [event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}], 0)]  # fmt: skip
    events += [
        event(
            [{"index": 0, "delta": {"content": f"t{i} "}, "logprobs": None, "finish_reason": None}],
            i + 1,
        )
        for i in range(tokens)
    ]
    events.append(event([{"index": 0, "delta": {"content": ""}, "logprobs": None,
                          "finish_reason": "stop", "stop_reason": None}], tokens))  # fmt: skip
    events.append(event([], tokens))
    events.append(b"data: [DONE]\n\n")
    return Shape(
        "vllm-project/vllm pull request #6652, issue #7262", tuple(events), tokens, (16, tokens)
    )


def _sglang(tokens: int) -> Shape:
    """SGLang's OpenAI server: compact chunks with ``system_fingerprint: "default"``,
    the role and ``reasoning_content: null`` in every delta, ``logprobs: null``; the
    last chunk carries the finish reason; no usage unless asked; ``[DONE]``
    (chunks quoted in sgl-project/sglang pull request #19895)."""
    base = {"id": "chatcmpl-019cb7c3-f422-7430-a1c7-f8dd85d909c2", "object": "chat.completion.chunk",
            "created": 1772609598, "model": "/models/meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8",
            "system_fingerprint": "default"}  # fmt: skip

    def event(content: str, finish: str | None) -> bytes:
        delta = {"role": "assistant", "content": content, "reasoning_content": None}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + compact({**base, "choices": [choice]}) + b"\n\n"

    events = [event(f"t{i} ", None) for i in range(tokens)]
    events += [event("", "stop"), b"data: [DONE]\n\n"]
    return Shape("sgl-project/sglang pull request #19895", tuple(events), tokens, None, head=0)


def _ollama_empty_finish(tokens: int) -> Shape:
    """Ollama's OpenAI compatibility (``/v1``) as it was: compact chunks with
    ``system_fingerprint: "fp_ollama"``, the role in every delta and an *empty*
    ``finish_reason`` (``""``) in every chunk until the last says ``"stop"``, then
    ``[DONE]`` (chunks quoted in ollama/ollama issue #4357). An empty finish reason
    is no finish: a stream cut here is truncated."""
    base = {"id": "chatcmpl-693", "object": "chat.completion.chunk", "created": 1715427619,
            "model": "mistral:latest", "system_fingerprint": "fp_ollama"}  # fmt: skip

    def event(content: str, finish: str) -> bytes:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": content},
            "finish_reason": finish,
        }
        return b"data: " + compact({**base, "choices": [choice]}) + b"\n\n"

    events = [event(f" t{i}", "") for i in range(tokens)]
    events += [event("", "stop"), b"data: [DONE]\n\n"]
    return Shape("ollama/ollama issue #4357", tuple(events), tokens, None, head=0)


def _mistral(tokens: int) -> Shape:
    """Mistral's API: spaced JSON (``"id": "cmpl-…"``), a first chunk with the role
    and no ``object``/``created``, ``"role": null`` in later deltas (as quoted in
    mistralai/client-python issue #16); usage in the last chunk with the finish
    reason (mistralai/client-ts issue #75), then ``[DONE]``."""
    cid, model = "cmpl-82b4ad8d22b44757a7a2d3e3ae6fb6a0", "mistral-tiny"
    base = {"id": cid, "object": "chat.completion.chunk", "created": 1702637377, "model": model}

    def event(obj: object) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    first = {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}
    events = [event({"id": cid, "model": model, "choices": [first]})]
    events += [
        event({**base, "choices": [{"index": 0, "delta": {"role": None, "content": f"t{i} "},
                                    "finish_reason": None}]})
        for i in range(tokens)
    ]  # fmt: skip
    counts = {"prompt_tokens": 10, "total_tokens": 10 + tokens, "completion_tokens": tokens}
    last = {"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}
    events += [event({**base, "choices": [last], "usage": counts}), b"data: [DONE]\n\n"]
    source = "mistralai/client-python issue #16; mistralai/client-ts issue #75"
    return Shape(source, tuple(events), tokens, (10, tokens))


def _error_then_done(tokens: int) -> Shape:
    """An upstream that is itself a gateway (mozilla-ai/any-llm's, its streaming
    generator): the provider's chunks, then on a provider error an OpenAI error
    event in ``json.dumps`` spacing, *followed by* ``[DONE]``. The ``[DONE]`` does not
    make it complete: the stream ended in an error (the OpenAI SDKs raise on an
    event with ``error``)."""
    base = {"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion.chunk",
            "created": 1741569952, "model": "gpt-4o-mini"}  # fmt: skip

    def event(choices: list[object]) -> bytes:
        return b"data: " + compact({**base, "choices": choices}) + b"\n\n"

    events = [
        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    ]
    events += [
        event([{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}])
        for i in range(tokens)
    ]
    error = {"error": {"message": "An error occurred during streaming", "type": "server_error"}}
    events += [b"data: " + json.dumps(error).encode() + b"\n\n", b"data: [DONE]\n\n"]
    source = "mozilla-ai/any-llm (its gateway's streaming generator)"
    return Shape(source, tuple(events), tokens, None, error="server_error")


BUILDERS: dict[str, Callable[[int], Shape]] = {
    # The fake provider of a public gateway benchmark, and Python servers that
    # encode with json.dumps: spaced JSON, usage chunk, [DONE].
    "json_dumps": lambda n: _dumps_stream(n, done=True, usage=True),
    # A server that ends after its finish chunk, usage inline, without [DONE].
    "finish_no_done": lambda n: _dumps_stream(n, done=False, usage=False, usage_inline=True),
    # Spaced JSON, no usage at all, no [DONE]: usage can only be estimated.
    "json_dumps_bare": lambda n: _dumps_stream(n, done=False, usage=False),
    "groq": _groq,
    "openrouter": _openrouter,
    "azure": _azure,
    "deepseek_no_space": _deepseek_no_space,
    "llama_cpp": _llama_cpp,
    "vllm_continuous_usage": _vllm_continuous_usage,
    "sglang": _sglang,
    "ollama_empty_finish": _ollama_empty_finish,
    "mistral": _mistral,
    "error_then_done": _error_then_done,
}
