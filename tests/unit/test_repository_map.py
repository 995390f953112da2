"""README's repository map matches the tree: every path it names exists, every module is named.

A newcomer finds each room by the map; a map that misses modules (as it once missed a dozen) or
names files that moved sends them to the wrong place. A module counts as named when its own path or
one of its folders (written with a trailing ``/``) starts a line of the map.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADING = "### Repository layout"


def map_paths() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(HEADING, 1)[1]
    block = section.split("```", 2)[1]
    paths = []
    for line in block.splitlines():
        match = re.match(r"([A-Za-z0-9_.][^\s,]*)", line)
        if match and ("/" in match.group(1) or "." in match.group(1)):
            paths.append(match.group(1))
    return paths


def modules() -> list[str]:
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "detox").rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    )


def test_every_path_in_the_map_exists() -> None:
    missing = [p for p in map_paths() if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"README's repository map names paths that do not exist: {missing}"


def test_every_module_is_in_the_map() -> None:
    listed = set(map_paths())

    def named(module: str) -> bool:
        parts = module.split("/")
        folders = {"/".join(parts[:i]) + "/" for i in range(1, len(parts))}
        return module in listed or bool(folders & listed - {"detox/"})

    unnamed = [m for m in modules() if not named(m)]
    assert not unnamed, f"modules missing from README's repository map: {unnamed}"
