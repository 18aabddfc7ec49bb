"""Fuzz: random and mutated HTTP requests against a live gateway.

The gateway never dies, never answers 5xx to bad input, and serves a normal
request afterwards. ``TRIOPROXY_FUZZ_RUNS`` raises the count (default 300 in
``make test``); ``TRIOPROXY_FUZZ_SEED`` replays one campaign.
"""

from __future__ import annotations

import os
import random

import pytest
import trio

from tests.conftest import chat, running, within
from trioproxy.testing.rawclient import request

RUNS = int(os.environ.get("TRIOPROXY_FUZZ_RUNS", "300"))
SEED = int(os.environ.get("TRIOPROXY_FUZZ_SEED", "1123"))

VALID = [
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
    b'content-length: 66\r\n\r\n{"model":"mock-t2-i0","messages":[{"role":"user","content":"h"}]}',
    b"POST /v1/messages HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 67\r\n\r\n"
    b'{"model":"mock-t2-i0","max_tokens":5,"messages":[],"stream":true}  ',
    b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    b'1c\r\n{"model":"m","input":["a"]}\r\n0\r\n\r\n',
]
TOKENS = [b"\r\n", b"\n", b"\r", b":", b" ", b"\x00", b"\xff", b"{", b"}", b'"', b"0", b"-1",
          b"content-length: ", b"transfer-encoding: chunked", b"HTTP/1.1", b"%00", b"\t",
          b"9" * 30, b"a" * 5000]  # fmt: skip


def mutate(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(VALID))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a byte
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:  # delete a range
            del data[at : at + rng.randint(1, 20)]
        elif op == 2:  # insert a token
            data[at:at] = rng.choice(TOKENS)
        elif op == 3:  # duplicate a slice
            data[at:at] = data[max(0, at - 30) : at]
        else:  # random bytes
            data[at:at] = rng.randbytes(rng.randint(1, 40))
    return bytes(data)


async def _send(url: str, data: bytes) -> bytes:
    """Send ``data``, then read the answer's head, or to the gateway's close: a
    truncated head or body gets its answer (or close) at the gateway's
    ``header_timeout`` / ``body_timeout``, short in these tests; none may hang."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        with trio.fail_after(within(10)):
            try:
                await stream.send_all(data)
                while b"\r\n\r\n" not in received:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    received += chunk
            except trio.BrokenResourceError:
                pass
    return received


async def test_mutated_requests_never_kill_the_gateway_nor_get_5xx(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every case is answered or closed (none waits past the timeouts), none
    gets a 5xx, nothing logs a traceback, and the gateway serves on."""
    rng = random.Random(SEED)
    cases = [mutate(rng) for _ in range(RUNS)]
    answers: list[tuple[bytes, bytes]] = []
    async with running(header_timeout=0.5, body_timeout=0.5) as (gw, _):
        limiter = trio.CapacityLimiter(32)

        async def one(data: bytes) -> None:
            async with limiter:
                answers.append((data, await _send(gw.url, data)))

        async with trio.open_nursery() as nursery:
            for data in cases:
                nursery.start_soon(one, data)
        ok = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"))
        assert ok.status == 200 and ok.body.endswith(b"data: [DONE]\n\n")
        assert gw.app.limiter.statistics().borrowed_tokens == 0
    assert len(answers) == RUNS
    statuses = {answer[9:12] for _, answer in answers if answer.startswith(b"HTTP/1.")}
    assert {b"200", b"400", b"408"} <= statuses, statuses  # served, refused, timed out
    # 501 is h11's RFC 9112 answer to an unknown transfer coding ("chunkeU"): fine.
    server_errors = [(d, a[:80]) for d, a in answers if a[9:10] == b"5" and a[9:12] != b"501"]
    assert not server_errors, server_errors[:3]
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


