"""A real nginx in front of a gateway, configured as operators deploy it.

``make test`` installs Debian's ``nginx-light`` when it is missing; a test that
needs it fails (never skips) when it cannot be started. Two configurations:
nginx's defaults (``proxy_pass`` alone: HTTP/1.0 to the gateway, one connection
per request, buffering unless the response says ``X-Accel-Buffering: no``) and
the block docs/operations.md recommends (:data:`RECOMMENDED`, read from there).
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["DEFAULTS", "RECOMMENDED", "NginxConf", "nginx_in_front"]


@dataclass(frozen=True)
class NginxConf:
    upstream: str  # lines of the ``upstream`` block besides its ``server``
    location: str  # the body of ``location /``


DEFAULTS = NginxConf("", "proxy_pass http://trioproxy;")


def _recommended() -> NginxConf:
    """The nginx block of docs/operations.md, as written there."""
    text = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    block = re.search(r"```nginx\n(.*?)```", text, re.S)
    assert block, "docs/operations.md has no nginx block"
    upstream = re.search(r"upstream trioproxy \{\n(.*?)\n\}", block.group(1), re.S)
    location = re.search(r"location / \{\n(.*?)\n\s*\}", block.group(1), re.S)
    assert upstream and location, "the nginx block has no upstream trioproxy or location /"
    lines = [line for line in upstream.group(1).splitlines() if "server " not in line]
    return NginxConf("\n".join(lines), location.group(1))


RECOMMENDED = _recommended()

CONF = """
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream trioproxy {{
        server 127.0.0.1:{gateway_port};
{upstream}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
{location}
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def nginx_in_front(gateway_url: str, conf: NginxConf) -> Iterator[str]:
    """nginx on a free loopback port proxying to ``gateway_url`` as ``conf``
    says; yields nginx's URL."""
    binary = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if binary is None:
        pytest.fail("nginx is not installed: `make test` installs nginx-light")
    workdir = Path(tempfile.mkdtemp(prefix="trioproxy-nginx-"))
    workdir.chmod(0o777)  # workers drop to nobody when started as root
    port = _free_port()
    path = workdir / "nginx.conf"
    path.write_text(
        CONF.format(
            workdir=workdir, port=port, gateway_port=gateway_url.rsplit(":", 1)[1],
            upstream=conf.upstream, location=conf.location,
        )
    )  # fmt: skip
    proc = subprocess.Popen(
        [binary, "-c", str(path), "-p", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"nginx did not start: {err}")
                time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(workdir, ignore_errors=True)
