"""Serving: graceful shutdown with live streams, and the ``trioproxy serve`` process."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import aclosing

import h11
import orjson
import pytest
import trio

from tests.conftest import chat, events_of, eventually, open_mocks, running, wait_ready
from tests.redis_server import RedisServer
from trioproxy.admission.auth import new_key
from trioproxy.relay.record import CompletionRecord
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import RawClient, request

pytestmark = pytest.mark.slow  # not in `make quick`


async def test_graceful_shutdown_lets_streams_finish_and_drains_detached_work() -> None:
    """Guarantee 12: in-flight streams finish within graceful_timeout; hand-offs drained."""
    stored: list[CompletionRecord] = []

    async def slow_store(record: CompletionRecord) -> None:
        await trio.sleep(0.3)
        stored.append(record)

    bodies: list[bytes] = []
    async with running(graceful_timeout=10.0) as (gw, _):
        gw.app.hooks = (slow_store,)
        clients = []
        for _ in range(3):
            client = await RawClient.connect(gw.url)
            await client.send_request("POST", "/v1/chat/completions", chat("mock-t20-i50"))
            assert (await client.response_head())[0] == 200
            clients.append(client)
        gw.shutdown.set()  # SIGTERM does the same in `trioproxy serve`

        async def read_rest(client: RawClient) -> None:
            bodies.append(b"".join([c async for _, c in client.body_chunks()]))
            await client.close()

        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(read_rest, client)
    # The gateway has exited: every stream completed and every record was stored.
    assert [b.endswith(b"data: [DONE]\n\n") for b in bodies] == [True] * 3
    assert sorted(r.outcome for r in stored) == ["done"] * 3


async def test_streams_past_graceful_timeout_end_with_an_error_event() -> None:
    async with running(graceful_timeout=0.5) as (gw, recorder):
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", "/v1/messages", _messages("mock-t1000-i20"))
        assert (await client.response_head())[0] == 200
        gw.shutdown.set()
        with trio.fail_after(5):
            async with aclosing(client.body_chunks()) as chunks:
                body = b"".join([c async for _, c in chunks])
        await client.close()
        last = events_of(body)[-1]
        assert last.startswith(b"event: error\ndata: ")
        error = orjson.loads(last.split(b"data: ", 1)[1])
        assert error["error"]["type"] == "overloaded_error"
        records = await recorder.wait_for(1)
    assert records[0].outcome == "gateway_shutdown"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_ready(url: str) -> None:
    await wait_ready(url)


def _serve_config(
    config: pathlib.Path, *args: str
) -> tuple[subprocess.Popen[bytes], str, pathlib.Path]:
    """``trioproxy serve --config`` on a free port, its log beside the config."""
    port = _free_port()
    log_path = config.parent / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioproxy", "serve", "--config", str(config),
             "--bind", f"127.0.0.1:{port}", *args],
            stdout=log, stderr=log, cwd=config.parent,
            env={**os.environ, "XDG_STATE_HOME": str(config.parent)},
            start_new_session=True,  # its own group: _kill reaches its workers too
        )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}", log_path


async def _sigterm(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then the exit code (a graceful shutdown has 30 s)."""
    proc.send_signal(signal.SIGTERM)
    return int(await trio.to_thread.run_sync(proc.wait, 30))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Whatever the test did, no gateway process outlives it (nor, with
    ``--workers``, its workers: they share its process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


async def _serve_and_sigterm(*args: str) -> tuple[int, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "trioproxy", "serve", "--bind", f"127.0.0.1:{port}", *args]
    state = tempfile.mkdtemp(prefix="trioproxy-serve-")  # no config file: its data goes there
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=state,
        env={**os.environ, "XDG_STATE_HOME": state},
    )  # fmt: skip
    try:
        await _wait_ready(url)
        ok = await request(url, "POST", "/v1/chat/completions", chat("mock-t3-i0"))
        assert ok.status == 200 and ok.body.endswith(b"data: [DONE]\n\n")
        proc.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(proc.wait, 30)
        assert proc.stderr is not None
        return code, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_serve_with_no_upstream_uses_the_mock_and_exits_0_on_sigterm() -> None:
    code, log = await _serve_and_sigterm()
    assert code == 0, log
    assert "no upstream configured: serving the built-in mock upstream" in log


