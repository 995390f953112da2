"""What every ``detox`` command shares: the exit codes, where the configuration comes from, logging,
and the argument types more than one command group parses.

Nothing here imports a command module: the groups import this, and :mod:`detox.cli` assembles them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import date, datetime, time, timedelta
from enum import IntEnum
from pathlib import Path

from detox.config.schema import DetoxConfig
from detox.pipeline.registry import load_validated_config

DEFAULT_CONFIG = "/etc/detox/detox.toml"


class ExitCode(IntEnum):
    """The exit status of every ``detox`` command (scripts and monitoring depend on these numbers).

    Errors raised as :class:`detox.errors.DetoxError` subclasses become codes in :func:`detox.cli.main`:
    ConfigError and RefusedError → USAGE, NotFoundError → NOT_FOUND, any other → INTERNAL.
    """

    OK = 0
    INTERNAL = 1  # an internal error; also a check that failed (audit verify: the chain is broken)
    USAGE = 2  # a usage or configuration error, or an operation refused by a rule
    NOT_FOUND = 3  # the named message, part or log does not exist


def config_path(value: str | None) -> str | None:
    """--config, else $DETOX_CONFIG, else /etc/detox/detox.toml if present, else built-in defaults."""
    if value:
        return value
    if os.environ.get("DETOX_CONFIG"):
        return os.environ["DETOX_CONFIG"]
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def setup_logging(config: DetoxConfig) -> None:
    logging.basicConfig(
        level=config.logging.level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every connection at INFO; that belongs to debugging, not to operations.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger().level))


def common_parser() -> argparse.ArgumentParser:
    """The parent of the admin commands: ``--config``, and ``args.load_config`` to read it."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML file (default: $DETOX_CONFIG or /etc/detox/detox.toml)")
    common.set_defaults(load_config=lambda path: load_validated_config(config_path(path)))
    return common


def write_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


# -- argument types -------------------------------------------------------------------------------


def parse_when(value: str, *, end_of_day: bool = False) -> datetime:
    """``YYYY-MM-DD`` (local midnight; the next midnight with ``end_of_day``) or an ISO datetime.

    A datetime without a zone is local time, as an admin in Japan means it.
    """
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime.combine(day + timedelta(days=1) if end_of_day else day, time())
            return start.astimezone()
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected YYYY-MM-DD or an ISO date-time like 2026-11-25T09:00, got {value!r}"
        ) from None
    return when if when.tzinfo is not None else when.astimezone()


# argparse names a type function in its message when it raises ValueError (e.g. "invalid _day_or_time
# value: '0001-01-01T00:00'"): these names are part of the output and stay as they are.


def _day_or_time(value: str) -> datetime:
    return parse_when(value)


def _day_end_or_time(value: str) -> datetime:
    return parse_when(value, end_of_day=True)


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number
