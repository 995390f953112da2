"""A test-only filter that crashes or stalls its worker, registered through a real entry point.

``install_faulty_filter(DIR)`` writes a module and a ``*.dist-info`` with an ``entry_points.txt`` into
DIR; put DIR on ``PYTHONPATH`` of ``detox serve`` (and of CLI calls that load its config) and add
``"faulty"`` at the front of ``pipeline.order``. Nothing is installed into the venv.

The filter claims a body part only when the part contains ``FAULT:crash`` or ``FAULT:sleep`` and the
file named by ``options.switch`` exists, so a test turns the fault off by deleting that file:

* ``FAULT:crash`` — SIGKILL of the worker process (the pool breaks: "worker crashed");
* ``FAULT:sleep`` — sleeps ``options.seconds`` and then lets the part through as text.
"""

from __future__ import annotations

from pathlib import Path

MODULE = '''
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from detox.filters.base import Filter, FilterContext
from detox.pipeline.model import Action, Part, Role, Verdict


class FaultyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    switch: str = ""
    seconds: float = 5.0


class FaultyFilter(Filter):
    """Test only: crashes or stalls its worker on marked body parts."""

    name: ClassVar[str] = "faulty"
    Options: ClassVar[type[BaseModel]] = FaultyOptions

    def applies_to(self, part: Part) -> bool:
        if part.role is not Role.BODY or b"FAULT:" not in part.payload:
            return False
        switch = self.options.switch
        return not switch or Path(switch).exists()

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        if b"FAULT:crash" in part.payload:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.options.seconds)
        return Verdict(Action.TEXT, text=part.payload.decode("utf-8", "replace"))
'''


def install_faulty_filter(directory: Path) -> Path:
    """Write the ``detox_faulty`` module and its entry point under ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "detox_faulty.py").write_text(MODULE, encoding="utf-8")
    info = directory / "detox_faulty-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: detox-faulty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[detox.filters]\nfaulty = detox_faulty:FaultyFilter\n")
    return directory
