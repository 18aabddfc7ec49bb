"""Processes of a benchmark run: mock upstream, gateway, nginx; pinning; probes.

On a machine with >= 2 cores the proxy under test runs alone on core 0 and the
mock upstream and the load client share the others, so the proxy's figures are
one core's worth.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CORES = os.cpu_count() or 1
PINNED = CORES >= 2
PROXY_CORES = {0} if PINNED else set(range(CORES))
OTHER_CORES = set(range(1, CORES)) if PINNED else set(range(CORES))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cores: set[int]) -> None:
    os.sched_setaffinity(0, cores)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


@dataclass
class Proc:
    name: str
    url: str
    popen: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    extra_pids: list[int] = field(default_factory=list)
    apis: frozenset[str] = frozenset({"chat", "messages"})  # what the target can serve

    @property
    def pids(self) -> list[int]:
        return ([self.popen.pid] if self.popen else []) + self.extra_pids

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError):
                pass
        return total

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(name: str, cmd: list[str], port: int, cores: set[int]) -> Proc:
    """A quiet process pinned to ``cores``, returned once ``port`` listens."""
    popen = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: _pin(cores)
    )
    wait_port(port)
    return Proc(name, f"http://127.0.0.1:{port}", popen)


def start_mock() -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "trioproxy", "mock-upstream", "--bind", f"127.0.0.1:{port}"]
    return _spawn("mock", cmd, port, OTHER_CORES)


def start_floor(mock_url: str) -> Proc:
    """The trio floor (:mod:`bench.floor`) on the proxy core, in front of the mock."""
    port = free_port()
    upstream = mock_url.removeprefix("http://")
    cmd = [sys.executable, "-m", "bench.floor", "--port", str(port), "--upstream", upstream]
    return _spawn("trio floor", cmd, port, PROXY_CORES)


def start_hyper_floor(mock_url: str) -> Proc:
    """The Hypercorn floor (:mod:`bench.hyper_floor`) on the proxy core, in front of the mock."""
    port = free_port()
    upstream = mock_url.removeprefix("http://")
    cmd = [sys.executable, "-m", "bench.hyper_floor", "--port", str(port), "--upstream", upstream]
    return _spawn("hypercorn floor", cmd, port, PROXY_CORES)


def start_naive(mock_url: str, cores: set[int] = PROXY_CORES) -> Proc:
    """The 40-line Hypercorn + httpx relay (:mod:`trioproxy.testing.naive_relay`)."""
    port = free_port()
    cmd = [sys.executable, "-m", "trioproxy.testing.naive_relay", mock_url, str(port)]
    return _spawn("naive relay", cmd, port, cores)


def start_trioproxy(
    mock_url: str,
    metrics: bool = True,
    tree: Path | None = None,
    extra_config: str = "",
    workers: int = 1,
    translated: bool = False,
) -> Proc:
    """A gateway on the proxy core; ``tree``: run the trioproxy of another
    checkout (its root first on PYTHONPATH), e.g. to compare two commits;
    ``extra_config``: TOML lines appended to its config. ``workers > 1``: that
    many worker processes, on every core (their CPU is summed). ``translated``:
    its only upstream is the mock as an Anthropic server, so a chat request is
    translated both ways (trioproxy.translate)."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="trioproxy-bench-"))
    config = workdir / "trioproxy.toml"
    upstreams = "" if translated else f'openai_upstreams = ["{mock_url}/v1"]\n'
    config.write_text(
        upstreams + f'anthropic_upstreams = ["{mock_url}"]\n'
        "access_log = false\nmax_streams = 4096\ndebug_endpoints = true\n"
        # The load client is one peer with up to 1,000 connections: lift the per-peer cap.
        "max_connections_per_ip = 4096\n"
        f"metrics = {'true' if metrics else 'false'}\n"
        f'data_dir = "{workdir}"\nworkers = {workers}\n' + extra_config
    )
    cmd = [sys.executable, "-m", "trioproxy", "serve", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree is not None else None
    popen = subprocess.Popen(
        [*cmd, "--bind", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: _pin(PROXY_CORES if workers == 1 else set(range(CORES))), env=env,
        cwd=workdir,
    )  # fmt: skip
    wait_port(port)
    if workers == 1:
        name = "trioproxy translated" if translated else "trioproxy"
        return Proc(name, f"http://127.0.0.1:{port}", popen, workdir)
    deadline = time.monotonic() + 20
    while len(children := _children(popen.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    # Nothing answers per worker, so give both a second for their lifespans; until then a
    # worker's share of connections waits in the shared listen queue (none is refused).
    time.sleep(1.0)
    return Proc(f"trioproxy x{workers}", f"http://127.0.0.1:{port}", popen, workdir, children)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


NGINX_CONF = """
worker_processes 1;
{affinity}
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 1024; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def start_nginx(mock_url: str) -> Proc | None:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        return None
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="nginx-bench-"))
    conf = workdir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            workdir=workdir, port=port, mock_port=mock_url.rsplit(":", 1)[1],
            affinity="worker_cpu_affinity 01;" if PINNED else "",
        )
    )  # fmt: skip
    popen = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    time.sleep(0.2)
    return Proc("nginx", f"http://127.0.0.1:{port}", popen, workdir, _children(popen.pid))


LITELLM_CONF = """model_list:
  - model_name: "*"
    litellm_params:
      model: "openai/*"
      api_base: "{mock_url}/v1"
      api_key: "sk-bench"
general_settings:  # loopback only, and the load client sends no key
  dangerously_permit_weak_or_unset_master_key: true
"""


def start_litellm(mock_url: str, binary: str) -> Proc:
    """LiteLLM's proxy (``binary``: its ``litellm`` command, from a venv of its own) on the
    proxy core, one worker, every model name passed to the mock as an OpenAI model."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="litellm-bench-"))
    conf = workdir / "config.yaml"
    conf.write_text(LITELLM_CONF.format(mock_url=mock_url))
    popen = subprocess.Popen(
        [binary, "--config", str(conf), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: _pin(PROXY_CORES), cwd=workdir,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},  # no fetch at start-up
    )  # fmt: skip
    wait_port(port, timeout=120)
    return Proc("litellm", f"http://127.0.0.1:{port}", popen, workdir, apis=frozenset({"chat"}))
