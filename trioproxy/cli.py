"""Command line: ``trioproxy serve`` and ``trioproxy mock-upstream``.

All user-facing output of the package goes through here (and logging).
"""

from __future__ import annotations

import argparse
import functools
import logging
import random
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .testing.mock_scripts import Fault
from .config import load_config, parse_bind
from .errors import ConfigError
from .routing.providers import read_credential
from .server.hypercorn import UnsupportedHypercorn, check_hypercorn_version
from .server.serve import run_gateway

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trioproxy", description="LLM streaming gateway on trio + Hypercorn."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="TOML config file (see examples/trioproxy.toml)")
    serve.add_argument("--bind", help="HOST:PORT (default 127.0.0.1:8080)")
    serve.add_argument("--upstream", action="append", default=[], metavar="URL",
                       help="OpenAI-compatible base URL ending in /v1 (repeatable)")  # fmt: skip
    serve.add_argument("--anthropic-upstream", action="append", default=[], metavar="URL",
                       help="Anthropic base URL; /v1/messages is appended (repeatable)")  # fmt: skip
    serve.add_argument("--max-streams", type=int)
    serve.add_argument("--idle-timeout", type=float, metavar="S")
    serve.add_argument("--ttft-timeout", type=float, metavar="S")
    serve.add_argument("--workers", type=int)
    chaos = sub.add_parser(
        "chaos", help="run a seeded fault x behaviour campaign, check invariants"
    )
    chaos.add_argument("--gateway", metavar="URL",
                       help="a running gateway (debug_endpoints on, upstream a mock-upstream); "
                       "default: start both here")  # fmt: skip
    chaos.add_argument("--runs", type=int, default=300)
    chaos.add_argument("--concurrency", type=int, default=16)
    chaos.add_argument("--seed", type=int, help="default: random (printed)")
    chaos.add_argument("--report", metavar="FILE", help="also write the report as JSON")
    chaos.add_argument("--providers", type=int, default=1, metavar="N",
                       help="without --gateway: N providers of each kind on the one mock "
                            "(failover and ejection under chaos)")  # fmt: skip
    verify = sub.add_parser("verify", help="check a receipt (from GET /v1/signature/ID)")
    verify.add_argument("--receipt", required=True, metavar="FILE")
    verify.add_argument("--request", metavar="FILE", help="the request body that was sent")
    verify.add_argument("--response", metavar="FILE", help="the response bytes received")
    key_source = verify.add_mutually_exclusive_group(required=True)
    key_source.add_argument(
        "--key", metavar="FILE", help="public key: PEM, or /v1/attestation/key JSON"
    )
    key_source.add_argument("--gateway", metavar="URL", help="fetch the key from this gateway")
    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_new = keys_sub.add_parser("new", help="print a new key once, and its [[keys]] block")
    keys_new.add_argument("--name", required=True)
    mock = sub.add_parser("mock-upstream", help="run the built-in mock LLM server")
    mock.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default 127.0.0.1:8000)")
    mock.add_argument("--tokens", type=int, default=16)
    mock.add_argument("--itl-ms", type=float, default=20.0)
    mock.add_argument("--ttft-ms", type=float, default=0.0)
    mock.add_argument("--fault", default="", metavar="SPEC",
                      help="default fault for every model not named mock-*, in the model-name "
                           "syntax without 'mock-': e.g. e503, stall0, drop3, f2000-t5")  # fmt: skip
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is ours


async def _run_mock(host: str, port: int, fault: Fault) -> None:
    from .testing.mock_upstream import serve_mock

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            mock = await nursery.start(serve_mock, host, port, fault)
            print(f"trioproxy mock upstream on {mock.base_url} "
                  f"(OpenAI base {mock.base_url}/v1)", flush=True)  # fmt: skip
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _chaos(args: argparse.Namespace) -> int:
    from .testing.chaos.campaign import run_campaign, write_report
    from .testing.chaos.report import format_report

    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"chaos: seed {seed} (replay with --seed {seed})", file=sys.stderr, flush=True)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty() and (done % 25 == 0 or done == total):
            print(f"\r{done}/{total} runs", end="", file=sys.stderr, flush=True)

    report = trio.run(
        run_campaign, args.gateway, args.runs, args.concurrency, seed, progress, args.providers
    )
    print(file=sys.stderr)
    print(format_report(report))
    if args.report:
        write_report(report, args.report)
    return 0 if report["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "chaos":
            return _chaos(args)
        if args.command == "keys":
            from .admission.auth import new_key

            key, block = new_key(args.name)
            print(f"# the key (shown once; the gateway keeps only its hash):\n{key}\n")
            print("# add to the gateway's config file:")
            print(block, end="")
            return 0
        if args.command == "verify":
            from .receipts.verify import verify as verify_receipt_files

            ok, line = verify_receipt_files(
                args.receipt, args.request, args.response, args.key, args.gateway
            )
            print(line if ok else f"invalid: {line}")
            return 0 if ok else 1
        if args.command == "mock-upstream":
            from .testing.mock_scripts import Fault, FaultSpecError, parse_fault

            host, port = parse_bind(args.bind)
            _setup_logging("info")
            fault = Fault(tokens=args.tokens, itl_ms=args.itl_ms, ttft_ms=args.ttft_ms)
            if args.fault:
                try:
                    fault = parse_fault("mock-" + args.fault, fault)
                except FaultSpecError as exc:
                    print(f"trioproxy: {exc}", file=sys.stderr)
                    return 2
            trio.run(_run_mock, host, port, fault)
            return 0
        flags = {
            "bind": args.bind,
            "openai_upstreams": tuple(args.upstream),
            "anthropic_upstreams": tuple(args.anthropic_upstream),
            "max_streams": args.max_streams,
            "idle_timeout": args.idle_timeout,
            "ttft_timeout": args.ttft_timeout,
            "workers": args.workers,
        }
        config = load_config(args.config, **flags)
        for spec in config.provider_specs:  # a missing credential stops start-up here
            read_credential(spec)
        check_hypercorn_version()
    except (ConfigError, UnsupportedHypercorn) as exc:
        print(f"trioproxy: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.log_level)
    # SIGHUP re-reads the same file with the same flags.
    reload = functools.partial(load_config, args.config, **flags) if args.config else None
    run_gateway(config, reload)
    return 0
