"""Configurations for tests, configured by keywords: one section a keyword, as the TOML would have it.

    make_config(tmp_path, quarantine={"two_person_rule": True})   # a DetoxConfig with its state there
    make_config(delivery={"bounce_via": "smtp://127.0.0.1:25"})     # no state directory needed
    config_file(tmp_path)                                          # tmp_path/detox.toml for the CLI

A state directory always comes with ``fsync = false``: tests need not wait for the disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detox.config.schema import DetoxConfig

from .detox_proc import write_config

__all__ = ["config_file", "make_config"]


def _sections(state_dir: Path | str | None, sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    data = {name: dict(values) for name, values in sections.items()}
    if state_dir is not None:
        data["storage"] = {"state_dir": str(state_dir), "fsync": False, **data.get("storage", {})}
    return data


def make_config(state_dir: Path | str | None = None, **sections: dict[str, Any]) -> DetoxConfig:
    """A validated DetoxConfig: the defaults, these sections, and the state under ``state_dir``."""
    return DetoxConfig.model_validate(_sections(state_dir, sections))


def config_file(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    """``tmp_path/detox.toml`` with the state in ``tmp_path/var``, for commands given ``--config``."""
    return write_config(tmp_path / "detox.toml", _sections(tmp_path / "var", sections))
