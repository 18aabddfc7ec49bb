"""The built-in mock LLM server: OpenAI and Anthropic compatible, with faults.

A raw trio TCP server speaking just enough HTTP/1.1 (keep-alive, Content-Length
request bodies, chunked responses), so that it can do what an ASGI app cannot:
drop a TCP connection mid-body, and notice the moment a peer closes its end
while a stream is paused. Each streaming response runs with a watcher blocked on
``receive_some``: an EOF there is the peer hanging up, recorded with its time.

Routes: POST /v1/chat/completions, /v1/completions, /v1/responses,
/v1/embeddings, /v1/messages, Gemini's /v1beta/models/M:streamGenerateContent and
:generateContent (:mod:`trioproxy.testing.mock_gemini`); GET /v1/models; GET /mock/stats (counters as JSON), GET /mock/streams (models of the streams
started), GET /mock/peer-closes[?tag=N] (mid-stream hang-ups seen), GET /mock/faults (when
each fault began).
Faults are chosen per request by the model name (see :mod:`trioproxy.testing.mock_scripts`).
"""

from __future__ import annotations

import collections
import functools
import itertools
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import trio

from .mock_answers import Refusals, err, healthy, prefilled, send_bytes, send_json
from .mock_gemini import gemini_route, gemini_script
from .mock_scripts import Fault, FaultSpecError, parse_fault, script_for, shaped
from .mock_stream import Emitter, write_stream
from .mock_tools import with_tool_call

__all__ = ["MockStatistics", "MockUpstream", "serve_mock"]

MAX_HEAD = 64 * 1024
MAX_BODY = 16 << 20
_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/embeddings": "embeddings",
}


@dataclass(frozen=True, slots=True)
class MockStatistics:
    open_connections: int
    connections_total: int
    requests_total: int
    streams_active: int
    peer_closed_mid_stream: int


@dataclass(frozen=True, slots=True)
class PeerClose:
    at: float  # trio clock when the mock saw the peer's EOF/reset
    mono: float  # time.monotonic() then: comparable across processes
    model: str
    last_write: float | None = None  # trio clock when its last write to the peer completed
    requested: float = 0.0  # time.monotonic() when the mock had read its request


class _PeerGone(Exception):
    pass


