"""A real nginx in front of the gateway, with nginx's defaults and with the
block docs/operations.md recommends (read from that page).

nginx's defaults speak HTTP/1.0 to the gateway, one connection per request:
every answer must end by the gateway closing that connection. Both ways, a
stream must arrive unbuffered, end, and a client behind nginx that hangs up
must be seen by the gateway as a hang-up that closes the upstream.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import pytest
import trio

from tests.conftest import Recorder, chat, eventually, running
from tests.nginx_server import DEFAULTS, RECOMMENDED, NginxConf, nginx_in_front
from trioproxy.admission.auth import new_key
from trioproxy.config import load_config
from trioproxy.server import hypercorn as guards
from trioproxy.server.serve import RunningGateway
from trioproxy.testing.rawclient import RawClient, request

CONFS = {"nginx-defaults": DEFAULTS, "recommended": RECOMMENDED}
KEY, KEY_BLOCK = new_key("front")
AUTH = [("authorization", f"Bearer {KEY}")]


@asynccontextmanager
async def behind_nginx(
    tmp_path: pathlib.Path, conf: NginxConf
) -> AsyncIterator[tuple[str, RunningGateway, Recorder]]:
    """A gateway with a key (as SECURITY.md asks of one that is reached through
    a proxy) and its built-in mock, nginx in front: (nginx URL, gateway, records)."""
    (tmp_path / "keys.toml").write_text(KEY_BLOCK)
    keys = load_config(tmp_path / "keys.toml").keys
    async with running(keys=keys) as (gw, rec):
        with nginx_in_front(gw.url, conf) as url:
            yield url, gw, rec


@pytest.mark.parametrize("conf", CONFS)
async def test_a_stream_arrives_unbuffered_and_ends(tmp_path: pathlib.Path, conf: str) -> None:
    async with behind_nginx(tmp_path, CONFS[conf]) as (url, _gw, rec):
        client = await RawClient.connect(url)
        try:
            await client.send_request("POST", "/v1/chat/completions", chat("mock-t10-i60"), AUTH)
            with trio.fail_after(15):
                response = await client.read_response()  # ends: the chunked body's end
        finally:
            await client.close()
        assert response.status == 200
        assert response.body.endswith(b"data: [DONE]\n\n")
        reads = [t for t, chunk in response.chunks if b"data: " in chunk]
        # 10 tokens 60 ms apart: buffered, they would come in one or two reads at the end.
        assert len(reads) >= 6, len(reads)
        assert reads[-1] - reads[0] >= 0.3
        (record,) = await rec.wait_for(1)
        assert record.outcome.value == "done" and not record.truncated
        if conf == "nginx-defaults":  # HTTP/1.0 to the gateway: it closed the connection
            await eventually(lambda: guards.CONNECTIONS.open == 0, timeout=2.0)


@pytest.mark.parametrize("conf", CONFS)
async def test_whole_answers_and_errors_end(tmp_path: pathlib.Path, conf: str) -> None:
    async with behind_nginx(tmp_path, CONFS[conf]) as (url, _gw, _rec):
        whole = await request(url, "POST", "/v1/chat/completions", chat("mock-t5", False), AUTH)
        assert whole.status == 200 and whole.json()["choices"][0]["message"]["content"]
        missing = await request(url, "POST", "/v1/chat/completions", chat("mock-t5"))
        assert missing.status == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        failed = await request(url, "POST", "/v1/messages", {"model": "mock-e500"}, AUTH)
        assert failed.status == 400 and failed.json()["type"] == "error"
        health = await request(url, "GET", "/healthz")
        assert health.status == 200
        if conf == "nginx-defaults":
            await eventually(lambda: guards.CONNECTIONS.open == 0, timeout=2.0)


@pytest.mark.parametrize("conf", CONFS)
async def test_a_hang_up_behind_nginx_closes_the_upstream(
    tmp_path: pathlib.Path, conf: str
) -> None:
    async with behind_nginx(tmp_path, CONFS[conf]) as (url, gw, rec):
        assert gw.mock is not None
        client = await RawClient.connect(url)
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t500-i20"), AUTH)
        with trio.fail_after(10):
            status, _ = await client.response_head()
            assert status == 200
            while not (
                isinstance(e := await client.next_event(), h11.Data) and b"data: " in e.data
            ):
                pass
        await client.close()
        (record,) = await rec.wait_for(1)
        assert record.outcome.value == "client_disconnect"
        assert record.events < 500
        await eventually(lambda: gw.mock is not None and len(gw.mock.peer_closes) == 1)
