"""Every command the README gives, run as written.

The commands are read from README.md itself: indented command lines, inline
``make``/``trioproxy``/``.venv/bin/python`` spans and the Python blocks. Each
is either run here or named with the one reason it is not; a command added to
the README without a line in :data:`HOW` fails the first test.

What changes when they run here, and why: the addresses (127.0.0.1:8080 and
:8000 become free ports, so that two test runs can share a machine), ``NAME``
and ``ID`` placeholders get values, and the chaos campaign runs 20 runs with
the short timeouts the README gives instead of 300 (the README's own figure
for 300 is a minute; the suite has no minute to spend).
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

pytestmark = pytest.mark.slow  # not in `make quick`: processes

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BIN = pathlib.Path(sys.executable).parent


def readme_commands() -> set[str]:
    """The README's commands, whitespace and trailing comments normalised."""
    found: set[str] = set()
    text = re.sub(r"```.*?```", "", README, flags=re.S)  # fenced: code and sample output
    for block in re.findall(r"((?:^    .+\n)+)", text, flags=re.M):
        joined = re.sub(r"\\\n\s*", "", block)  # continuation lines
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            found.add(" ".join(line.split()))
    for span in re.findall(r"`((?:make|trioproxy|\.venv/bin/python)\b[^`]*)`", README):
        found.add(" ".join(span.split()))
    for block in re.findall(r"```python\n(.*?)```", README, flags=re.S):
        found.add("python: " + block.splitlines()[0])
    return found


# How each command is proved: a test of this module, or another module's test.
HOW = {
    "make run": "test_make_run_serves_the_mock_to_curl_and_the_sdks",
    "make test": "not run here: it is the command that runs this test",
    "curl -N http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' -d "
    """'{"model": "mock-t20-i50", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'""": (
        "test_make_run_serves_the_mock_to_curl_and_the_sdks"
    ),
    "python: from openai import OpenAI": "test_make_run_serves_the_mock_to_curl_and_the_sdks",
    "python: import anthropic": "test_make_run_serves_the_mock_to_curl_and_the_sdks",
    "trioproxy serve --anthropic-upstream http://127.0.0.1:8000": (
        "test_the_sdk_examples_reach_a_model_of_the_other_api"
    ),
    'make run ARGS="--upstream http://127.0.0.1:8000/v1"': "test_the_cancellation_study_runs",
    ".venv/bin/python examples/failover_demo.py": (
        "tests/test_examples.py::test_the_failover_demo_shows_failover_and_ejection_live"
    ),
    "trioproxy keys new --name NAME": "test_keys_new_and_every_commands_help",
    "trioproxy COMMAND --help": "test_keys_new_and_every_commands_help",
    "trioproxy mock-upstream --bind 127.0.0.1:8000 &": "test_the_cancellation_study_runs",
    "trioproxy serve --upstream http://127.0.0.1:8000/v1 &": "test_the_cancellation_study_runs",
    "trioproxy chaos --target http://127.0.0.1:8080 --mock http://127.0.0.1:8000 --runs 300": (
        "test_the_cancellation_study_runs"
    ),
    "trioproxy trace REQUEST_ID": "test_the_cancellation_study_runs",
    "make multi-host": (
        "tests/test_examples.py::test_the_multi_host_example_gives_each_host_its_own_data_dir "
        "(its run.sh, on free ports)"
    ),
    "trioproxy verify": "tests/test_receipts.py (trioproxy verify on every route's receipt)",
    "trioproxy chaos": "test_the_cancellation_study_runs",
}


