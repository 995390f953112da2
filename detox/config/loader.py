"""Load and validate the TOML configuration; every error names the file and the key.

The configuration is a leaf: nothing here imports the pipeline or the filters. What only they can
check — filter names and options, the order the filters need, the policy rules' actions — comes in
as the ``validate`` callback (:func:`detox.pipeline.registry.validate_config`, which
:func:`detox.pipeline.registry.load_validated_config` passes), run at the point where those checks
always ran, so the first problem reported stays the same one.
"""

from __future__ import annotations

import os
import string
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from detox.config.schema import DetoxConfig
from detox.errors import ConfigError


@dataclass(frozen=True, slots=True)
class DeliverTo:
    """A parsed ``--deliver-to`` URL: ``smtp://HOST:PORT`` or ``maildir:PATH``."""

    scheme: str  # "smtp" | "maildir"
    host: str = ""
    port: int = 0
    path: str = ""


def parse_listen(value: str, *, file: str = "--listen", key: str = "server.listen") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(file, key, f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_deliver_to(
    value: str, *, file: str = "--deliver-to", key: str = "delivery.deliver_to"
) -> DeliverTo:
    if value.startswith("maildir:"):
        path = value.removeprefix("maildir:").removeprefix("//")
        if not path:
            raise ConfigError(file, key, "maildir: needs a path, e.g. maildir:var/maildir")
        return DeliverTo("maildir", path=path)
    if value.startswith("smtp://"):
        host, port = parse_listen(value.removeprefix("smtp://").rstrip("/"), file=file, key=key)
        return DeliverTo("smtp", host=host, port=port)
    raise ConfigError(file, key, f"expected smtp://HOST:PORT or maildir:PATH, got {value!r}")


def _key_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


# Checks the caller owns (the pipeline's): raise ConfigError(file, key, problem) for the first problem.
Validator = Callable[[DetoxConfig, str], None]


def load_config(
    path: str | os.PathLike[str] | None, *, base_dir: str | None = None, validate: Validator | None = None
) -> DetoxConfig:
    """Read, validate and freeze the configuration. ``None`` means built-in defaults only.

    ``validate`` runs the checks that need the installed filters; without it they are not made
    (whoever builds a pipeline loads with :func:`detox.pipeline.registry.load_validated_config`).
    """
    file = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(file, "", "file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(file, "", f"not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(file, "", f"cannot read: {exc.strerror}") from None
    if "base_dir" in data:
        raise ConfigError(file, "base_dir", "unknown key")
    data["base_dir"] = base_dir if base_dir is not None else os.getcwd()
    try:
        config = DetoxConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _key_path(err["loc"])
        problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(file, key, problem) from None
    validate_semantics(config, file, validate)
    return config


# What build_dsn (detox.delivery.dsn) fills in ``delivery.bounce_text``; checked here, so that
# loading the configuration imports nothing of delivery.
BOUNCE_PLACEHOLDERS = frozenset({"hostname", "subject", "received_at", "queue_id", "recipients"})


def check_bounce_text(text: str) -> str | None:
    """A problem with a ``delivery.bounce_text`` template, or None."""
    template = string.Template(text)
    if not template.is_valid():
        return "invalid placeholder (a lone $; write $$ for a dollar sign)"
    unknown = sorted(set(template.get_identifiers()) - BOUNCE_PLACEHOLDERS)
    if unknown:
        return f"unknown placeholder ${unknown[0]} (known: {', '.join(sorted(BOUNCE_PLACEHOLDERS))})"
    return None


def validate_semantics(config: DetoxConfig, file: str, validate: Validator | None = None) -> None:
    """Checks that span keys: URLs parse, TLS files exist; the caller's ``validate`` in between."""
    parse_listen(config.server.listen, file=file)
    parse_deliver_to(config.delivery.deliver_to, file=file)
    if config.delivery.bounce_via:
        parse_deliver_to(config.delivery.bounce_via, file=file, key="delivery.bounce_via")
    if config.delivery.bounce_from and "@" not in config.delivery.bounce_from:
        raise ConfigError(file, "delivery.bounce_from", "expected an address like MAILER-DAEMON@host")
    problem = check_bounce_text(config.delivery.bounce_text)
    if problem:
        raise ConfigError(file, "delivery.bounce_text", problem)
    if validate is not None:
        validate(config, file)
    if config.server.require_tls and not config.server.tls_cert:
        raise ConfigError(file, "server.require_tls", "needs tls_cert and tls_key")
    if bool(config.server.tls_cert) != bool(config.server.tls_key):
        raise ConfigError(file, "server.tls_cert", "tls_cert and tls_key must be set together")
    for key in ("tls_cert", "tls_key"):
        value = getattr(config.server, key)
        if value and not Path(value).is_file():
            raise ConfigError(file, f"server.{key}", f"file not found: {value}")