class MockUpstream:
    def __init__(self, defaults: Fault, backup: bool = False) -> None:
        self.defaults = defaults
        self.port = 0
        self.host = "127.0.0.1"
        self._open = 0
        self._conns = 0
        self._requests = 0
        self._streams = 0
        self._seq = itertools.count()
        self.refusals = Refusals()  # errors, resets, silence, refused prefills
        self.backup = backup  # healthy: every fault spec but the length and pace ignored
        self.peer_closes: collections.deque[PeerClose] = collections.deque(maxlen=10_000)
        self.streams_started: collections.deque[str] = collections.deque(maxlen=10_000)  # models
        # (model, time.monotonic()) of each stream started: who served when (GET /mock/started)
        self.started_at: collections.deque[tuple[str, float]] = collections.deque(maxlen=10_000)
        self._peer_close_event = trio.Event()
        self.last_headers: dict[bytes, bytes] = {}
        self.last_body: bytes | None = None
        # The same, as sent: every line in order, duplicates kept (header hygiene checks).
        self.last_header_list: list[tuple[bytes, bytes]] = []
        self.record = False  # keep what each stream sent (tests, fidelity checks)
        self.transcripts: dict[str, bytes] = {}  # response id -> SSE bytes sent
        self.first_sent: dict[str, float] = {}  # response id -> first event sent at
        self.sent_times: dict[str, list[float]] = {}  # response id -> each write, recorded
        # When a stream's fault began (drop, stall, bad event, heartbeats only), by model:
        # a campaign tells a hang-up that raced the fault from one that came first.
        self.faults: collections.deque[tuple[str, float]] = collections.deque(maxlen=10_000)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def statistics(self) -> MockStatistics:
        return MockStatistics(
            open_connections=self._open,
            connections_total=self._conns,
            requests_total=self._requests,
            streams_active=self._streams,
            peer_closed_mid_stream=len(self.peer_closes),
        )

    async def wait_peer_close(self, count: int = 1) -> PeerClose:
        """Wait until at least ``count`` mid-stream peer closes were seen."""
        while len(self.peer_closes) < count:
            await self._peer_close_event.wait()
        return self.peer_closes[count - 1]

    # -- connection -----------------------------------------------------------
    async def handle(self, stream: trio.SocketStream) -> None:
        self._open += 1
        self._conns += 1
        buf = bytearray()
        try:
            async with stream:
                while True:
                    request = await _read_request(stream, buf)
                    if request is None:
                        return
                    self._requests += 1
                    if not await self._respond(stream, buf, *request):
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, _PeerGone):
            pass
        finally:
            self._open -= 1

    async def _respond(
        self, stream: trio.SocketStream, buf: bytearray, method: str, path: str,
        headers: dict[bytes, bytes], body: bytes, header_list: list[tuple[bytes, bytes]],
    ) -> bool:  # fmt: skip
        keep = headers.get(b"connection", b"").lower() != b"close"
        self.last_headers = headers  # what the last request carried (header-hygiene checks)
        self.last_header_list = header_list
        self.last_body = body
        if path == "/mock/stats":
            await send_json(stream, 200, asdict(self.statistics()), keep)
            return keep
        if path == "/mock/faults":  # [model, time.monotonic()] of each fault begun
            await send_json(stream, 200, list(self.faults), keep)
            return keep
        if path == "/mock/streams":  # the model of every stream started (newest 10,000)
            await send_json(stream, 200, list(self.streams_started), keep)
            return keep
        if path == "/mock/started":
            await send_json(stream, 200, list(self.started_at), keep)
            return keep
        if path.startswith("/mock/peer-closes"):
            _, _, tag = path.partition("?tag=")
            suffix = f"-x{tag}" if tag else ""
            closes = [
                {"mono": c.mono, "model": c.model, "requested": c.requested}
                for c in self.peer_closes
                if c.model.endswith(suffix)
            ]
            await send_json(stream, 200, closes, keep)
            return keep
        if path == "/v1/models" and method == "GET":
            models = [{"id": "mock", "object": "model", "owned_by": "trioproxy"}]
            await send_json(stream, 200, {"object": "list", "data": models}, keep)
            return keep
        route = _ROUTES.get(path)
        gemini = gemini_route(path)
        if gemini is not None:
            route = "gemini"
        if route is None or method != "POST":
            await send_json(stream, 404, err(route, f"no route {method} {path}"), keep)
            return keep
        try:
            obj: Any = orjson.loads(body)
            if gemini is not None:  # the model and streaming are in the URL
                obj["model"], obj["stream"] = gemini
            model = obj["model"]
            fault = parse_fault(model, self.defaults)
        except (orjson.JSONDecodeError, KeyError, TypeError, FaultSpecError) as exc:
            await send_json(stream, 400, err(route, f"bad request: {exc}"), keep)
            return keep
        if self.backup:
            fault = healthy(fault)
        answered = await self.refusals.answer(stream, route, model, obj, fault, keep)
        if answered is not None:
            return answered
        if route == "embeddings":
            inputs = obj.get("input")
            n = len(inputs) if isinstance(inputs, list) else 1
            data: list[dict[str, Any]] = [
                {"object": "embedding", "index": i, "embedding": [0.0] * 8} for i in range(n)
            ]
            usage = {"prompt_tokens": n, "total_tokens": n}
            out = {"object": "list", "data": data, "model": model, "usage": usage}
            await send_json(stream, 200, out, keep)
            return keep
        opts = obj.get("stream_options")
        usage_on = isinstance(opts, dict) and bool(opts.get("include_usage"))
        skip = prefilled(route, obj) or 0
        if route == "gemini":
            script = gemini_script(model, fault.tokens, next(self._seq), bool(fault.tool_call))
        else:
            script = script_for(route, model, fault.tokens, usage_on, next(self._seq), skip)
            if fault.tool_call:
                script = with_tool_call(script, route)
        if fault.shape is not None:
            script = shaped(script, fault.shape, fault.tokens)
        if obj.get("stream") is not True:
            if fault.ttft_ms:
                await trio.sleep(fault.ttft_ms / 1000)
            await send_bytes(stream, 200, b"application/json", script.whole, keep)
            return keep
        self._streams += 1
        self.streams_started.append(model)
        self.started_at.append((model, time.monotonic()))
        ok = False
        emit = Emitter(stream, self.record, lambda at: _put(self.first_sent, script.id, at))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_peer, stream, buf, emit, model, nursery.cancel_scope)
                try:
                    ok = await write_stream(emit, script, fault, skip)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._peer_gone(model, emit)
                nursery.cancel_scope.cancel()
        finally:
            self._streams -= 1
            if emit.fault_at is not None:
                self.faults.append((model, emit.fault_at))
            if emit.transcript is not None:
                _put(self.transcripts, script.id, b"".join(emit.transcript))
                _put(self.sent_times, script.id, emit.times)
        return ok and keep

    def _peer_gone(self, model: str, emit: Emitter) -> None:
        now = trio.current_time()
        close = PeerClose(now, time.monotonic(), model, emit.last_write, emit.requested)
        self.peer_closes.append(close)
        self._peer_close_event.set()
        self._peer_close_event = trio.Event()

    async def _watch_peer(
        self,
        stream: trio.SocketStream,
        buf: bytearray,
        emit: Emitter,
        model: str,
        scope: trio.CancelScope,
    ) -> None:
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._peer_gone(model, emit)
                scope.cancel()
                return
            buf += data  # a pipelined request: keep it for later


_KEEP = 1000  # bounded memory for the per-response logs


def _put(log: dict[str, Any], key: str, value: Any) -> None:
    if len(log) >= _KEEP:
        del log[next(iter(log))]
    log[key] = value


async def _read_request(
    stream: trio.SocketStream, buf: bytearray
) -> tuple[str, str, dict[bytes, bytes], bytes, list[tuple[bytes, bytes]]] | None:
    """One request from ``buf`` + the socket; None at EOF between requests. Its
    headers as a dict (the last of a name wins) and as sent (every line)."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > MAX_HEAD:
            raise _PeerGone("request head too large")
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[: end + 4]
    try:
        method, target, _ = lines[0].split(b" ", 2)
        header_list = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            header_list.append((name.strip().lower(), value.strip()))
        headers = dict(header_list)
        length = int(headers.get(b"content-length", b"0"))
    except ValueError:
        raise _PeerGone("malformed request") from None
    if length > MAX_BODY or b"transfer-encoding" in headers:
        raise _PeerGone("unsupported request body")
    while len(buf) < length:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    path = target.decode("latin-1")
    if not path.startswith("/mock/"):
        path = path.split("?", 1)[0]
    return method.decode("latin-1"), path, headers, body, header_list


async def serve_mock(
    host: str = "127.0.0.1",
    port: int = 0,
    defaults: Fault | None = None,
    *,
    backup: bool = False,
    task_status: trio.TaskStatus[MockUpstream] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the mock until cancelled; ``nursery.start`` returns the server object.
    ``backup``: answer every model healthy (:func:`~.mock_answers.healthy`)."""
    mock = MockUpstream(defaults or Fault(), backup)
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
    sock = listeners[0].socket
    mock.host, mock.port = sock.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio.serve_listeners, mock.handle, listeners))
        task_status.started(mock)
