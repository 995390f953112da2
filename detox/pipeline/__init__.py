"""The detox pipeline: walk the MIME tree, run filters in the configured order, compose the result.

``from detox.pipeline import Pipeline`` is the entry point. It is imported on first use: the filters
import :mod:`detox.pipeline.model` (and so this package) while the runner imports the filters' base,
so an eager import here would be a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detox.pipeline.report import MessageReport, PartReport
    from detox.pipeline.runner import DetoxResult, Pipeline

__all__ = ["DetoxResult", "MessageReport", "PartReport", "Pipeline"]
_WHERE = {
    "DetoxResult": "detox.pipeline.runner",
    "Pipeline": "detox.pipeline.runner",
    "MessageReport": "detox.pipeline.report",
    "PartReport": "detox.pipeline.report",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
