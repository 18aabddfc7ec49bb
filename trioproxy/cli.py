"""Command line: ``trioproxy serve``, ``chaos``, ``verify``, ``keys``, ``mock-upstream``.

All user-facing output of the package goes through here (and logging). A
start-up mistake is one line on stderr and a non-zero exit, never a traceback
(``serve --debug`` shows it): exit 2 for a bad command line or config, 1 for a
gateway that cannot start (port busy, permission denied, an unusable signing
key). The grammar is :mod:`trioproxy.cli_args`.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import random
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .testing.mock_scripts import Fault
from .cli_args import build_parser
from .config import ConfigFile, load_config, parse_bind
from .errors import ConfigError
from .observe.logs import setup_logging
from .receipts.service import KeyError_, Signer, signing_key_path
from .routing.providers import read_credential
from .server.hypercorn import UnsupportedHypercorn, check_hypercorn_version
from .server.serve import StartupError, run_gateway

__all__ = ["main"]


async def _run_mock(host: str, port: int, fault: Fault, backup: bool = False) -> None:
    from .testing.mock_upstream import serve_mock

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            mock = await nursery.start(
                functools.partial(serve_mock, backup=backup), host, port, fault
            )
            print(f"trioproxy mock upstream on {mock.base_url} "
                  f"(OpenAI base {mock.base_url}/v1)", flush=True)  # fmt: skip
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _chaos(args: argparse.Namespace) -> int:
    from .testing.chaos.campaign import CampaignError, run_campaign, write_report
    from .testing.chaos.report import format_report

    if args.routing:
        return _chaos_routing(args)
    args.runs = 300 if args.runs is None else args.runs
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"chaos: seed {seed} (replay with --seed {seed})", file=sys.stderr, flush=True)

    started = time.monotonic()
    failures = [0]
    tty = sys.stderr.isatty()

    def progress(done: int, total: int, failed: int) -> None:
        """A bar on a terminal; otherwise a line every tenth of the campaign."""
        failures[0] += failed
        step = max(1, total // 10)
        if not (done == total or (tty and done % 5 == 0) or (not tty and done % step == 0)):
            return
        bar = "#" * (20 * done // total)
        line = (
            f"[{bar:<20}] {done}/{total} runs, {failures[0]} client errors so far, "
            f"{time.monotonic() - started:.0f} s"
        )
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    if args.target or args.mock:
        return _chaos_target(args, seed, progress)
    try:
        report = trio.run(
            functools.partial(
                run_campaign, args.gateway, args.runs, args.concurrency, seed, progress,
                args.providers, args.redis, args.drain, cancel_p99_ms=args.cancel_p99_ms,
                translate=args.translate,
            )
        )  # fmt: skip
    except CampaignError as exc:
        print(f"\ntrioproxy chaos: {exc}", file=sys.stderr)
        return 2
    if tty:
        print(file=sys.stderr)
    print(format_report(report))
    if args.report:
        write_report(report, args.report)
    return 0 if report["passed"] else 1


def _chaos_routing(args: argparse.Namespace) -> int:
    from .testing.chaos.routing import format_routing_report, run_routing

    if args.target and not args.mock:
        print("trioproxy chaos --routing: --target needs --mock", file=sys.stderr)
        return 2
    runs = 3 if args.runs is None else args.runs

    def progress(line: str) -> None:
        print(f"chaos --routing: {line}", file=sys.stderr, flush=True)

    report = trio.run(
        functools.partial(
            run_routing, args.target, args.mock, args.backup_mock, runs, progress=progress
        )
    )
    text = format_routing_report(report)
    print(text)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text + "\n")
    return 1 if report["fail"] else 0


def _trace(args: argparse.Namespace) -> int:
    """``trioproxy trace``: one request's timeline as a table with deltas."""
    import httpx

    headers = {"authorization": f"Bearer {args.key}"} if args.key else {}
    url = f"{args.gateway.rstrip('/')}/debug/trace/{args.request_id}"
    try:
        response = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"trioproxy trace: cannot reach {args.gateway}: {exc}", file=sys.stderr)
        return 2
    if response.status_code != 200:
        reason = {404: "unknown request id, or debug_endpoints is off", 401: "needs --key",
                  403: "needs an admin key"}.get(response.status_code, response.text[:200])  # fmt: skip
        print(f"trioproxy trace: {response.status_code}: {reason}", file=sys.stderr)
        return 1
    trace = response.json()
    state = "in flight" if trace["live"] else f"outcome {trace['outcome']}"
    print(f"request {trace['request_id']} ({state})")
    print(f"{'ms':>10} {'+ms':>9}  event")
    previous = 0.0
    for event, at in trace["timeline"]:
        print(f"{at:>10.3f} {at - previous:>+9.3f}  {event}")
        previous = at
    return 0


