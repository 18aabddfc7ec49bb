"""A real ``redis-server`` for the tests: started on a free port, stopped, killed, restarted.

``make test`` installs Debian's ``redis-server`` when it is missing; a test that
needs it fails (never skips) when it cannot be started.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from trioproxy.testing.redis_server import redis_command

__all__ = ["RedisServer", "redis_server"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="trioproxy-redis-")
        try:
            self.argv = redis_command(self.port, self.dir)
        except RuntimeError as exc:
            pytest.fail(f"{exc}: `make test` installs it")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until it accepts connections
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """SIGKILL: a crash. What Redis had acknowledged survives it (an append-only
        file synced on every write, as a deployment that keeps receipts in Redis
        runs it: :func:`~trioproxy.testing.redis_server.redis_command`), so what
        the gateway stored there is there again on restart."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: a Redis that holds its connections and answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def require_password(self, password: str) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"CONFIG SET requirepass %s\r\n" % password.encode())
            assert s.recv(16).startswith(b"+OK")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """One Redis per test (a fresh keyspace; killing it harms no other test)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.resume()  # a paused server cannot be killed cleanly otherwise
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
