"""The command line as a newcomer meets it: one-line errors, help everywhere, sane defaults.

Subprocess tests run ``python -m trioproxy`` for real; every one sets
``XDG_STATE_HOME`` so no data lands in the user's home.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import socket
import subprocess
import sys
import tomllib

import pytest

from trioproxy.admission.auth import parse_keys
from trioproxy.cli_args import build_parser
from trioproxy.config import load_config

pytestmark = pytest.mark.slow  # not in `make quick`: each test starts Python


def _run(tmp: pathlib.Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state")}
    return subprocess.run(
        [sys.executable, "-m", "trioproxy", *args],
        capture_output=True, text=True, timeout=timeout, cwd=tmp, env=env,
    )  # fmt: skip


def test_a_busy_port_is_one_line_and_exit_1(tmp_path: pathlib.Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run(tmp_path, "serve", "--bind", f"127.0.0.1:{port}")
    assert done.returncode == 1
    assert done.stderr == f"trioproxy: cannot listen on 127.0.0.1:{port}: address already in use\n"


def test_debug_shows_the_traceback(tmp_path: pathlib.Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run(tmp_path, "serve", "--bind", f"127.0.0.1:{port}", "--debug")
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr


def test_an_address_not_on_this_machine_is_one_line(tmp_path: pathlib.Path) -> None:
    """Also the --allow-open-public flag: without it, a public bind with no keys is refused."""
    refused = _run(tmp_path, "serve", "--bind", "10.255.255.1:18080")
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "trioproxy: refusing to serve 10.255.255.1:18080 without API keys"
    )
    allowed = _run(tmp_path, "serve", "--bind", "10.255.255.1:18080", "--allow-open-public")
    assert allowed.returncode == 1  # past the config check; the address is not ours
    assert allowed.stderr == (
        "trioproxy: cannot listen on 10.255.255.1:18080: cannot assign requested address\n"
    )


def test_an_unusable_signing_key_is_one_line(tmp_path: pathlib.Path) -> None:
    (tmp_path / "c.toml").write_text('data_dir = "d"\n')
    (tmp_path / "d").mkdir()
    key = tmp_path / "d" / "signing.key"
    key.write_text("not a key\n")
    key.chmod(0o644)
    done = _run(tmp_path, "serve", "--config", "c.toml")
    assert (done.returncode, done.stderr) == (
        1,
        f"trioproxy: cannot start: signing key {key} is readable by others (mode 644): "
        "chmod 600 it\n",
    )
    key.chmod(0o600)
    done = _run(tmp_path, "serve", "--config", "c.toml")
    assert done.returncode == 1
    assert done.stderr.startswith(f"trioproxy: cannot start: signing key {key} is not a PEM")


def test_a_configured_signing_key_is_found_beside_the_config_and_never_made_up(
    tmp_path: pathlib.Path,
) -> None:
    """``signing_key_path`` in a config file is relative to that file (not to the
    cwd); one that does not exist is a start-up error, not a new key."""
    conf = tmp_path / "etc" / "c.toml"
    conf.parent.mkdir()
    conf.write_text('signing_key_path = "keys/signing.key"\n')
    done = _run(tmp_path, "serve", "--config", str(conf))
    expected = tmp_path / "etc" / "keys" / "signing.key"
    assert (done.returncode, done.stderr) == (
        1,
        f"trioproxy: cannot start: signing_key_path {expected} does not exist (leave it out "
        "to have a key made in the data dir)\n",
    )
    assert not expected.exists() and not (tmp_path / "keys").exists()  # nothing made up
    assert load_config(conf).signing_key_path == str(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("idle_timout = 5\n", "unknown option 'idle_timout' (did you mean 'idle_timeout'?)"),
        (
            '[[providers]]\nname = "a"\nbase_url = "http://a/v1"\n'
            '[[providers]]\nname = "local"\nbase_ur = "http://b"\n',
            "[[providers]] #2 'local': unknown option 'base_ur' (did you mean 'base_url'?)",
        ),
        (
            '[[keys]]\nname = "bob"\nsha256 = "' + "0" * 64 + '"\nrmp = 3\n',
            "[[keys]] #1 'bob': unknown option 'rmp' (did you mean 'rpm'?)",
        ),
        ("max_attempts = 0\n", "max_attempts must be at least 1"),
        ("idle_timeout = 'soon'\n", "idle_timeout must be a number"),
        (
            '[[providers]]\nname = "a"\nbase_url = "http://a/v1"\nweight = 0\n',
            "[[providers]] #1 'a': weight must be an integer from 1 to 1000",
        ),
    ],
)
def test_config_errors_name_the_file_the_table_and_the_fix(
    tmp_path: pathlib.Path, text: str, message: str
) -> None:
    (tmp_path / "bad.toml").write_text(text)
    done = _run(tmp_path, "serve", "--config", "bad.toml")
    assert (done.returncode, done.stderr) == (2, f"trioproxy: bad.toml: {message}\n")


def _options(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            found.append((f"{path} {'/'.join(action.option_strings) or action.dest}", action))
    return found


def test_every_option_of_every_subcommand_has_help_with_its_default() -> None:
    options = _options(build_parser(), "trioproxy")
    assert len(options) > 25
    missing = [name for name, action in options if not action.help]
    assert missing == []
    unstated = [
        name
        for name, action in options
        if not re.search(r"default|required|this or --", str(action.help))
    ]
    assert unstated == []


def test_version(tmp_path: pathlib.Path) -> None:
    done = _run(tmp_path, "--version")
    assert (done.returncode, done.stdout) == (0, "trioproxy 0.1.0\n")


def test_keys_new_without_a_name_and_its_commented_block(tmp_path: pathlib.Path) -> None:
    done = _run(tmp_path, "keys", "new")
    assert done.returncode == 0, done.stderr
    block = done.stdout.split("# add to the gateway's config file:\n", 1)[1]
    assert "max_streams = 0  # concurrent streams of this key, 0 = unlimited" in block
    assert "rpm = 0  # requests per minute, 0 = unlimited" in block
    (key,) = parse_keys(tomllib.loads(block)["keys"])
    assert re.fullmatch(r"key-[0-9a-f]{6}", key.name)


def test_the_data_dir_is_beside_the_config_file_or_in_the_state_dir(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "a.toml").write_text("")
    (tmp_path / "etc" / "b.toml").write_text('data_dir = "../var/tp"\n')
    (tmp_path / "etc" / "c.toml").write_text(f'data_dir = "{tmp_path}/abs"\n')
    monkeypatch.chdir(tmp_path)  # the directory the gateway starts from does not matter
    assert load_config("etc/a.toml").data_dir == str(tmp_path / "etc" / ".trioproxy")
    assert load_config("etc/b.toml").data_dir == str(tmp_path / "var" / "tp")
    assert load_config("etc/c.toml").data_dir == str(tmp_path / "abs")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert load_config().data_dir == str(tmp_path / "state" / "trioproxy")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config().data_dir == str(tmp_path / "home" / ".local" / "state" / "trioproxy")


async def test_the_data_dir_is_printed_at_start_up(tmp_path: pathlib.Path) -> None:
    import signal

    import trio

    from tests.conftest import eventually

    (tmp_path / "gw.toml").write_text("")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioproxy", "serve", "--config", "gw.toml",
             "--bind", f"127.0.0.1:{port}"],
            stderr=out, cwd=tmp_path, env={**os.environ, "XDG_STATE_HOME": str(tmp_path)},
        )  # fmt: skip
        try:
            await eventually(lambda: "data dir" in log.read_text(), timeout=20, poll=0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            await trio.to_thread.run_sync(proc.wait, 30)
    assert f"data dir {tmp_path / '.trioproxy'} (signing key, receipts)" in log.read_text()
    assert (tmp_path / ".trioproxy" / "signing.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / ".trioproxy").stat().st_mode & 0o777 == 0o700


def test_a_refused_bind_reads_as_one_line() -> None:
    """Permission denied cannot be provoked as root (this CI runs as root): the
    mapping from the error a bind raises to the line is checked directly."""
    import errno

    from trioproxy.config import Config
    from trioproxy.server.serve import _startup_error

    config = Config(bind="127.0.0.1:80")
    error = OSError(errno.EACCES, "Permission denied")
    wrapped = BaseExceptionGroup("serve", [ExceptionGroup("inner", [error])])
    found = _startup_error(wrapped, config)
    assert found is not None and str(found) == "cannot listen on 127.0.0.1:80: permission denied"
    assert _startup_error(ValueError("a bug"), config) is None  # bugs keep their traceback
