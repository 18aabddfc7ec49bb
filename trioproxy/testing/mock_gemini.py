"""What the mock says as Gemini: ``streamGenerateContent?alt=sse`` and ``generateContent`` (sans-IO).

The stream's shape is the one Gemini's docs show (ai.google.dev/api/generate-content,
"Response body" and the ``alt=sse`` examples): every event a whole
``GenerateContentResponse`` (``candidates[0].content.parts[].text``, ``role:
"model"``, ``usageMetadata``, ``modelVersion``, ``responseId``), JSON with a
space after each colon, events ended by ``\\r\\n\\r\\n``; no ``[DONE]``: the last
event carries ``finishReason`` and the final usage. A function call comes whole
in one part (``functionCall: {name, args}``) and the stop reason stays ``STOP``.
The whole answer is the same object, indented (as the API writes it).
"""

from __future__ import annotations

import json

from .mock_scripts import WORDS, Script

__all__ = ["GEMINI_PATH", "gemini_route", "gemini_script"]

GEMINI_PATH = "/v1beta/models/"


def gemini_route(path: str) -> tuple[str, bool] | None:
    """(model, stream) of a Gemini path, else None."""
    if not path.startswith(GEMINI_PATH):
        return None
    model, _, method = path[len(GEMINI_PATH) :].partition(":")
    if method not in ("streamGenerateContent", "generateContent"):
        return None
    return model, method == "streamGenerateContent"


def _j(value: object) -> bytes:
    return json.dumps(value, separators=(",", ": ")).encode()


def gemini_script(model: str, n: int, seq: int, tool: bool = False) -> Script:
    words = [w.encode() + b" " for w in WORDS]
    rid = f"mockgemini{seq:08d}"
    usage_p = 8
    end = b',"modelVersion": ' + _j(model) + b',"responseId": ' + _j(rid) + b"}\r\n\r\n"
    prefix = b'data: {"candidates": [{"content": {"parts": [{"text": "'
    suffix = (
        b'"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": %d,'
        b'"totalTokenCount": %d}' % (usage_p, usage_p) + end
    )
    usage = {"promptTokenCount": usage_p, "candidatesTokenCount": n, "totalTokenCount": usage_p + n}
    tail = []
    if tool:
        call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
        tail.append(
            b'data: {"candidates": [{"content": {"parts": [' + _j(call)
            + b'],"role": "model"},"index": 0}]' + end
        )  # fmt: skip
    last = {
        "content": {"parts": [{"text": ""}], "role": "model"},
        "finishReason": "STOP",
        "index": 0,
    }
    tail.append(b'data: {"candidates": [' + _j(last) + b'],"usageMetadata": ' + _j(usage) + end)
    text = "".join(w.decode() for w in (words[i % len(words)] for i in range(n)))
    whole = {
        "candidates": [dict(last, content={"parts": [{"text": text}], "role": "model"})],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": rid,
    }
    return Script(
        id=rid, head=[], prefix=prefix, suffix=suffix, tail=tail,
        whole=json.dumps(whole, indent=2).encode(),
        bad=b"data: {\"candidates\": this is not json\r\n\r\n", words=words,
    )  # fmt: skip
