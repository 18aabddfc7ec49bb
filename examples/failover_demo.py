"""Failover and ejection, live: three mock upstreams, two broken, one gateway.

    .venv/bin/python examples/failover_demo.py [--requests 16]

Starts the three mock upstreams of ``examples/multi-provider.toml`` (on free
ports, so it never collides with anything), the gateway with that config, then
sends streaming requests one after another and prints, for each, the status,
the time to the first token and whether the stream ended with ``[DONE]``.
Finally it prints what the gateway says about its providers (``/readyz``) and
its failover and ejection counters (``/metrics``). Exit status 0 when every
request succeeded and the gateway failed over and ejected both broken providers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent
CONFIG = HERE / "multi-provider.toml"
MOCKS = {"8101": [], "8102": ["--fault", "e503"], "8103": ["--fault", "stall0"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    args = parser.parse_args()
    ports = {old: str(_free_port()) for old in (*MOCKS, "8100")}
    text = CONFIG.read_text()
    for old, new in ports.items():
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    config = Path(tempfile.mkdtemp(prefix="trioproxy-demo-")) / "multi-provider.toml"
    config.write_text(text)
    cli = [sys.executable, "-m", "trioproxy"]
    procs = [
        subprocess.Popen(
            [*cli, "mock-upstream", "--bind", f"127.0.0.1:{ports[p]}", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p, extra in MOCKS.items()
    ]
    log = open(config.with_suffix(".log"), "w")  # noqa: SIM115 - closed below
    procs.append(subprocess.Popen([*cli, "serve", "--config", str(config)], stdout=log, stderr=log))
    gateway = f"http://127.0.0.1:{ports['8100']}"
    try:
        deadline = time.monotonic() + 20
        for p in MOCKS:
            _wait_http(f"http://127.0.0.1:{ports[p]}/mock/stats", deadline)
        _wait_http(f"{gateway}/healthz", deadline)
        return _demo(gateway, args.requests, config.with_suffix(".log"))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        log.close()
        print(f"(gateway log: {config.with_suffix('.log')})")


def _demo(gateway: str, n: int, log_path: Path) -> int:
    ok = 0
    body = {"model": "demo-1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gateway, timeout=30) as client:
        for i in range(n):
            start = time.monotonic()
            first = None
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                data = b""
                for chunk in response.iter_raw():
                    first = first or time.monotonic()
                    data += chunk
            done = data.endswith(b"data: [DONE]\n\n")
            ok += response.status_code == 200 and done
            ttft = f"{(first - start) * 1000:7.1f} ms" if first else "      -"
            rid = response.headers.get("x-trioproxy-request-id", "")
            print(f"request {i + 1:2}: HTTP {response.status_code}  first bytes after {ttft}"
                  f"  {'[DONE]' if done else 'INCOMPLETE'}  {_routing(log_path, rid)}")  # fmt: skip
            time.sleep(0.25)
        ready = client.get("/readyz").json()
        metrics = client.get("/metrics").text
    print(f"\n/readyz providers: {ready['providers']}")
    wanted = ("trioproxy_failovers_total", "trioproxy_provider_ejections_total")
    lines = [line for line in metrics.splitlines() if line.startswith(wanted)]
    print("\n".join(lines))
    ejected = {
        m.group(1)
        for m in re.finditer(r'ejections_total\{provider="(\w+)"\} ([1-9][\d.]*)', metrics)
    }
    print(f"\n{ok}/{n} requests complete; ejected at least once: {sorted(ejected)}")
    return 0 if ok == n and ejected == {"broken", "stalled"} else 1


def _routing(log_path: Path, request_id: str) -> str:
    """What the gateway's access line says about the request's providers."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # the line is written as the request ends
        for line in log_path.read_text().splitlines():
            start = line.find("trioproxy.access: {")  # the access line, not a warning
            if request_id and request_id in line and start >= 0:
                record = json.loads(line[start + len("trioproxy.access: ") :])
                if record.get("request_id") == request_id:
                    tried = [f"{p} ({why})" for p, why in record["failovers"]]
                    via = f" after {', '.join(tried)} failed" if tried else ""
                    return f"served by {record['provider']}{via}"
        time.sleep(0.02)
    return ""


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
