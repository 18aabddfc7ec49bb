"""``trioproxy chaos --routing``: the field's fault-tolerance families, judged from outside.

Against trioproxy (started by the campaign) every family passes; against the
naive relay the same campaign finds what it lacks (no failover, a cut presented
as an end, a silent upstream waited on) and fails those families.
"""

from __future__ import annotations

import sys

import pytest
import trio

from trioproxy.testing.chaos.families import FAMILIES, Seen, full_text
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.mock_upstream import serve_mock
from trioproxy.testing.naive_relay import serve_naive_relay

pytestmark = pytest.mark.slow  # not in `make quick`: campaigns


async def _cli(*args: str) -> tuple[int, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "trioproxy", "chaos", "--routing", "--runs", "1", *args],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout.decode()


def _verdicts(text: str) -> dict[str, str]:
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ")][1:]
    return {cells[1].strip(): cells[5].strip().split("**")[1] for cells in rows}


async def test_trioproxy_passes_every_routing_family() -> None:
    code, text = await _cli()
    verdicts = _verdicts(text)
    assert len(verdicts) == len(FAMILIES) + 1, text  # and primary flapping
    assert set(verdicts.values()) == {"pass"}, text
    assert code == 0 and "0 safe, 0 fail" in text


@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning"
)
async def test_the_naive_relay_fails_the_families_it_has_no_answer_for() -> None:
    async with trio.open_nursery() as nursery:
        mock = await nursery.start(serve_mock, "127.0.0.1", 0, Fault())
        relay = await nursery.start(serve_naive_relay, mock.base_url)
        code, text = await _cli("--target", relay, "--mock", mock.base_url)
        nursery.cancel_scope.cancel()
    verdicts = _verdicts(text)
    assert code == 1, text
    for family in ("stream cut", "stream stall", "no response", "reset before headers"):
        assert verdicts[family] == "fail", (family, text)
    assert verdicts["500 once"] == "safe" and verdicts["content-filter 400"] == "pass", text


def test_each_judge_fails_what_it_must() -> None:
    """The breaks a judge must catch, each shown to it."""
    judges = {f.name: f.judge for f in FAMILIES}
    words = full_text().split(" ")[:-1]

    def stream(text_words: list[str], end: bytes = b"data: [DONE]\n\n") -> bytes:
        chunks = [
            b'data: {"id":"a","choices":[{"index":0,"delta":{"content":"%s "}}]}\n\n' % w.encode()
            for w in text_words
        ]
        return b"".join(chunks) + end

    whole = Seen(200, body=stream(words))
    assert judges["stream cut"](whole) == "pass"
    silent_cut = Seen(200, body=stream(words[:12], b""))  # ended as if complete
    assert judges["stream cut"](silent_cut) == "fail"
    repeated = Seen(200, body=stream(words[:12] + words))  # started over on a fallback
    assert judges["stream cut"](repeated) == "fail"
    error = b'data: {"error":{"message":"upstream_broken"}}\n\n'
    assert judges["stream cut"](Seen(200, body=stream(words[:12], error))) == "safe"
    assert judges["no response"](Seen(hung=True)) == "fail"
    asked_another = Seen(400, body=b"{}", backup_streams=1)
    assert judges["content-filter 400"](asked_another) == "fail"
    no_retry_after = Seen(429, body=b'{"error":{"message":"x"}}')
    assert judges["429 persistent"](no_retry_after) == "fail"
