"""Error answers as real servers write them: the 400s a gateway must tell apart.

Each entry is (HTTP status, body bytes) as the server sends it; ``source`` says
where the wording comes from. The mock answers one with ``mock-error-NAME``.
A context-length 400 may go to a larger model; a content-policy 400 never may.
"""

from __future__ import annotations

import json

__all__ = ["CONTEXT_LENGTH", "ERRORS", "source"]


def _j(obj: object) -> bytes:
    return json.dumps(obj).encode()  # the servers' own spacing: ", " and ": "


ERRORS: dict[str, tuple[int, bytes]] = {
    # OpenAI: error.code names it.
    "openai_context": (400, _j({"error": {
        "message": "This model's maximum context length is 128000 tokens. However, your "
        "messages resulted in 130512 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded",
    }})),
    # Anthropic: an invalid_request_error whose message says so.
    "anthropic_context": (400, _j({"type": "error", "error": {
        "type": "invalid_request_error", "message": "prompt is too long: 208310 tokens > 200000 maximum",
    }})),
    # vLLM (OpenAI server, serving_engine's length check), older and newer wording.
    "vllm_context": (400, _j({
        "object": "error", "message": "This model's maximum context length is 4096 tokens. "
        "However, you requested 5000 tokens (4000 in the messages, 1000 in the completion). "
        "Please reduce the length of the messages or completion.",
        "type": "BadRequestError", "param": None, "code": 400,
    })),
    "vllm_context_new": (400, _j({"error": {
        "message": "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's "
        "maximum context length is 4096 tokens and your request has 2778 input tokens "
        "(8000 > 4096 - 2778). None", "type": "BadRequestError", "param": None, "code": 400,
    }})),
    # SGLang (tokenizer_manager's length checks).
    "sglang_context": (400, _j({
        "object": "error", "message": "Requested token count exceeds the model's maximum context "
        "length of 32768 tokens. You requested a total of 70000 tokens: 6000 tokens from the "
        "input messages and 64000 tokens for the completion. Please reduce the number of tokens "
        "in the input messages or the completion to fit within the limit.",
        "type": "BadRequestError", "param": None, "code": 400,
    })),
    "sglang_input": (400, _j({
        "object": "error",
        "message": "The input (40000 tokens) is longer than the model's context length (32768 tokens).",
        "type": "BadRequestError", "param": None, "code": 400,
    })),
    # Refusals that are not about length: never a fallback.
    "openai_content_policy": (400, _j({"error": {
        "message": "Your request was rejected as a result of our safety system.",
        "type": "invalid_request_error", "param": None, "code": "content_policy_violation",
    }})),
    "azure_content_filter": (400, _j({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
        "content management policy.", "type": None, "param": "prompt", "code": "content_filter",
        "status": 400,
    }})),
    "openai_bad_param": (400, _j({"error": {
        "message": "Invalid value for 'temperature': must be at most 2.",
        "type": "invalid_request_error", "param": "temperature", "code": "invalid_value",
    }})),
}  # fmt: skip

CONTEXT_LENGTH = frozenset(name for name in ERRORS if "context" in name or name == "sglang_input")

_SOURCES = {
    "openai": "OpenAI API error reference (context_length_exceeded, content_policy_violation)",
    "anthropic": "Anthropic API errors: invalid_request_error, 'prompt is too long'",
    "vllm": "vLLM entrypoints/openai serving_engine.py _validate_input (both wordings)",
    "sglang": "SGLang managers/tokenizer_manager.py _validate_one_request",
    "azure": "Azure OpenAI content filtering: code content_filter",
}


def source(name: str) -> str:
    return _SOURCES[name.split("_", 1)[0]]
