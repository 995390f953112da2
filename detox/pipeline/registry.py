"""Filter discovery: entry points in the ``detox.filters`` group, validated once at start-up.

The configuration loader (:mod:`detox.config.loader`) knows nothing of filters: the names in
``pipeline.order`` and ``[filters.*]``, each filter's ``options``, the ordering constraints the
filters declare and the policy rules' actions are checked here, by :func:`validate_config`, which
the loader runs as its ``validate`` callback at the point where it used to check them itself (so the
first problem reported is the same one). Whoever builds a pipeline from a file loads it with
:func:`load_validated_config`: ``serve``, ``reload``, ``check-config``, ``scan`` and every other
command that reads the configuration.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType

from pydantic import ValidationError

from detox.config.loader import load_config
from detox.config.schema import DetoxConfig
from detox.errors import ConfigError
from detox.filters.base import Filter
from detox.pipeline.policy import Policy
from detox.pipeline.vocabulary import NOTES, REASONS

GROUP = "detox.filters"


@functools.cache
def available_filters() -> Mapping[str, type[Filter]]:
    """Every installed filter class by name. Names must be unique and match the class."""
    found: dict[str, type[Filter]] = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Filter)):
            raise ConfigError("<entry points>", f"{GROUP}.{ep.name}", "is not a detox Filter class")
        if cls.name != ep.name:
            raise ConfigError("<entry points>", f"{GROUP}.{ep.name}", f"class says its name is {cls.name!r}")
        if ep.name in found and found[ep.name] is not cls:
            raise ConfigError("<entry points>", f"{GROUP}.{ep.name}", "registered twice")
        _register_vocabulary(cls, f"{GROUP}.{ep.name}")
        found[ep.name] = cls
    return MappingProxyType(found)


def _register_vocabulary(cls: type[Filter], key: str) -> None:
    """The reasons and notes the filter declares join the pipeline's vocabulary under its name (a name
    detox already has keeps detox's meaning); a badly spelled one refuses the filter at start-up."""
    try:
        for reason in cls.reasons:
            REASONS.register(reason, owner=cls.name)
        for note in cls.notes:
            NOTES.register(note, owner=cls.name)
    except ValueError as exc:
        raise ConfigError("<entry points>", key, str(exc)) from None


def load_validated_config(path: str | os.PathLike[str] | None, *, base_dir: str | None = None) -> DetoxConfig:
    """:func:`detox.config.loader.load_config` with the pipeline's own checks (:func:`validate_config`)."""
    return load_config(path, base_dir=base_dir, validate=validate_config)


def validate_config(config: DetoxConfig, file: str) -> None:
    """The checks that need the installed filters; the first problem raises ConfigError(file, key, ...).

    Filter names in ``pipeline.order`` (installed, listed once), the order constraints the filters
    declare, ``[filters.NAME]`` sections and their options, and the policy rules' actions.
    """
    known = available_filters()
    order = config.pipeline.order
    seen: set[str] = set()
    for i, name in enumerate(order):
        if name not in known:
            raise ConfigError(
                file, f"pipeline.order[{i}]", f"unknown filter {name!r} (known: {sorted(known)})"
            )
        if name in seen:
            raise ConfigError(file, f"pipeline.order[{i}]", f"filter {name!r} listed twice")
        seen.add(name)
    check_order(order, known, file)
    for name, settings in config.filters.items():
        if name not in known:
            raise ConfigError(file, f"filters.{name}", f"unknown filter {name!r} (known: {sorted(known)})")
        try:
            known[name].Options.model_validate(settings.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            key = ".".join(str(p) for p in err["loc"])
            raise ConfigError(file, f"filters.{name}.options.{key}", problem) from None
    try:
        Policy(config, known)
    except ConfigError as exc:
        raise ConfigError(file, exc.key, exc.problem) from None


def check_order(order: tuple[str, ...], known: Mapping[str, type[Filter]], file: str) -> None:
    """Refuse an order that breaks a constraint a listed filter declares (``runs_before`` /
    ``runs_after``); a constraint naming a filter that is not listed does not apply."""
    position = {name: i for i, name in enumerate(order)}
    for i, name in enumerate(order):
        cls = known[name]
        for later in cls.runs_before:
            if position.get(later, len(order)) < i:
                raise ConfigError(
                    file,
                    f"pipeline.order[{i}]",
                    f"filter {name!r} must come before {later!r} (the {name} filter declares it)",
                )
        for earlier in cls.runs_after:
            if position.get(earlier, -1) > i:
                raise ConfigError(
                    file,
                    f"pipeline.order[{i}]",
                    f"filter {name!r} must come after {earlier!r} (the {name} filter declares it)",
                )


def build_pipeline(config: DetoxConfig) -> tuple[Filter, ...]:
    """Instantiate the enabled filters in ``pipeline.order`` with their validated options."""
    known = available_filters()
    filters: list[Filter] = []
    for name in config.pipeline.order:
        settings = config.filter_settings(name)
        if not settings.enabled:
            continue
        cls = known[name]
        try:
            options = cls.Options.model_validate(settings.options)
        except ValidationError as exc:  # already checked by the loader; kept for direct callers
            raise ConfigError("<config>", f"filters.{name}.options", str(exc)) from None
        filters.append(cls(options))
    return tuple(filters)
