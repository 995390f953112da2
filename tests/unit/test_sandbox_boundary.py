"""The sandbox wall as a package boundary, read from the imports and from the processes themselves.

* The inside (``detox.sandbox.inside``) imports nothing of the host: checked statically over every import
  statement (function-level ones too) and at run time in a fresh interpreter, in the real converter child
  and in the real zygote (one-shot and resident, bubblewrap and subprocess).
* The host reaches the inside only through ``detox.sandbox.contract``, which is a leaf.
* ``detox.sandbox`` has no import cycle.
* The child finds converters only among the built-in ones and the ``detox.converters`` entry points, and
  never imports a module of detox outside the inside package through an entry point.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_sandbox import LIMITS, require_bwrap

import detox
from detox.sandbox import contract
from detox.sandbox.base import Sandbox
from detox.sandbox.bwrap import BwrapSandbox, plugin_converter_paths
from detox.sandbox.inside import converters
from detox.sandbox.inside.converters import office as office_converter
from detox.sandbox.process import SubprocessSandbox

PACKAGE = Path(detox.__file__).parent
INSIDE = "detox.sandbox.inside"
# What the inside may load of detox: the package roots on the way (import-light, checked below), the
# contract (a leaf) and itself.
ALLOWED_FROM_DETOX = {"detox", "detox.sandbox", "detox.sandbox.contract"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(under: Path) -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(under.rglob("*.py"))}


def _imports(path: Path, *, on_import: bool = False) -> set[str]:
    """Every module an import statement in ``path`` names (``from a import b`` names a and a.b).

    ``on_import``: only the statements that run when the module is imported (not those in functions,
    nor under ``if TYPE_CHECKING:``).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    if on_import:
        for node in ast.walk(tree):
            deferred = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            typing_only = isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
            if deferred or typing_only:
                skip |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _detox_modules(names: set[str]) -> set[str]:
    """The names that are modules or packages of detox (``from detox.x import name`` also names x.name)."""
    known = set(_modules(PACKAGE)) | {"detox"}
    return {name for name in names if name in known}


INSIDE_MODULES = _modules(PACKAGE / "sandbox" / "inside")


# --- the inside imports nothing of the host ------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(INSIDE_MODULES))
def test_the_inside_imports_nothing_of_the_host(module: str) -> None:
    reached = _detox_modules(_imports(INSIDE_MODULES[module]))
    outside = {name for name in reached if not name.startswith(INSIDE) and name not in ALLOWED_FROM_DETOX}
    assert not outside, f"{module} imports host modules {sorted(outside)}"


def test_the_contract_is_a_leaf() -> None:
    """The contract imports the standard library and the framing only, so the inside may import it."""
    reached = _detox_modules(_imports(PACKAGE / "sandbox" / "contract.py"))
    assert reached <= {"detox.sandbox.inside", "detox.sandbox.inside.wire"}, reached
    # The framing itself imports nothing of detox at all (the LibreOffice host loads it by path).
    assert not _detox_modules(_imports(PACKAGE / "sandbox" / "inside" / "wire.py"))


@pytest.mark.parametrize("init", ["__init__.py", "sandbox/__init__.py"])
def test_package_roots_on_the_way_in_import_nothing(init: str) -> None:
    """Every converter run imports ``detox`` and ``detox.sandbox`` as parents: they must stay empty."""
    assert not _detox_modules(_imports(PACKAGE / init, on_import=True))


def test_a_fresh_interpreter_importing_the_inside_loads_nothing_of_the_host() -> None:
    names = [m for m in INSIDE_MODULES if not m.endswith(".office_host")]  # office_host: below
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'detox' or m.startswith('detox.'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, timeout=120, check=True, cwd="/"
    )
    loaded = set(json.loads(proc.stdout))
    assert set(names) <= loaded
    assert {m for m in loaded if not m.startswith(INSIDE)} <= ALLOWED_FROM_DETOX


