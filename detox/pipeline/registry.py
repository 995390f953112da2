"""Filter discovery: entry points in the ``detox.filters`` group, validated once at start-up."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType

from pydantic import ValidationError

from detox.config.schema import DetoxConfig
from detox.errors import ConfigError
from detox.filters.base import Filter

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
        found[ep.name] = cls
    return MappingProxyType(found)


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
