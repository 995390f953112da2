"""The ``detox`` command: serve, scan, check-config, filters, quarantine, audit, queue, reload.

Exit codes: 0 success; 1 internal error (and ``audit verify``: the chain is broken); 2 usage or
configuration error, or an operation refused by a rule; 3 the named message, part or log does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from detox import __version__
from detox.cli_admin import register, scan_summary
from detox.cli_queue import register as register_queue
from detox.config.loader import load_config, parse_deliver_to, parse_listen
from detox.config.schema import DetoxConfig
from detox.errors import ConfigError, DetoxError, NotFoundError, RefusedError
from detox.scan import is_multi, scan_envelope

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
DEFAULT_CONFIG = "/etc/detox/detox.toml"

log = logging.getLogger("detox")


def _config_path(value: str | None) -> str | None:
    """--config, else $DETOX_CONFIG, else /etc/detox/detox.toml if present, else built-in defaults."""
    if value:
        return value
    if os.environ.get("DETOX_CONFIG"):
        return os.environ["DETOX_CONFIG"]
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def _setup_logging(config: DetoxConfig) -> None:
    logging.basicConfig(
        level=config.logging.level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every connection at INFO; that belongs to debugging, not to operations.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger().level))


# -- serve ----------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    config_path = _config_path(args.config)
    config = load_config(config_path)
    listen = parse_listen(
        args.listen or config.server.listen, file="--listen" if args.listen else "config", key="server.listen"
    )
    deliver_to = parse_deliver_to(
        args.deliver_to or config.delivery.deliver_to, file="--deliver-to" if args.deliver_to else "config"
    )
    _setup_logging(config)
    from detox.service import Service

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = Service(
            config, listen, deliver_to, config_path=config_path, deliver_to_fixed=bool(args.deliver_to)
        )
        reloads: set[asyncio.Task[tuple[bool, str]]] = set()

        def reload() -> None:
            task = loop.create_task(service.reload("SIGHUP"))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        await service.run(stop)

    import uvloop

    uvloop.run(main())
    return EXIT_OK


# -- scan -----------------------------------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args.config))
    _setup_logging(config)
    source = Path(args.input)
    if args.input != "-" and not source.exists():
        print(f"detox scan: {args.input}: no such file or directory", file=sys.stderr)
        return EXIT_USAGE
    if args.summary:
        if args.input == "-":
            print("detox scan: --summary needs a file, directory, mbox or Maildir", file=sys.stderr)
            return EXIT_USAGE
        return scan_summary(config, source, args.jobs, args.report)
    if is_multi(source):
        print(f"detox scan: {args.input} holds many messages: add --summary", file=sys.stderr)
        return EXIT_USAGE
    try:
        raw = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
    except OSError as exc:
        print(f"detox scan: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    from detox.pipeline.runner import Pipeline

    result = Pipeline(config).run(raw, scan_envelope(raw, args.mail_from, args.rcpt or ()))
    # The relay writes Maildir files with LF line endings; scan prints the same form.
    output = result.output.replace(b"\r\n", b"\n")
    if args.output and args.output != "-":
        Path(args.output).write_bytes(output)
    else:
        sys.stdout.buffer.write(output)
        sys.stdout.buffer.flush()
    if args.report:
        report = json.dumps(result.report, ensure_ascii=False, indent=2) + "\n"
        if args.report == "-":
            sys.stderr.write(report)
        else:
            Path(args.report).write_text(report, encoding="utf-8")
    return EXIT_OK


# -- check-config / filters -------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.file and args.config and args.file != args.config:
        print("detox check-config: give the file once (FILE or --config FILE)", file=sys.stderr)
        return EXIT_USAGE
    path = args.file or _config_path(args.config)
    config = load_config(path)
    print(f"{path or '<built-in defaults>'}: OK (pipeline: {', '.join(config.pipeline.order)})")
    if args.no_sandbox:
        return EXIT_OK
    # A valid file with a sandbox that cannot start would hold every converted attachment as
    # filter-error at run time: try it now, the way the filters will use it.
    problem = _probe_sandbox(config)
    if problem and config.sandbox.provider == "subprocess" and config.sandbox.allow_unsandboxed:
        print(f"sandbox (subprocess): WARNING: {problem}; development only", file=sys.stderr)
        return EXIT_OK
    if problem:
        print(f"sandbox ({config.sandbox.provider}): FAILED: {problem}", file=sys.stderr)
        return EXIT_INTERNAL
    print(f"sandbox ({config.sandbox.provider}): OK (converters run, no network inside)")
    return EXIT_OK


def _probe_sandbox(config: DetoxConfig) -> str | None:
    from detox.errors import SandboxError
    from detox.sandbox import make_sandbox
    from detox.sandbox.base import Limits

    limits = Limits(timeout_s=30, cpu_s=30)
    # A listener of ours on the host's loopback: inside a private network namespace it is not there.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        try:
            sandbox = make_sandbox(config)
            if sandbox.run("selftest", b"probe", {"op": "echo"}, limits) != b"probe":
                return "the probe converter's output came back changed"
            net = sandbox.run("selftest", b"", {"op": "net", "host": "127.0.0.1", "port": port}, limits)
        except SandboxError as exc:
            return str(exc)
    if not net.startswith(b"blocked"):
        return "the host's network is reachable from inside the sandbox (no isolation)"
    return None


def cmd_filters(args: argparse.Namespace) -> int:
    from detox.pipeline.registry import available_filters

    config = load_config(_config_path(args.config))
    order = list(config.pipeline.order)
    for name, cls in sorted(available_filters().items()):
        position = f"#{order.index(name) + 1}" if name in order else "unused"
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:18} {position:7} {doc}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detox", description="Mail 無害化 gateway (Internet → LGWAN).")
    parser.add_argument("--version", action="version", version=f"detox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the SMTP relay")
    serve.add_argument("--config", help="TOML file (default: $DETOX_CONFIG or /etc/detox/detox.toml)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides server.listen)")
    serve.add_argument(
        "--deliver-to", help="smtp://HOST:PORT or maildir:PATH (overrides delivery.deliver_to)"
    )
    serve.set_defaults(func=cmd_serve)

    scan = sub.add_parser(
        "scan", help="detoxify one message offline, or (--summary) dry-run a directory, mbox or Maildir"
    )
    scan.add_argument(
        "input", help="message file or - (stdin); with --summary also a directory, mbox, Maildir"
    )
    scan.add_argument("--config")
    scan.add_argument("--output", help="where to write the detoxified message (default: stdout)")
    scan.add_argument("--report", help="write the JSON report of every decision here (- = stderr)")
    scan.add_argument("--mail-from", help="envelope sender (default: from the headers)")
    scan.add_argument("--rcpt", action="append", help="envelope recipient (repeatable)")
    scan.add_argument(
        "--summary",
        action="store_true",
        help="print what the policy would do to each message (delivers nothing)",
    )
    scan.add_argument("--jobs", type=int, default=1, help="with --summary: processes to use (default 1)")
    scan.set_defaults(func=cmd_scan)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", nargs="?")
    # Like every other command: `detox check-config --config F` is what an admin types after `serve`.
    check.add_argument("--config", help="the same as FILE")
    check.add_argument(
        "--no-sandbox", action="store_true", help="only validate the file; do not try the sandbox"
    )
    check.set_defaults(func=cmd_check_config)

    filters = sub.add_parser("filters", help="list installed filters and the pipeline order")
    filters.add_argument("--config")
    filters.set_defaults(func=cmd_filters)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML file (default: $DETOX_CONFIG or /etc/detox/detox.toml)")
    common.set_defaults(load_config=lambda path: load_config(_config_path(path)))
    register(sub, common)
    register_queue(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"detox: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RefusedError as exc:
        print(f"detox: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotFoundError as exc:
        print(f"detox: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except DetoxError as exc:
        print(f"detox: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception:
        logging.getLogger("detox").exception("internal error")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
