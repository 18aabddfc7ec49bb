"""The mock upstream itself: faults, statistics, keep-alive."""

from __future__ import annotations

import httpx
import orjson
import trio

from tests.conftest import eventually
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.mock_upstream import serve_mock


async def test_mock_streams_faults_and_counts_connections() -> None:
    async with trio.open_nursery() as nursery:
        mock = await nursery.start(serve_mock, "127.0.0.1", 0, Fault(tokens=4))
        async with httpx.AsyncClient(base_url=mock.base_url) as client:
            ok = await client.post(
                "/v1/chat/completions", json={"model": "x", "messages": [], "stream": True}
            )
            assert ok.text.count('"content"') == 5 and ok.text.endswith("data: [DONE]\n\n")
            err = await client.post("/v1/messages", json={"model": "mock-e429", "messages": []})
            assert err.status_code == 429 and err.headers["retry-after"] == "1"
            assert err.json()["type"] == "error"
            try:
                await client.post(
                    "/v1/chat/completions",
                    json={"model": "mock-t5-drop2", "messages": [], "stream": True},
                )
                raise AssertionError("the drop fault must break the response")
            except httpx.TransportError:
                pass
            stats = (await client.get("/mock/stats")).json()
            assert stats["requests_total"] == 4
            faults = (await client.get("/mock/faults")).json()
            assert [model for model, _ in faults] == ["mock-t5-drop2"]  # when the drop began
            assert stats["streams_active"] == 0
        await eventually(lambda: mock.statistics().open_connections == 0, timeout=2)
        assert mock.statistics().connections_total == 2  # keep-alive reused, drop closed
        nursery.cancel_scope.cancel()


async def test_non_streaming_bodies() -> None:
    async with trio.open_nursery() as nursery:
        mock = await nursery.start(serve_mock, "127.0.0.1", 0, Fault(tokens=3))
        async with httpx.AsyncClient(base_url=mock.base_url) as client:
            body = (await client.post("/v1/messages", json={"model": "m", "messages": []})).json()
            assert body["usage"]["output_tokens"] == 3
            emb = await client.post("/v1/embeddings", json={"model": "m", "input": ["a", "b"]})
            assert len(orjson.loads(emb.content)["data"]) == 2
            assert (await client.get("/nope")).status_code == 404
        nursery.cancel_scope.cancel()