@pytest.fixture(params=["subprocess", "subprocess-resident", "bwrap", "bwrap-resident"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    provider, _, resident = request.param.partition("-")
    made: SubprocessSandbox | BwrapSandbox
    if provider == "bwrap":
        require_bwrap()
        made = BwrapSandbox(resident=bool(resident))
    else:
        made = SubprocessSandbox(allowed=True, resident=bool(resident))
    try:
        yield made
    finally:
        made.close()


def test_the_real_child_loads_nothing_of_the_host(sandbox: Sandbox) -> None:
    """In the child as it runs (resident: forked from a zygote that preloaded every converter)."""
    loaded = set(json.loads(sandbox.run("selftest", b"", {"op": "modules"}, LIMITS)))
    ours = {m for m in loaded if m == "detox" or m.startswith("detox.")}
    assert f"{INSIDE}.converters.selftest" in ours and f"{INSIDE}.wire" in ours
    assert {m for m in ours if not m.startswith(INSIDE)} <= ALLOWED_FROM_DETOX, sorted(ours)
    if getattr(sandbox, "resident", False):  # the zygote (__main__) imported the child and every converter
        assert f"{INSIDE}.child" in ours and f"{INSIDE}.converters.office.disarm" in ours


def test_the_office_host_runs_as_a_script_without_detox(tmp_path: Path) -> None:
    """Run as the system Python runs it (``-I``, no detox on its path): the framing comes by path."""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = [{contract.OFFICE_HOST_SCRIPT!r}]\n"
        "try:\n"
        f"    runpy.run_path({contract.OFFICE_HOST_SCRIPT!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps([code, sorted(m for m in sys.modules if m.startswith('detox'))]))\n"
    )
    proc = subprocess.run([python, "-I", "-B", "-c", code], capture_output=True, timeout=60, check=True)
    code, loaded = json.loads(proc.stdout)
    assert code == 2 and b"usage: office_host.py" in proc.stderr  # got as far as its argument check
    assert not [m for m in loaded if m == "detox" or m.startswith("detox.")], loaded


# --- the host reaches the inside only through the contract ---------------------------------------------


def test_the_host_imports_the_inside_only_through_the_contract() -> None:
    for module, path in _modules(PACKAGE).items():
        if module.startswith(INSIDE) or module == "detox.sandbox.contract":
            continue
        reached = {n for n in _imports(path) if n == INSIDE or n.startswith(INSIDE + ".")}
        assert not reached, f"{module} imports {sorted(reached)}: use detox.sandbox.contract"
    assert not (PACKAGE / "converters").exists(), "converters live in detox/sandbox/inside/converters"


def test_filters_take_their_converter_constants_from_the_contract() -> None:
    for path in sorted((PACKAGE / "filters").glob("*.py")):
        reached = _detox_modules(_imports(path))
        assert not {n for n in reached if n.startswith(INSIDE)}, path.name


def test_the_converters_read_the_contracts_tables() -> None:
    """One table for both sides: the converters' own names are the contract's objects."""
    from detox.sandbox.inside.converters import archive, image, pdf

    assert office_converter.HELD_REASONS is contract.OFFICE_HELD_REASONS
    assert office_converter.OUTPUT_TYPES is contract.OFFICE_OUTPUT_TYPES
    derived = {mime: ext for _, mime, ext in office_converter.MAIN_TYPES.values()}
    assert derived == dict(contract.OFFICE_OUTPUT_TYPES)
    assert pdf.HELD_REASONS is contract.PDF_HELD_REASONS and pdf.DEFAULTS is contract.PDF_DEFAULTS
    assert archive.HELD_REASONS is contract.ARCHIVE_HELD_REASONS
    assert archive.FORMATS is contract.ARCHIVE_FORMATS
    assert archive.REFUSED_KINDS is contract.ARCHIVE_REFUSED_KINDS
    assert image.OUTPUT_TYPES is contract.IMAGE_OUTPUT_TYPES and image.RSVG_PATH == contract.RSVG_PATH
    for name, spec in contract.CONVERTERS.items():
        assert spec.name == name and name in contract.BUILTIN_CONVERTERS
    assert set(contract.CONVERTERS) == set(contract.BUILTIN_CONVERTERS)


def test_entry_module_names_are_the_inside_modules() -> None:
    for name in (contract.CHILD_MODULE, contract.ZYGOTE_MODULE):
        assert name in INSIDE_MODULES
    assert Path(contract.OFFICE_HOST_SCRIPT) == INSIDE_MODULES[f"{INSIDE}.office_host"]


# --- no import cycle ---------------------------------------------------------------------------------


def test_detox_sandbox_has_no_import_cycle() -> None:
    modules = _modules(PACKAGE / "sandbox")
    graph = {
        m: {n for n in _detox_modules(_imports(p)) if n in modules and n != m} for m, p in modules.items()
    }
    # A package's __init__ is imported on the way to its modules, not because of them: no edge back.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):
                continue  # a module naming its own package (``from detox.sandbox import contract``)
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


# --- which converters the child may import ---------------------------------------------------------------


def test_the_entry_point_group_lists_the_built_in_converters() -> None:
    from importlib.metadata import entry_points

    found = {e.name: e.value for e in entry_points(group=contract.ENTRY_POINT_GROUP)}
    for name in contract.BUILTIN_CONVERTERS:
        assert found.get(name) == f"{INSIDE}.converters.{name}:main", "reinstall: pip install -e ."


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, list[str]]]:
    """Entry points of the ``detox.converters`` group as a test wants them; a plugin module on sys.path."""
    table: dict[str, list[str]] = {}

    def entry_points(*, group: str, name: str | None = None) -> list[Any]:
        assert group == contract.ENTRY_POINT_GROUP
        return [
            SimpleNamespace(name=n, value=v)
            for n, values in table.items()
            for v in values
            if name is None or n == name
        ]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr("detox.sandbox.bwrap.entry_points", entry_points)
    plugin = tmp_path / "detox_test_plugin"
    plugin.mkdir()
    (plugin / "__init__.py").write_text("")
    (plugin / "upper.py").write_text(
        "def main(data, args):\n    return data.upper()\n\ndef other(d, a):\n    return b'o'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield table
    for name in [m for m in sys.modules if m.startswith("detox_test_plugin")]:
        del sys.modules[name]


def test_a_plugin_converter_is_found_by_its_entry_point(registered: dict[str, list[str]]) -> None:
    registered["upper"] = ["detox_test_plugin.upper:main"]
    registered["other"] = ["detox_test_plugin.upper:other"]
    registered["whole"] = ["detox_test_plugin.upper"]
    assert converters.load("upper")(b"abc", {}) == b"ABC"
    assert converters.load("other")(b"abc", {}) == b"o"
    assert converters.load("whole")(b"abc", {}) == b"ABC"


def test_a_plugin_cannot_take_a_built_in_name(registered: dict[str, list[str]]) -> None:
    registered["selftest"] = ["detox_test_plugin.upper:main"]
    assert converters.load("selftest")(b"abc", {"op": "echo"}) == b"abc"


def test_an_entry_point_into_the_host_is_refused(registered: dict[str, list[str]]) -> None:
    for target in ("detox.pipeline.runner:main", "detox.cli:main", "detox:main", "detox.sandbox.contract"):
        registered["sneaky"] = [target]
        with pytest.raises(ImportError, match="outside the sandbox"):
            converters.load("sneaky")


def test_a_name_registered_twice_is_refused(registered: dict[str, list[str]]) -> None:
    registered["upper"] = ["detox_test_plugin.upper:main", "detox_test_plugin.upper:other"]
    with pytest.raises(ImportError, match="more than once"):
        converters.load("upper")


def test_an_unknown_converter_is_module_not_found(registered: dict[str, list[str]]) -> None:
    with pytest.raises(ModuleNotFoundError, match="no converter named 'nothing'"):
        converters.load("nothing")


def test_bwrap_shows_the_packages_of_plugin_converters(
    registered: dict[str, list[str]], tmp_path: Path
) -> None:
    registered["upper"] = ["detox_test_plugin.upper:main"]
    registered["pdf"] = ["detox_test_plugin.upper:main"]  # a built-in name adds nothing
    registered["inside"] = ["detox.sandbox.inside.converters.pdf:main"]  # detox is bound anyway
    assert plugin_converter_paths() == [str(tmp_path / "detox_test_plugin")]
    require_bwrap()
    sandbox = BwrapSandbox()
    assert str(tmp_path / "detox_test_plugin") in sandbox.bind_paths or any(
        str(tmp_path).startswith(p + os.sep) for p in sandbox.bind_paths
    )
