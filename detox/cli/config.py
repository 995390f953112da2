"""``detox check-config`` and ``detox filters``: is this configuration valid, and what will run.

``check-config`` also starts the sandbox the way the filters will use it, so a file that loads but a
sandbox that cannot start is found before serve holds every converted attachment as filter-error.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from detox.cli.common import ExitCode, config_path
from detox.config.schema import DetoxConfig
from detox.pipeline.registry import load_validated_config


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``check-config`` and ``filters`` (each with its own ``--config``) to the ``detox`` parser."""
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


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.file and args.config and args.file != args.config:
        print("detox check-config: give the file once (FILE or --config FILE)", file=sys.stderr)
        return ExitCode.USAGE
    path = args.file or config_path(args.config)
    config = load_validated_config(path)
    print(f"{path or '<built-in defaults>'}: OK (pipeline: {', '.join(config.pipeline.order)})")
    if args.no_sandbox:
        return ExitCode.OK
    # A valid file with a sandbox that cannot start would hold every converted attachment as
    # filter-error at run time: try it now, the way the filters will use it.
    problem = _probe_sandbox(config)
    if problem and config.sandbox.provider == "subprocess" and config.sandbox.allow_unsandboxed:
        print(f"sandbox (subprocess): WARNING: {problem}; development only", file=sys.stderr)
        return ExitCode.OK
    if problem:
        print(f"sandbox ({config.sandbox.provider}): FAILED: {problem}", file=sys.stderr)
        return ExitCode.INTERNAL
    print(f"sandbox ({config.sandbox.provider}): OK (converters run, no network inside)")
    return ExitCode.OK


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

    config = load_validated_config(config_path(args.config))
    order = list(config.pipeline.order)
    for name, cls in sorted(available_filters().items()):
        position = f"#{order.index(name) + 1}" if name in order else "unused"
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:18} {position:7} {doc}")
    return ExitCode.OK
