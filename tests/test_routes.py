from __future__ import annotations

import pytest

from trioproxy.admission.routes import ROUTES, forward_headers, validate
from trioproxy.dialects import Dialect, dialect_for_path
from trioproxy.errors import BadRequest


def test_valid_bodies() -> None:
    chat = ROUTES["/v1/chat/completions"]
    parsed = validate(chat, b'{"model": "m", "messages": [], "stream": true}')
    assert parsed.model == "m" and parsed.stream is True
    assert validate(chat, b'{"model": "m", "messages": [], "stream": null}').stream is False
    assert validate(ROUTES["/v1/models"], b"").model is None


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/completions", b'{"model": "m"}', "'prompt' is required"),
        (
            "/v1/completions",
            b'{"model": "m", "prompt": 3}',
            "'prompt' must be a string or an array",
        ),
        ("/v1/embeddings", b'{"model": "m", "input": {}}', "'input' must be"),
        ("/v1/messages", b'{"model": "m", "messages": [], "max_tokens": true}', "max_tokens"),
        ("/v1/chat/completions", b'{"model": 5, "messages": []}', "'model' is required"),
    ],
)
def test_invalid_bodies(path: str, body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        validate(ROUTES[path], body)


def test_dialects() -> None:
    assert ROUTES["/v1/messages"].dialect is Dialect.ANTHROPIC
    assert dialect_for_path("/v1/messages/batches") is Dialect.ANTHROPIC
    assert dialect_for_path("/v1/whatever") is Dialect.OPENAI


def test_forwarded_headers_are_an_allow_list() -> None:
    headers = forward_headers(
        [
            (b"authorization", b"Bearer k"),
            (b"anthropic-version", b"2023-06-01"),
            (b"cookie", b"secret"),
            (b"connection", b"keep-alive"),
            (b"accept-encoding", b"gzip"),
        ],
        stream=True,
    )
    assert headers == {  # the client's credential is never forwarded
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        "accept": "text/event-stream",
    }
