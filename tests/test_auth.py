"""API keys: 401/403/429 in each dialect, per-key limits, header hygiene, the keys CLI."""

from __future__ import annotations

import contextlib
import io
import pathlib

import pytest

from tests.conftest import chat, eventually, open_mocks, provider, running
from trioproxy.admission.auth import KeyRing, new_key, parse_keys
from trioproxy.admission.quotas import LocalQuotas
from trioproxy.cli import main as cli
from trioproxy.config import load_config
from trioproxy.errors import ConfigError, Overloaded
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import RawClient, request

ALICE, ALICE_BLOCK = new_key("alice")
BOB, BOB_BLOCK = new_key("bob")


def _keys(tmp_path: pathlib.Path) -> tuple[dict[str, object], ...]:
    text = ALICE_BLOCK + BOB_BLOCK.replace('models = ["*"]', 'models = ["mock-t*"]').replace(
        "max_streams = 0", "max_streams = 1"
    ).replace("rpm = 0", "rpm = 3")
    (tmp_path / "keys.toml").write_text(text)
    return load_config(tmp_path / "keys.toml").keys


def _bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


async def test_missing_unknown_and_valid_keys_in_both_dialects(tmp_path: pathlib.Path) -> None:
    async with running(keys=_keys(tmp_path)) as (gw, recorder):
        assert gw.mock is not None
        missing = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"))
        assert missing.status == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        unknown = await request(
            gw.url, "POST", "/v1/messages", {"model": "m"}, [("x-api-key", "tp-nope")]
        )
        assert unknown.status == 401
        assert unknown.json()["error"] == {
            "type": "authentication_error",
            "message": "invalid API key",
        }
        assert gw.mock.statistics().requests_total == 0  # nothing reached the upstream
        ok = await request(
            gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"), _bearer(ALICE)
        )
        assert ok.status == 200 and ok.body.endswith(b"data: [DONE]\n\n")
        # Header hygiene: the client's credential never reaches the upstream.
        assert b"authorization" not in gw.mock.last_headers
        anthropic = await request(
            gw.url, "POST", "/v1/messages",
            {"model": "mock-t2-i0", "max_tokens": 5, "messages": []}, [("x-api-key", ALICE)],
        )  # fmt: skip
        assert anthropic.status == 200 and b"x-api-key" not in gw.mock.last_headers
        records = await recorder.wait_for(4)
        assert [r.key for r in records] == [None, None, "alice", "alice"]
        assert all(ALICE not in r.to_json().decode() for r in records)


