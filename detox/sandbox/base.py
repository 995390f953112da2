"""The sandbox contract: run one converter on untrusted bytes in a separate, limited process.

A converter is a function ``main(data: bytes, args: dict) -> bytes`` inside the sandbox, found by name
(:mod:`detox.sandbox.inside.converters`: a built-in one, or one a plugin registered in the
``detox.converters`` entry-point group). The provider starts
``python -I -B -m detox.sandbox.inside.child NAME`` (inside bubblewrap in production), feeds the
arguments (length-prefixed JSON) and then the input on stdin, and reads the output from stdout. A
converter that raises exits non-zero; a converter that runs past its time is killed with its whole
process group. Either way the caller gets a :class:`~detox.errors.SandboxError` and the runner holds
the part. What the host may know of a converter (its held reasons, output types, the framing) is in
:mod:`detox.sandbox.contract`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource caps for one converter run (enforced by the provider, not trusted to the child)."""

    timeout_s: float = 60.0  # wall clock; the process group is killed after it
    cpu_s: int = 60  # RLIMIT_CPU
    memory_bytes: int = 2 * 1024**3  # RLIMIT_AS
    max_output_bytes: int = 200 * 1024 * 1024  # stdout beyond this is an error
    max_file_bytes: int = 256 * 1024 * 1024  # RLIMIT_FSIZE (files the child writes in its /tmp)
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_processes: int = 64  # RLIMIT_NPROC (LibreOffice needs a few)


class Sandbox(ABC):
    """Runs converters out of process. Implementations: bubblewrap (production), subprocess (dev)."""

    name: str
    # The configured limits (sandbox.memory_mb / cpu_s); a filter's own Limits are capped by them.
    default_limits: Limits = Limits()

    @abstractmethod
    def run(self, module: str, data: bytes, args: Mapping[str, Any], limits: Limits) -> bytes:
        """Run converter ``module``'s ``main(data, args)`` isolated; return its output bytes.

        Raises SandboxTimeout when ``limits.timeout_s`` passes, SandboxError for any other failure
        (non-zero exit, output too large, the sandbox itself failing to start).
        """