def _chaos_target(args: argparse.Namespace, seed: int, progress: Any) -> int:
    from .testing.chaos.plan import Limits
    from .testing.chaos.target import TargetError, format_target_report, run_target_campaign

    if not (args.target and args.mock) or args.gateway:
        print(
            "trioproxy chaos: --target and --mock go together, without --gateway", file=sys.stderr
        )
        return 2
    try:
        values = [float(v) for v in args.target_timeouts.split(",")]
        idle, ttft, stall = values[:3]
        hang = values[3] if len(values) == 4 else 30.0
        if len(values) > 4:
            raise ValueError
    except ValueError:
        print(
            "trioproxy chaos: --target-timeouts is IDLE,TTFT,STALL[,HANG] seconds", file=sys.stderr
        )
        return 2
    limits = Limits(ttft, idle, stall, hang_bound=hang)
    try:
        report = trio.run(
            functools.partial(
                run_target_campaign, args.target, args.mock, args.runs, args.concurrency, seed,
                limits, anthropic=args.anthropic, target_pid=args.target_pid, progress=progress,
                cancel_p99_ms=args.cancel_p99_ms,
            )
        )  # fmt: skip
    except TargetError as exc:
        print(f"\ntrioproxy chaos: {exc}", file=sys.stderr)
        return 2
    if sys.stderr.isatty():
        print(file=sys.stderr)
    text = format_target_report(report)
    print(text)
    if args.report:
        from .testing.chaos.campaign import write_report

        write_report(report, args.report)
        pathlib.Path(args.report).with_suffix(".md").write_text(text + "\n")
    return 0 if report["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "chaos":
            return _chaos(args)
        if args.command == "trace":
            return _trace(args)
        if args.command == "keys":
            from .admission.auth import new_key

            key, block = new_key(args.name or f"key-{secrets.token_hex(3)}")
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
            setup_logging("info")
            fault = Fault(tokens=args.tokens, itl_ms=args.itl_ms, ttft_ms=args.ttft_ms)
            if args.shape:
                try:
                    fault = parse_fault(f"mock-shape-{args.shape}", fault)
                except FaultSpecError as exc:
                    print(f"trioproxy: {exc}", file=sys.stderr)
                    return 2
            if args.fault:
                try:
                    fault = parse_fault("mock-" + args.fault, fault)
                except FaultSpecError as exc:
                    print(f"trioproxy: {exc}", file=sys.stderr)
                    return 2
            trio.run(_run_mock, host, port, fault, args.backup)
            return 0
        flags = {
            "bind": args.bind,
            "openai_upstreams": tuple(args.upstream),
            "anthropic_upstreams": tuple(args.anthropic_upstream),
            "max_streams": args.max_streams,
            "idle_timeout": args.idle_timeout,
            "ttft_timeout": args.ttft_timeout,
            "workers": args.workers,
            "allow_open_public": args.allow_open_public,
        }
        config = load_config(args.config, **flags)
        for spec in config.provider_specs:  # a missing credential stops start-up here
            read_credential(spec)
        check_hypercorn_version()
        if config.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            try:
                import opentelemetry.exporter.otlp.proto.http
                import opentelemetry.sdk  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "otlp_endpoint needs OpenTelemetry: pip install 'trioproxy[otel]'"
                ) from None
    except (ConfigError, UnsupportedHypercorn) as exc:
        print(f"trioproxy: {exc}", file=sys.stderr)
        return 2
    if config.receipts:  # an unusable signing key is one line, before anything starts
        try:
            Signer.load_or_create(signing_key_path(config))
        except KeyError_ as exc:
            print(f"trioproxy: cannot start: {exc}", file=sys.stderr)
            return 1
    setup_logging(config.log_level)
    # SIGHUP re-reads the same file with the same flags.
    reload = ConfigFile(args.config, flags) if args.config else None
    try:
        run_gateway(config, reload)
    except StartupError as exc:
        if args.debug:
            raise
        print(f"trioproxy: {exc}", file=sys.stderr)
        return 1
    return 0