def test_every_readme_command_is_run_or_says_why_not() -> None:
    assert readme_commands() == set(HOW)
    here = set(globals())
    for command, how in HOW.items():
        name = how.split(" ")[0]
        assert name in here or "::" in how or how.startswith(("not run", "tests/")), command
        if "::" in how:
            path, test = name.split("::")
            assert f"def {test}(" in (ROOT / path).read_text(), how


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: pathlib.Path) -> dict[str, str]:
    """The README's shell: the venv's commands on PATH, a state dir of its own."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }


def _ports(command: str, gateway: int, mock: int) -> str:
    return command.replace("127.0.0.1:8080", f"127.0.0.1:{gateway}").replace(
        "127.0.0.1:8000", f"127.0.0.1:{mock}"
    )


@contextmanager
def _background(command: str, env: dict[str, str], ready: str) -> Iterator[subprocess.Popen[bytes]]:
    """``command &`` in the README's shell, until ``ready`` answers 200."""
    log = pathlib.Path(env["XDG_STATE_HOME"]).parent / f"background-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, shell=True, cwd=ROOT, env=env, start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (command, log.read_text()[-2000:])
            try:
                with urllib.request.urlopen(ready, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{command}: {ready} never answered"
            time.sleep(0.1)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _run(command: str, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        command, shell=True, cwd=ROOT, env=env, capture_output=True, timeout=timeout, check=False
    )
    out = done.stdout.decode()
    assert done.returncode == 0, (command, out[-2000:], done.stderr.decode()[-2000:])
    return out


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_make_run_serves_the_mock_to_curl_and_the_sdks(tmp_path: pathlib.Path) -> None:
    env, port = _env(tmp_path), _free_port()
    (curl,) = [c for c in HOW if c.startswith("curl ")]
    with _background(
        f'make run ARGS="--bind 127.0.0.1:{port}"', env, f"http://127.0.0.1:{port}/healthz"
    ):
        streamed = _run(_ports(curl, port, 0), env)
        assert streamed.count("data: ") == 20 + 3 and streamed.endswith("data: [DONE]\n\n")
        for block in _python_blocks():
            script = tmp_path / "readme_sdk.py"
            script.write_text(_ports(block, port, 0))
            text = _run(f"{sys.executable} {script}", env)
            assert len(text.split()) == 20, text  # the 20 tokens of mock-t20-i50


def test_the_sdk_examples_reach_a_model_of_the_other_api(tmp_path: pathlib.Path) -> None:
    """Any client, any model: the mock speaking Anthropic's API behind the gateway;
    both SDK examples, the OpenAI one translated."""
    env, gateway, mock = _env(tmp_path), _free_port(), _free_port()
    (serve,) = [c for c in HOW if c.startswith("trioproxy serve --anthropic-upstream")]
    with (
        _background(f"trioproxy mock-upstream --bind 127.0.0.1:{mock}", env,
                    f"http://127.0.0.1:{mock}/mock/stats"),
        _background(_ports(serve, gateway, mock) + f" --bind 127.0.0.1:{gateway}", env,
                    f"http://127.0.0.1:{gateway}/healthz"),
    ):  # fmt: skip
        for block in _python_blocks():
            script = tmp_path / "readme_sdk.py"
            script.write_text(_ports(block, gateway, mock))
            text = _run(f"{sys.executable} {script}", env)
            assert len(text.split()) == 20, text  # the 20 tokens of mock-t20-i50
        streams = urllib.request.urlopen(f"http://127.0.0.1:{mock}/mock/streams", timeout=10)
        assert streams.read().count(b"mock-t20-i50") == 2  # its one upstream: Anthropic's API


def test_keys_new_and_every_commands_help(tmp_path: pathlib.Path) -> None:
    env = _env(tmp_path)
    key = _run("trioproxy keys new --name readme", env)
    assert 'name = "readme"' in key and "sha256" in key
    commands = re.findall(r"^    ([a-z-]+)\s", _run("trioproxy --help", env), flags=re.M)
    assert {"serve", "chaos", "keys", "trace", "verify", "mock-upstream"} <= set(commands)
    for command in commands:
        assert "usage: trioproxy " + command in _run(f"trioproxy {command} --help", env)


def test_the_cancellation_study_runs(tmp_path: pathlib.Path) -> None:
    """The section's three commands (with the short timeouts it gives), a trace
    of one request, and ``make run`` in front of the same upstream."""
    env, gateway, mock = _env(tmp_path), _free_port(), _free_port()
    lines = [c for c in HOW if c.endswith("&") or c.startswith("trioproxy chaos --target")]
    upstream, serve, chaos = (_ports(c, gateway, mock).removesuffix(" &") for c in lines)
    serve += f" --bind 127.0.0.1:{gateway} --idle-timeout 1 --ttft-timeout 2"
    chaos = chaos.replace("--runs 300", "--runs 20") + " --target-timeouts 1,2,30 --seed 1"
    with (
        _background(upstream, env, f"http://127.0.0.1:{mock}/mock/stats"),
        _background(serve, env, f"http://127.0.0.1:{gateway}/healthz"),
    ):
        report = _run(chaos, env, timeout=300)
        assert "ALL INVARIANTS HOLD" in report, report
    config = tmp_path / "debug.toml"
    config.write_text(
        f'debug_endpoints = true\nopenai_upstreams = ["http://127.0.0.1:{mock}/v1"]\n'
    )
    with (
        _background(upstream, env, f"http://127.0.0.1:{mock}/mock/stats"),
        _background(
            f"trioproxy serve --config {config} --bind 127.0.0.1:{gateway}",
            env,
            f"http://127.0.0.1:{gateway}/healthz",
        ),  # fmt: skip
    ):
        body = b'{"model": "mock-t3-i0", "stream": true, "messages": []}'
        req = urllib.request.Request(
            f"http://127.0.0.1:{gateway}/v1/chat/completions", body,
            {"content-type": "application/json", "x-request-id": "readme-1"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as answer:
            assert answer.read().endswith(b"data: [DONE]\n\n")
        trace = _run(f"trioproxy trace readme-1 --gateway http://127.0.0.1:{gateway}", env)
        assert "request readme-1 (outcome done)" in trace and "response_head" in trace, trace
    run_upstream = _ports('make run ARGS="--upstream http://127.0.0.1:8000/v1"', gateway, mock)
    run_upstream = run_upstream.removesuffix('"') + f' --bind 127.0.0.1:{gateway}"'
    with (
        _background(upstream, env, f"http://127.0.0.1:{mock}/mock/stats"),
        _background(run_upstream, env, f"http://127.0.0.1:{gateway}/healthz"),
    ):
        models = urllib.request.urlopen(f"http://127.0.0.1:{gateway}/v1/models", timeout=10)
        assert b'"mock"' in models.read()  # the upstream's own model list
