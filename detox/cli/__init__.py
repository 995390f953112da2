"""The ``detox`` command: the parser assembled from one module per command group, and :func:`main`.

========================  ===================================================================
``serve``                 :mod:`detox.cli.serve` — the SMTP relay
``scan``                  :mod:`detox.cli.scan` — one message offline, or ``--summary`` dry-run
``check-config, filters`` :mod:`detox.cli.config`
``quarantine …``          :mod:`detox.cli.quarantine` — held originals, releases (例外措置)
``audit …``               :mod:`detox.cli.audit` — verify, tail, report (:mod:`detox.cli.audit_report`)
``queue …``               :mod:`detox.cli.queue` — what waits in the spool
``reload``                :mod:`detox.cli.reload` — the running serve re-reads its configuration
========================  ===================================================================

Exit codes are :class:`detox.cli.common.ExitCode`: 0 success; 1 internal error (and ``audit verify``:
the chain is broken); 2 usage or configuration error, or an operation refused by a rule; 3 the named
message, part or log does not exist. Nothing outside this package imports it: the commands are a client
of the library, never a part of it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from detox import __version__
from detox.cli import audit, config, quarantine, queue, reload, scan, serve
from detox.cli.common import ExitCode, common_parser
from detox.errors import ConfigError, DetoxError, NotFoundError, RefusedError

__all__ = ["ExitCode", "build_parser", "main"]

# In this order in `detox --help`.
GROUPS = (serve, scan, config, quarantine, audit, queue, reload)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detox", description="Mail 無害化 gateway (Internet → LGWAN).")
    parser.add_argument("--version", action="version", version=f"detox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = common_parser()
    for group in GROUPS:
        group.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return int(code)
    except ConfigError as exc:
        print(f"detox: configuration error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except RefusedError as exc:
        print(f"detox: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except NotFoundError as exc:
        print(f"detox: {exc}", file=sys.stderr)
        return ExitCode.NOT_FOUND
    except DetoxError as exc:
        print(f"detox: {exc}", file=sys.stderr)
        return ExitCode.INTERNAL
    except Exception:
        logging.getLogger("detox").exception("internal error")
        return ExitCode.INTERNAL
