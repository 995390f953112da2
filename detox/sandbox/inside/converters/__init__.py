"""Converters: pure functions ``main(data: bytes, args: dict) -> bytes`` that run inside the sandbox.

Never imported by the server process: the host knows them only by name and through
:mod:`detox.sandbox.contract`. Each answers in the result framing of :mod:`detox.sandbox.inside.wire`.

A converter is found by name (:func:`load`, called by the child with a name already checked against
``[a-z][a-z_]*``):

* a built-in name (``contract.BUILTIN_CONVERTERS``) is a module of this package, imported directly;
* any other name is looked up in the ``detox.converters`` entry-point group, where a plugin package
  registers ``name = "package.module:main"`` (or ``"package.module"``, whose ``main`` is taken). A
  built-in name cannot be taken over by a plugin, and an entry point that names a module of detox outside
  :mod:`detox.sandbox.inside` is refused: the child imports converters and nothing else of detox.

A plugin converter runs under the same isolation as the built-in ones; its package must be importable
inside the sandbox (installed in the Python the server runs on: :mod:`detox.sandbox.bwrap` shows
site-packages and the directories of registered plugin packages read-only).
"""

from __future__ import annotations

import importlib

from detox.sandbox import contract

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_INSIDE = "detox.sandbox.inside"


def load(name: str) -> Callable[[bytes, dict[str, Any]], Any]:
    """The ``main`` of converter ``name``; ModuleNotFoundError when no converter has that name."""
    if name in contract.BUILTIN_CONVERTERS:
        return _main_of(importlib.import_module(f"{__name__}.{name}"), name)
    _add_plugin_roots()
    target = _registered(name)
    if target is None:
        raise ModuleNotFoundError(
            f"no converter named {name!r}: not built in, and no {contract.ENTRY_POINT_GROUP!r} entry point"
        )
    module_name, _, attr = target.partition(":")
    module_name = module_name.strip()
    if module_name == "detox" or (
        module_name.startswith("detox.") and not module_name.startswith(_INSIDE + ".")
    ):
        raise ImportError(
            f"converter {name!r}: entry point {target!r} names a module of detox outside the sandbox"
        )
    module = importlib.import_module(module_name)
    if not attr.strip():
        return _main_of(module, name)
    found: Any = module
    for part in attr.strip().split("."):
        found = getattr(found, part)
    if not callable(found):
        raise TypeError(f"converter {name!r}: {target!r} is not callable")
    return found  # type: ignore[no-any-return]


def _main_of(module: Any, name: str) -> Callable[[bytes, dict[str, Any]], Any]:
    main = getattr(module, "main", None)
    if not callable(main):
        raise TypeError(f"{module.__name__} has no main(data, args)")
    return main  # type: ignore[no-any-return]


def _add_plugin_roots() -> None:
    """The import roots of plugin converters the host handed over (``-I`` ignores PYTHONPATH), after
    everything else on sys.path, so a plugin can never shadow the standard library or detox."""
    import os
    import sys

    for root in os.environ.get(contract.CONVERTER_PATH_ENV, "").split(os.pathsep):
        if root and os.path.isabs(root) and root not in sys.path:
            sys.path.append(root)


def _registered(name: str) -> str | None:
    """The ``module:attr`` a plugin registered for ``name``; None when none did."""
    from importlib.metadata import entry_points  # only for a name that is not built in: it is slow

    targets = {str(entry.value) for entry in entry_points(group=contract.ENTRY_POINT_GROUP, name=name)}
    if len(targets) > 1:
        raise ImportError(f"converter {name!r} is registered more than once: {sorted(targets)}")
    return targets.pop() if targets else None