async def test_serve_with_workers() -> None:
    """Each worker process logs as a single process does: where it listens, that it
    is open to anyone (no keys), and an access line per request."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "trioproxy", "serve", "--bind", f"127.0.0.1:{port}"]
    state = tempfile.mkdtemp(prefix="trioproxy-serve-")
    proc = subprocess.Popen(
        [*cmd, "--workers", "2"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        cwd=state, env={**os.environ, "XDG_STATE_HOME": state},
    )  # fmt: skip
    lines: list[str] = []
    announced = re.compile(r"trioproxy worker \d+ listening on http://127\.0\.0\.1:")

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        await eventually(lambda: sum(bool(announced.search(x)) for x in lines) == 2, timeout=30)
        await _wait_ready(url)
        ok = await request(url, "POST", "/v1/chat/completions", chat("mock-t3-i0"))
        assert ok.status == 200
        await eventually(lambda: any("trioproxy.access" in x for x in lines), timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    assert proc.stderr is not None
    proc.stderr.close()
    log = "".join(lines)
    assert log.count("OPEN MODE: no API keys configured") == 2, log
    assert '"route":"chat"' in log and '"outcome":"done"' in log, log  # the access line


def _messages(model: str) -> dict[str, object]:
    return {"model": model, "max_tokens": 8, "messages": [], "stream": True}


async def test_sigterm_with_50_live_streams(tmp_path: pathlib.Path) -> None:
    """SIGTERM under load: no new connections, short streams finish, long ones get an
    error event when graceful_timeout expires, the process exits 0."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "trioproxy.toml"
    config.write_text("graceful_timeout = 1.5\naccess_log = false\n")
    cmd = [sys.executable, "-m", "trioproxy", "serve", "--config", str(config)]
    proc = await trio.lowlevel.open_process(
        [*cmd, "--bind", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL, cwd=tmp_path
    )
    try:
        await _wait_ready(url)
        clients = []
        for i in range(50):
            client = await RawClient.connect(url)
            model = "mock-t10-i20" if i % 2 else "mock-t1000-i20"  # 0.2 s or 20 s
            await client.send_request("POST", "/v1/chat/completions", chat(model))
            assert (await client.response_head())[0] == 200
            clients.append(client)
        proc.send_signal(signal.SIGTERM)

        async def refused() -> bool:  # the listener closes: new connections are refused
            try:
                (await RawClient.connect(url)).stream.socket.close()
            except OSError:
                return True
            return False

        await eventually(refused, poll=0.02)
        bodies: list[bytes] = []

        async def finish(client: RawClient) -> None:
            bodies.append(b"".join([c async for _, c in client.body_chunks()]))
            await client.close()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(finish, client)
            assert await proc.wait() == 0
        done = [b for b in bodies if b.endswith(b"data: [DONE]\n\n")]
        cut = [b for b in bodies if b"gateway_shutdown" in events_of(b)[-1]]
        assert (len(done), len(cut)) == (25, 25)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sighup_reloads_providers_and_a_bad_file_changes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    async with open_mocks(Fault(tokens=2), Fault(tokens=2)) as (first, second):
        config = tmp_path / "gateway.toml"

        def use(name: str, base_url: str) -> None:
            config.write_text(
                f'receipts = false\n[[providers]]\nname = "{name}"\nbase_url = "{base_url}/v1"\n'
            )

        use("first", first.base_url)
        proc, url, log_path = _serve_config(config)
        try:
            await _wait_ready(url)
            assert (await request(url, "POST", "/v1/chat/completions", chat("m"))).status == 200
            assert first.statistics().requests_total == 1
            use("second", second.base_url)
            proc.send_signal(signal.SIGHUP)
            with trio.fail_after(10):  # until the signal is handled; no restart in between
                while second.statistics().requests_total == 0:
                    r = await request(url, "POST", "/v1/chat/completions", chat("m"))
                    assert r.status == 200
            served_by_first = first.statistics().requests_total
            config.write_text("max_attempts = 0\n")  # invalid: must change nothing
            proc.send_signal(signal.SIGHUP)
            await eventually(lambda: "config not reloaded" in log_path.read_text(), timeout=10)
            before = second.statistics().requests_total
            assert (await request(url, "POST", "/v1/chat/completions", chat("m"))).status == 200
            assert second.statistics().requests_total == before + 1
            assert first.statistics().requests_total == served_by_first
            assert await _sigterm(proc) == 0
        finally:
            _kill(proc)
        text = log_path.read_text()
        assert "SIGHUP: config reloaded; providers: second" in text
        assert "max_attempts must be at least 1" in text


async def test_sighup_revokes_a_key_in_every_worker(tmp_path: pathlib.Path) -> None:
    """Two worker processes: a key removed from the file and SIGHUP is refused by
    both (before, the workers restarted from the start-up config and the key
    came back). Several requests, so both workers are asked (SO_REUSEPORT)."""
    from trioproxy.admission.auth import new_key

    alice, alice_block = new_key("alice")
    bob, bob_block = new_key("bob")
    config = tmp_path / "gateway.toml"
    config.write_text("receipts = false\n" + alice_block + bob_block)
    proc, url, _ = _serve_config(config, "--workers", "2")

    async def status(key: str) -> int:
        headers = [("authorization", f"Bearer {key}")]
        return (await request(url, "POST", "/v1/chat/completions", chat("m"), headers)).status

    try:
        await _wait_ready(url)
        assert [await status(alice) for _ in range(6)] == [200] * 6
        config.write_text("receipts = false\n" + bob_block)  # alice's key is revoked
        proc.send_signal(signal.SIGHUP)

        async def revoked() -> bool:
            try:
                return [await status(alice) for _ in range(6)] == [401] * 6
            except (OSError, h11.ProtocolError):  # between the old workers and the new ones
                return False  # (a connection an old worker took as it stopped: closed unanswered)

        await eventually(revoked, timeout=30, poll=0.1)
        assert [await status(bob) for _ in range(6)] == [200] * 6
        assert await _sigterm(proc) == 0
    finally:
        _kill(proc)


def test_response_headers_are_hypercorns_bytes_made_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per-request cost: Hypercorn formatted the ``date`` header for every
    response; ours makes the same headers once a second."""
    import hypercorn.config

    from trioproxy.server.serve import HypercornConfig

    now = [1_796_000_000.25]
    monkeypatch.setattr("time.time", lambda: now[0])
    monkeypatch.setattr(hypercorn.config, "time", lambda: now[0])  # its own `from time import time`
    ours, stock = HypercornConfig(), hypercorn.config.Config()
    first = ours.response_headers("h11")
    assert first == stock.response_headers("h11")
    assert (b"date", b"Mon, 30 Nov 2026 00:53:20 GMT") in first
    calls = [0]
    real = hypercorn.config.Config.response_headers

    def counted(self: hypercorn.config.Config, protocol: str) -> list[tuple[bytes, bytes]]:
        calls[0] += 1
        return real(self, protocol)

    monkeypatch.setattr(hypercorn.config.Config, "response_headers", counted)
    now[0] += 0.7  # the same second
    assert ours.response_headers("h11") == first and calls[0] == 0
    now[0] += 0.1  # the next one
    later = ours.response_headers("h11")
    assert calls[0] == 1 and (b"date", b"Mon, 30 Nov 2026 00:53:21 GMT") in later
    assert ours.response_headers("h2") == stock.response_headers("h2")


async def test_a_redis_outage_is_one_log_line_and_its_end_another(
    tmp_path: pathlib.Path, redis_server: RedisServer
) -> None:
    """Before, every request during an outage logged coredis's "Connection
    closed unexpectedly!" followed by "NoneType: None"."""
    key, block = new_key("alice")
    config = tmp_path / "trioproxy.toml"
    config.write_text(
        f'redis_url = "{redis_server.url}"\naccess_log = false\n'
        + block.replace("rpm = 0", "rpm = 100000")
        + "admin = true\n"
    )
    auth = [("authorization", f"Bearer {key}")]
    proc, url, log_path = _serve_config(config)
    try:
        await _wait_ready(url)
        for _ in range(3):
            ok = await request(url, "POST", "/v1/chat/completions", chat("mock-t2-i0"), auth)
            assert ok.status == 200
        redis_server.stop()
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(
                    request, url, "POST", "/v1/chat/completions", chat("mock-t2-i0"), auth
                )
        redis_server.start()

        async def back() -> bool:
            ready = await request(url, "GET", "/readyz", headers=auth)
            return bool(ready.json().get("redis") == "up")

        await eventually(back, timeout=10)
        for _ in range(3):
            ok = await request(url, "POST", "/v1/chat/completions", chat("mock-t2-i0"), auth)
            assert ok.status == 200
        assert await _sigterm(proc) == 0
    finally:
        _kill(proc)
    log = log_path.read_text()
    assert log.count("unavailable") == 1, log
    assert log.count("answers again") == 1, log
    assert "NoneType: None" not in log and "Traceback" not in log, log


async def test_sighup_with_workers_starts_each_workers_own_state_over(
    tmp_path: pathlib.Path,
) -> None:
    """As docs/operations.md says: without Redis, a key's rpm window lives in
    each worker, and SIGHUP with --workers N starts new workers, so a key that
    used up its rpm is served again within the same minute."""
    from trioproxy.admission.auth import new_key

    alice, block = new_key("alice")
    config = tmp_path / "gateway.toml"
    config.write_text("receipts = false\n" + block.replace("rpm = 0", "rpm = 1"))
    proc, url, _ = _serve_config(config, "--workers", "2")
    headers = [("authorization", f"Bearer {alice}")]

    async def status() -> int:
        return (await request(url, "POST", "/v1/chat/completions", chat("m"), headers)).status

    try:
        await _wait_ready(url)
        served: list[int] = []

        async def both_workers_served() -> bool:  # new connections: the kernel picks a worker
            served.append(await status())
            return served.count(200) >= 2

        await eventually(both_workers_served, timeout=30)
        assert set(served) <= {200, 429} and served.count(200) == 2
        assert {await status() for _ in range(6)} == {429}  # one a minute per worker
        proc.send_signal(signal.SIGHUP)

        async def served_again() -> bool:
            try:
                return await status() == 200
            except (OSError, h11.ProtocolError):  # between the old workers and the new ones
                return False

        await eventually(served_again, timeout=30, poll=0.2)  # well inside the minute
        assert await _sigterm(proc) == 0
    finally:
        _kill(proc)
