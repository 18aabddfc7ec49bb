from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

from trioproxy.config import Config, load_config, parse_bind
from trioproxy.errors import ConfigError

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "trioproxy.toml"


def test_example_config_loads_and_documents_every_option() -> None:
    config = load_config(EXAMPLE)
    text = EXAMPLE.read_text()
    for name in Config().options():
        assert name in text, f"examples/trioproxy.toml does not document {name}"
    assert config.bind == "127.0.0.1:8080"


def test_flags_override_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('idle_timeout = 5\nopenai_upstreams = ["http://a:1/v1/"]\nmax_streams = 7\n')
    config = load_config(path, idle_timeout=2.5, max_streams=None, openai_upstreams=())
    assert config.idle_timeout == 2.5  # flag wins
    assert config.max_streams == 7  # unset flag leaves the file's value
    assert config.openai_upstreams == ("http://a:1/v1",)  # trailing slash dropped


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("idle_timeot = 3\n", "unknown option 'idle_timeot' (did you mean 'idle_timeout'?)"),
        ('idle_timeout = "3"\n', "idle_timeout must be a number"),
        ("max_streams = 0\n", "max_streams must be at least 1"),
        ("ttft_timeout = -1\n", "ttft_timeout must be a number of seconds"),
        ('openai_upstreams = ["ftp://x"]\n', "must start with http"),
        ('bind = "nohost"\n', "bind must be HOST:PORT"),
        ("not toml [\n", "c.toml"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: pathlib.Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("/nonexistent/trioproxy.toml")


def test_parse_bind() -> None:
    assert parse_bind("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_bind("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ConfigError):
        parse_bind("host:99999")


def test_the_configuration_page_names_every_option() -> None:
    """docs/configuration.md's table is the reference: every option of Config is
    in it (the derived fields and the [[providers]]/[mock_options] tables aside)."""
    text = (pathlib.Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    tables = {"providers", "mock_options"}
    missing = [
        f.name
        for f in dataclasses.fields(Config)
        if f.init and f.name not in tables and f"`{f.name}`" not in text
    ]
    assert not missing, f"docs/configuration.md does not name {missing}"
    assert "`[[providers]]`" in text and "`[mock_options]`" in text
