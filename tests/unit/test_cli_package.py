"""The CLI package's walls, read from the source: nothing imports it, and one enum holds the exit codes."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import detox.cli
from detox.cli import ExitCode, build_parser, main

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "detox" / "cli"
# The command itself: `python -m detox` runs the CLI, it is not a library that uses it.
ENTRY_MODULES = {REPO / "detox" / "__main__.py"}


def python_files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        yield from sorted(root.rglob("*.py"))


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import in the file, function-level imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from detox import cli`
                yield node.lineno, f"{node.module}.{alias.name}"


def test_nothing_imports_the_cli() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in python_files(REPO / "detox", REPO / "bench")
        if not path.is_relative_to(CLI)
        and path not in ENTRY_MODULES
        and "cli" in path.read_text(encoding="utf-8")  # any import of it names it: parse only those
        for line, name in imported_modules(path)
        if name == "detox.cli" or name.startswith("detox.cli.")
    ]
    assert not offenders, "the CLI is a client of the library, never a part of it:\n" + "\n".join(offenders)


def test_the_scan_checks_every_import_form(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import detox.cli.queue\nfrom detox import cli\ndef f():\n    from detox.cli.common import ExitCode\n"
    )
    names = {name for _, name in imported_modules(source)}
    assert {"detox.cli.queue", "detox.cli", "detox.cli.common"} <= names


def test_one_exit_code_enum() -> None:
    """No command module defines its own EXIT_* numbers again or returns a bare number.

    (The sandbox's child process has exit codes of its own: a protocol with its host, not the command's.)
    """
    assert {code.name: int(code) for code in ExitCode} == {"OK": 0, "INTERNAL": 1, "USAGE": 2, "NOT_FOUND": 3}
    again = []
    for path in python_files(CLI):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.startswith("EXIT_") for t in node.targets
            ):
                again.append(where)
            elif isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_"):
                again += [
                    f"{where}: return … {c.value} …"
                    for r in ast.walk(node)
                    if isinstance(r, ast.Return) and r.value is not None
                    for c in ast.walk(r.value)
                    if isinstance(c, ast.Constant) and type(c.value) is int
                ]
    assert not again, again


def test_every_command_group_is_a_module_of_the_package() -> None:
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    commands = list(sub.choices)  # type: ignore[union-attr]
    assert commands == ["serve", "scan", "check-config", "filters", "quarantine", "audit", "queue", "reload"]
    for group in detox.cli.GROUPS:
        assert Path(group.__file__ or "").parent == CLI, group


def test_the_console_script_is_main() -> None:
    [script] = [ep for ep in entry_points(group="console_scripts") if ep.name == "detox"]
    assert script.value == "detox.cli:main"
    assert script.load() is main


def test_usage_errors_exit_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == ExitCode.USAGE
    assert "invalid choice" in capsys.readouterr().err