async def test_model_allow_list_concurrency_and_rpm_per_key(tmp_path: pathlib.Path) -> None:
    async with running(keys=_keys(tmp_path)) as (gw, _):
        denied = await request(
            gw.url, "POST", "/v1/messages",
            {"model": "claude-x", "max_tokens": 5, "messages": []}, [("x-api-key", BOB)],
        )  # fmt: skip
        assert denied.status == 403 and denied.json()["error"]["type"] == "permission_error"
        # bob: max_streams = 1 -> a second concurrent stream is 429, alice is not affected.
        client = await RawClient.connect(gw.url)
        await client.send_request(
            "POST", "/v1/chat/completions", chat("mock-t1000-i20"), _bearer(BOB)
        )
        assert (await client.response_head())[0] == 200
        second = await request(
            gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"), _bearer(BOB)
        )
        assert second.status == 429 and second.json()["error"]["type"] == "rate_limit_error"
        other = await request(
            gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"), _bearer(ALICE)
        )
        assert other.status == 200
        await client.close()
        await eventually(lambda: gw.app.limiter.statistics().borrowed_tokens == 0, timeout=5)
        # bob: rpm = 3. Counted so far: the stream only (a refused request, 403 or 429,
        # counts nowhere): two more pass, the next is over the limit.
        chat_path = "/v1/chat/completions"
        for _ in range(2):
            ok = await request(gw.url, "POST", chat_path, chat("mock-t2-i0"), _bearer(BOB))
            assert ok.status == 200
        over = await request(gw.url, "POST", chat_path, chat("mock-t2-i0"), _bearer(BOB))
        assert over.status == 429 and int(over.headers[b"retry-after"]) >= 1
        assert "requests per minute" in over.json()["error"]["message"]


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_403_and_429_per_key_in_each_dialect(tmp_path: pathlib.Path, dialect: str) -> None:
    async with running(keys=_keys(tmp_path)) as (gw, _):
        if dialect == "openai":
            path, auth = "/v1/chat/completions", _bearer(BOB)

            def body(model: str) -> dict[str, object]:
                return chat(model)

            def kind(r: object) -> str:
                return str(r.json()["error"]["type"])  # type: ignore[attr-defined]

            forbidden, limited = "invalid_request_error", "rate_limit_error"
        else:
            path, auth = "/v1/messages", [("x-api-key", BOB)]

            def body(model: str) -> dict[str, object]:
                return {"model": model, "max_tokens": 5, "messages": [], "stream": True}

            def kind(r: object) -> str:
                j = r.json()  # type: ignore[attr-defined]
                assert j["type"] == "error"
                return str(j["error"]["type"])

            forbidden, limited = "permission_error", "rate_limit_error"
        denied = await request(gw.url, "POST", path, body("gpt-4o"), auth)
        assert denied.status == 403 and kind(denied) == forbidden
        assert "may not use model 'gpt-4o'" in denied.body.decode()
        for _ in range(3):  # bob's rpm is 3
            assert (await request(gw.url, "POST", path, body("mock-t2-i0"), auth)).status == 200
        over = await request(gw.url, "POST", path, body("mock-t2-i0"), auth)
        assert over.status == 429 and kind(over) == limited
        assert int(over.headers[b"retry-after"]) >= 1


def test_keys_cli_round_trip(tmp_path: pathlib.Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["keys", "new", "--name", "ci"]) == 0
    lines = out.getvalue().splitlines()
    key = lines[1]
    block = out.getvalue().split("# add to the gateway's config file:\n", 1)[1]
    (tmp_path / "c.toml").write_text(block)
    ring = KeyRing(parse_keys(load_config(tmp_path / "c.toml").keys))
    assert ring.authenticate([(b"authorization", f"Bearer {key}".encode())]).name == "ci"
    assert key not in block  # only the hash is written down


def test_open_mode_is_loopback_only(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"refusing to serve 0\.0\.0\.0:8080 without API keys"):
        load_config(None, bind="0.0.0.0:8080")
    assert load_config(None, bind="0.0.0.0:8080", allow_open_public=True).allow_open_public
    with pytest.raises(ConfigError, match="sha256 must be 64 hex digits"):
        parse_keys([{"name": "x", "sha256": "abc"}])


async def test_listed_models_are_those_the_key_may_use(tmp_path: pathlib.Path) -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = (provider("a", mock, models=["mock-t2", "claude-x"]),)
        async with running(keys=_keys(tmp_path), providers=providers) as (gw, _):
            bob = await request(gw.url, "GET", "/v1/models", None, _bearer(BOB))
            assert [m["id"] for m in bob.json()["data"]] == ["mock-t2"]
            alice = await request(gw.url, "GET", "/v1/models", None, _bearer(ALICE))
            assert [m["id"] for m in alice.json()["data"]] == ["claude-x", "mock-t2"]
            assert (await request(gw.url, "GET", "/v1/models")).status == 401


def test_rpm_is_a_sliding_window_on_the_injected_clock() -> None:
    (bob,) = parse_keys([{"name": "bob", "sha256": "0" * 64, "rpm": 2}])
    now = [100.0]
    quotas = LocalQuotas((bob,), clock=lambda: now[0])

    def admit(at: float) -> None:
        now[0] = at
        quotas.admit(bob, 0, object())

    admit(100.0)
    admit(130.0)
    with pytest.raises(Overloaded) as over:
        admit(159.5)  # the first of the window is 59.5 s old
    assert over.value.retry_after == 1
    admit(160.0)  # 60 s after the first: it has left the window
    with pytest.raises(Overloaded) as over:
        admit(170.0)
    assert over.value.retry_after == 21  # the 130 s request leaves at 190 s
