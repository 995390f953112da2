"""Typed, frozen configuration: the schema (the only place defaults live) and the TOML loader."""

from detox.config.loader import load_config, parse_deliver_to, parse_listen
from detox.config.schema import DetoxConfig

__all__ = ["DetoxConfig", "load_config", "parse_deliver_to", "parse_listen"]
