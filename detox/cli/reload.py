"""``detox reload``: make the running serve re-read and apply its configuration, and print its answer.

Like the queue commands it leaves a request in ``spool/control/``; serve answers in a result file, which
this waits for. A stopped serve is not asked: it reads its configuration when it starts.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from detox.cli.common import ExitCode
from detox.cli.queue import open_spool


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``reload`` to the ``detox`` parser."""
    p = sub.add_parser(
        "reload", parents=[common], help="make the running serve re-read and apply its configuration"
    )
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for serve's answer")
    p.set_defaults(func=cmd_reload)


def cmd_reload(args: argparse.Namespace) -> int:
    # Validate first: an invalid file is reported here, and serve is not even asked.
    args.load_config(args.config)
    spool = open_spool(args)
    pid = spool.serve_pid()
    if pid is None:
        print("detox reload: detox serve is not running (it reads its configuration when it starts)")
        return ExitCode.INTERNAL
    spool.clear_result("reload")
    asked = time.time()
    spool.request("reload")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        result = spool.read_result("reload")
        if result is not None and float(result.get("at", 0)) >= asked - 1:
            print(f"detox serve (pid {pid}): {result.get('message')}")
            # Serve refused the new configuration (it keeps running on the old one): as check-config.
            return ExitCode.OK if result.get("ok") else ExitCode.USAGE
        time.sleep(0.1)
    print(f"detox reload: no answer from serve (pid {pid}) within {args.timeout:g}s", file=sys.stderr)
    return ExitCode.INTERNAL
