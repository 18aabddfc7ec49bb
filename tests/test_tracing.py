"""OpenTelemetry: spans received over a real socket by a small OTLP/HTTP collector."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import chat, eventually, open_mocks, provider, running
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import RawClient, request

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


class Collector:
    """Accepts OTLP/HTTP protobuf POSTs on /v1/traces and keeps every span."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += await stream.receive_some(65536)
                body, buf = buf[:length], buf[length:]
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        self.spans.extend(scope.spans)
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n"
                    b"content-length: 0\r\n\r\n"
                )


@asynccontextmanager
async def _collector() -> AsyncIterator[tuple[Collector, str]]:
    collector = Collector()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, collector.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        yield collector, f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def _attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


async def test_a_cancelled_request_is_one_span_with_its_attempt_and_its_timeline() -> None:
    async with _collector() as (collector, url), running(otlp_endpoint=url) as (gw, recorder):
        assert gw.mock is not None and gw.app.tracing is not None
        client = await RawClient.connect(gw.url)
        traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        await client.send_request(
            "POST", "/v1/chat/completions", chat("mock-t500-i10"),
            [("x-request-id", "otel-1"), ("traceparent", traceparent)],
        )  # fmt: skip
        await client.response_head()
        async with aclosing(client.body_chunks()) as chunks:
            await chunks.__anext__()
        sent_upstream = gw.mock.last_headers[b"traceparent"].decode()
        await client.close()
        await recorder.wait_for(1)
        await trio.to_thread.run_sync(gw.app.tracing.force_flush)
        await eventually(lambda: len(collector.spans) >= 2)
    (request,) = [s for s in collector.spans if _attrs(s).get("trioproxy.request_id") == "otel-1"]
    attrs = _attrs(request)
    assert attrs["trioproxy.outcome"] == "client_disconnect"
    assert attrs["trioproxy.cancel_latency_ms"] >= 0
    assert attrs["gen_ai.system"] == "openai" and attrs["gen_ai.request.model"] == "mock-t500-i10"
    assert request.trace_id.hex() == CLIENT_TRACE  # the client's trace, continued
    assert request.parent_span_id.hex() == CLIENT_SPAN
    events = [e.name for e in request.events]
    assert events[:3] == ["received", "body_read", "admitted"]
    ordered = ["first_event", "committed", "client_hangup", "outcome client_disconnect"]
    assert [e for e in events if e in ordered] == ordered
    assert events.index("client_hangup") < events.index("upstream_closed")
    times = [e.time_unix_nano for e in request.events]
    assert times == sorted(times)
    (attempt,) = [s for s in collector.spans if s.parent_span_id == request.span_id]
    assert attempt.name.startswith("attempt ") and attempt.trace_id == request.trace_id
    # The upstream was told that attempt's span is its parent.
    assert sent_upstream == f"00-{CLIENT_TRACE}-{attempt.span_id.hex()}-01"


async def test_every_attempt_of_a_retried_request_is_a_span_of_its_own() -> None:
    async with _collector() as (collector, url), open_mocks(Fault()) as (mock,):
        only = provider("a", mock, retries=1, aliases={"m": "mock-e500-n1-t3"})
        async with running(otlp_endpoint=url, providers=(only,)) as (gw, recorder):
            assert gw.app.tracing is not None
            headers = [("x-request-id", "otel-retry")]
            ok = await request(gw.url, "POST", "/v1/chat/completions", chat("m"), headers)
            assert ok.status == 200
            sent_upstream = mock.last_headers[b"traceparent"].decode()
            await recorder.wait_for(1)
            await trio.to_thread.run_sync(gw.app.tracing.force_flush)
            await eventually(lambda: len(collector.spans) >= 3)
    ids = {_attrs(s).get("trioproxy.request_id") for s in collector.spans}
    assert "otel-retry" in ids
    (parent,) = [
        s for s in collector.spans if _attrs(s).get("trioproxy.request_id") == "otel-retry"
    ]
    attempts = [s for s in collector.spans if s.parent_span_id == parent.span_id]
    attempts.sort(key=lambda s: s.start_time_unix_nano)
    assert [s.name for s in attempts] == ["attempt a", "attempt a"]
    assert attempts[0].end_time_unix_nano <= attempts[1].start_time_unix_nano
    assert sent_upstream.split("-")[2] == attempts[1].span_id.hex()  # the retry's own span


async def test_tracing_off_makes_no_spans_and_imports_nothing() -> None:
    import subprocess
    import sys

    async with running() as (gw, _):
        assert gw.app.tracing is None
        assert gw.mock is not None
        traceparent = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"
        answered = await request(
            gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"),
            [("traceparent", traceparent)],
        )  # fmt: skip
        assert answered.status == 200
        # No span of ours: the upstream is told of no attempt (with tracing on it gets
        # the attempt's span as its parent), and the client's header is not passed on.
        assert b"traceparent" not in gw.mock.last_headers
    code = (
        "import sys, trioproxy.server.app, trioproxy.cli;"
        "print([m for m in sys.modules if m.startswith('opentelemetry')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_request_without_traceparent_starts_a_trace_of_its_own() -> None:
    async with _collector() as (collector, url), running(otlp_endpoint=url) as (gw, recorder):
        assert gw.app.tracing is not None
        from tests.conftest import chat as body
        from trioproxy.testing.rawclient import request

        ok = await request(gw.url, "POST", "/v1/chat/completions", body("mock-t2-i0"))
        assert ok.status == 200
        await recorder.wait_for(1)
        await trio.to_thread.run_sync(gw.app.tracing.force_flush)
        await eventually(lambda: len(collector.spans) >= 2)
    (root,) = [s for s in collector.spans if not s.parent_span_id]
    assert _attrs(root)["trioproxy.outcome"] == "done" and len(root.trace_id) == 16