ADMISSION_RUNS = int(os.environ.get("TRIOPROXY_FUZZ_ADMISSION_RUNS", "3000"))
_KEY = "tp-fuzzkey"
_BODY = b'{"model":"mock-t1-i0","messages":[{"role":"user","content":"h"}]}'
ADMISSION = [
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\norigin: https://app.example\r\n"
    b"content-type: application/json\r\nauthorization: Bearer " + _KEY.encode() + b"\r\n"
    b"x-request-id: abc-123\r\ncontent-length: %d\r\n\r\n" % len(_BODY) + _BODY,
    b"OPTIONS /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\norigin: https://app.example\r\n"
    b"access-control-request-method: POST\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-type: text/plain\r\n"
    b"x-api-key: " + _KEY.encode() + b"\r\nanthropic-beta: tools\r\ncontent-length: 2\r\n\r\n{}",
    b"GET /v1/signature/rcpt_00000000000000000000000000000000?signing_algo=ed25519 HTTP/1.1\r\n"
    b"host: localhost\r\nauthorization: Bearer " + _KEY.encode() + b"\r\n\r\n",
    b"GET /debug/records?offset=0&limit=5 HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer "
    + _KEY.encode()
    + b"\r\n\r\n",
    b"GET /readyz HTTP/1.1\r\nhost: localhost\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nx-api-key: nope\r\n\r\n",
]
ADMISSION_TOKENS = [*TOKENS, b"origin: https://evil.example\r\n", b"content-type: text/plain\r\n",
                    b"host: attacker.example\r\n", b"\xe9", b"\x80", b"application/json; a=b",
                    b'"model":"' + b"m" * 300 + b'"', b"?offset=-1&limit=x", b"%ff"]  # fmt: skip


@pytest.mark.slow
async def test_mutated_requests_of_the_admission_paths_never_crash_nor_log_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At least 3000 mutations of requests that touch every admission check:
    origins, content types, hosts, keys, receipts, debug pages, header bytes."""
    import hashlib

    rng = random.Random(SEED + 1)

    def mutate_admission() -> bytes:
        data = bytearray(rng.choice(ADMISSION))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            op = rng.randrange(4)
            if op == 0 and data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                del data[at : at + rng.randint(1, 12)]
            elif op == 2:
                data[at:at] = rng.choice(ADMISSION_TOKENS)
            else:
                data[at:at] = rng.randbytes(rng.randint(1, 12))
        return bytes(data)

    cases = [mutate_admission() for _ in range(ADMISSION_RUNS)]
    keys = ({"name": "fuzz", "sha256": hashlib.sha256(_KEY.encode()).hexdigest(), "admin": True},)
    answers: list[tuple[bytes, bytes]] = []
    half = ADMISSION_RUNS // 2
    limiter = trio.CapacityLimiter(64)
    # Half against a gateway with keys, half in open mode (Origin and Host checks on).
    for n, overrides in enumerate(({"keys": keys}, {})):
        async with running(
            header_timeout=0.5, body_timeout=0.3, cors_origins=("https://app.example",),
            debug_endpoints=True,
            **overrides,
        ) as (gw, _):  # fmt: skip

            async def one(
                data: bytes, url: str = gw.url, limiter: trio.CapacityLimiter = limiter
            ) -> None:
                async with limiter:
                    answers.append((data, await _send(url, data)))

            async with trio.open_nursery() as nursery:
                for data in cases[n * half : (n + 1) * half if n == 0 else None]:
                    nursery.start_soon(one, data)
            headers = [("authorization", f"Bearer {_KEY}")]
            ok = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"), headers)
            assert ok.status == 200 and ok.body.endswith(b"data: [DONE]\n\n")
    assert len(answers) == ADMISSION_RUNS
    seen = {a[9:12] for _, a in answers if a.startswith(b"HTTP/1.")}
    # Every admission check answered some of them (not just the HTTP parser's 400).
    assert {b"200", b"204", b"400", b"401", b"403", b"415", b"421"} <= seen, seen
    server_errors = [(d, a[:80]) for d, a in answers if a[9:10] == b"5" and a[9:12] != b"501"]
    assert not server_errors, server_errors[:3]
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]
