"""The command line's grammar: every subcommand and option, each with help and its default.

``tests/test_cli.py`` walks this tree: an option without help text, or whose
help does not say its default, fails the suite.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import __version__
from .config import Config

__all__ = ["build_parser"]

_DEFAULTS = Config()


def _serve(sub: Any) -> None:
    d = _DEFAULTS
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", metavar="FILE",
                       help="TOML config file (see examples/trioproxy.toml); default: none, "
                       "all defaults and the built-in mock upstream")  # fmt: skip
    serve.add_argument("--bind", metavar="HOST:PORT", help=f"where to listen (default {d.bind})")
    serve.add_argument("--upstream", action="append", default=[], metavar="URL",
                       help="OpenAI-compatible base URL ending in /v1 (repeatable; default: "
                       "none, the built-in mock when no upstream is configured)")  # fmt: skip
    serve.add_argument("--anthropic-upstream", action="append", default=[], metavar="URL",
                       help="Anthropic base URL, /v1/messages is appended (repeatable; "
                       "default: none)")  # fmt: skip
    serve.add_argument("--max-streams", type=int, metavar="N",
                       help=f"concurrent upstream streams of this process, more get 429 "
                       f"(default {d.max_streams})")  # fmt: skip
    serve.add_argument("--idle-timeout", type=float, metavar="S",
                       help=f"seconds without an upstream event before the stream ends with an "
                       f"error event, 0 = never (default {d.idle_timeout:g})")  # fmt: skip
    serve.add_argument("--ttft-timeout", type=float, metavar="S",
                       help=f"seconds from the upstream request to its first event, 0 = never "
                       f"(default {d.ttft_timeout:g})")  # fmt: skip
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=f"worker processes sharing the port (default {d.workers})",
    )
    serve.add_argument(
        "--allow-open-public",
        action="store_true",
        default=None,
        help="serve without API keys on a non-loopback address (default: refused)",
    )
    serve.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of a start-up failure (default: one line)",
    )


def _chaos(sub: Any) -> None:
    chaos = sub.add_parser(
        "chaos", help="run a seeded fault x behaviour campaign, check invariants"
    )
    chaos.add_argument("--gateway", metavar="URL",
                       help="a running gateway (debug_endpoints on, upstream a mock-upstream); "
                       "default: start both here")  # fmt: skip
    chaos.add_argument(
        "--runs",
        type=int,
        default=None,
        metavar="N",
        help="requests in the campaign (default 300; with --routing: runs a family, default 3)",
    )
    chaos.add_argument(
        "--concurrency",
        type=int,
        default=16,
        metavar="C",
        help="requests in flight at once (default 16)",
    )
    chaos.add_argument("--seed", type=int, help="replay a campaign (default: random, printed)")
    chaos.add_argument(
        "--drain",
        type=float,
        default=0.0,
        metavar="S",
        help="the local gateway's providers drain after a hang-up, at most S seconds "
        "(on_client_disconnect = drain; default: cancel)",
    )
    chaos.add_argument(
        "--report", metavar="FILE", help="also write the report as JSON (default: none)"
    )
    chaos.add_argument("--cancel-p99-ms", type=float, default=100.0, metavar="MS",
                       help="fail when the p99 of client hang-up -> upstream closed exceeds MS "
                       "(default 100)")  # fmt: skip
    chaos.add_argument("--target", metavar="URL",
                       help="any OpenAI/Anthropic-compatible gateway whose upstream is the "
                       "mock at --mock, judged from outside (default: none)")  # fmt: skip
    chaos.add_argument("--mock", metavar="URL",
                       help="with --target: the trioproxy mock-upstream behind it (required "
                       "with --target)")  # fmt: skip
    chaos.add_argument(
        "--anthropic",
        action="store_true",
        help="with --target: send /v1/messages (default: /v1/chat/completions)",
    )
    chaos.add_argument(
        "--target-pid",
        type=int,
        metavar="PID",
        help="with --target: also check the target's RSS growth (default: not)",
    )
    chaos.add_argument("--target-timeouts", default="30,60,30", metavar="IDLE,TTFT,STALL[,HANG]",
                       help="with --target: the target's idle, time-to-first-token and "
                       "slow-client timeouts in seconds, and how long past them a client counts "
                       "as hung (default 30,60,30,30)")  # fmt: skip
    chaos.add_argument("--redis", action="store_true",
                       help="without --gateway: keep the gateway's receipts and usage in a "
                       "redis-server started here and killed at random (default: no Redis)")  # fmt: skip
    chaos.add_argument("--translate", action="store_true",
                       help="every request crosses dialects: chat to an Anthropic provider, "
                       "messages to an OpenAI-compatible one (the local gateway's providers, "
                       "or a --gateway configured so; default: off)")  # fmt: skip
    chaos.add_argument("--routing", action="store_true",
                       help="the routing campaign instead: 15 fault families plus a flapping "
                       "primary, each judged pass/safe/fail (--runs a family, default 3; "
                       "default: off)")  # fmt: skip
    chaos.add_argument("--backup-mock", metavar="URL",
                       help="with --routing --target: the backup mock-upstream (--backup) the "
                       "target falls back to, if it has one (default: none)")  # fmt: skip
    chaos.add_argument("--providers", type=int, default=1, metavar="N",
                       help="without --gateway: N providers of each kind on the one mock, to "
                            "fail over and eject under chaos (default 1)")  # fmt: skip


def _verify(sub: Any) -> None:
    verify = sub.add_parser("verify", help="check a receipt (from GET /v1/signature/ID)")
    verify.add_argument(
        "--receipt", required=True, metavar="FILE", help="the signed receipt document (required)"
    )
    verify.add_argument(
        "--request", metavar="FILE", help="the request body that was sent (default: not checked)"
    )
    verify.add_argument(
        "--response", metavar="FILE", help="the response bytes received (default: not checked)"
    )
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--key",
        metavar="FILE",
        help="public key: PEM, or /v1/attestation/key JSON (this or --gateway)",
    )
    source.add_argument(
        "--gateway", metavar="URL", help="fetch the key from this gateway (this or --key)"
    )


def _keys(sub: Any) -> None:
    keys = sub.add_parser(
        "keys",
        help="API keys",
        description="trioproxy keys new [--name NAME]: print a new key once, and the [[keys]] "
        "block (its hash, never the key) to paste into the config file",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="print a new key once, and its [[keys]] block")
    new.add_argument("--name", help="the key's name in logs and metrics (default: key-XXXXXX)")


def _mock(sub: Any) -> None:
    mock = sub.add_parser("mock-upstream", help="run the built-in mock LLM server")
    mock.add_argument(
        "--bind",
        default="127.0.0.1:8000",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:8000)",
    )
    mock.add_argument(
        "--shape",
        default=None,
        metavar="NAME",
        help="stream as a real server does (a name from trioproxy/testing/shapes, e.g. groq, "
        "azure, anthropic, llama_cpp; default: the mock's own shape)",
    )
    mock.add_argument(
        "--tokens",
        type=int,
        default=16,
        metavar="N",
        help="tokens per response, unless the model name says (default 16)",
    )
    mock.add_argument(
        "--itl-ms",
        type=float,
        default=20.0,
        metavar="MS",
        help="milliseconds between tokens (default 20)",
    )
    mock.add_argument(
        "--ttft-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="milliseconds before the first token (default 0)",
    )
    mock.add_argument(
        "--fault",
        default="",
        metavar="SPEC",
        help="fault for every model not named mock-*, in the model-name syntax "
        "without 'mock-': e.g. e503, stall0, drop3, f2000-t5 (default: none)",
    )
    mock.add_argument(
        "--backup",
        action="store_true",
        help="answer every model healthy, whatever fault its name asks for (the backup of "
        "a routing campaign; it still continues prefills, unless noprefill1; default: off)",
    )


def _trace(sub: Any) -> None:
    trace = sub.add_parser("trace", help="print one request's timeline (from /debug/trace)")
    trace.add_argument(
        "request_id", metavar="REQUEST_ID", help="its x-trioproxy-request-id (required)"
    )
    trace.add_argument(
        "--gateway",
        default="http://127.0.0.1:8080",
        metavar="URL",
        help="the gateway, with debug_endpoints on (default http://127.0.0.1:8080)",
    )
    trace.add_argument(
        "--key", metavar="KEY", help="an admin API key, when the gateway has keys (default: none)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trioproxy", description="LLM streaming gateway on trio + Hypercorn."
    )
    parser.add_argument("--version", action="version", version=f"trioproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_serve, _chaos, _verify, _keys, _mock, _trace):
        add(sub)
    return parser
