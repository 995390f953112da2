"""LibreOffice kept running in the sandbox: legacy Office and RTF documents to PDF.

A cold ``soffice --convert-to pdf`` pays LibreOffice's start (~1.6 s, ~2 s under bubblewrap) for every
file; a resident instance converts a one-page document in 0.05–0.15 s (``bench/libreoffice.py``). So each
process that needs one (a pipeline worker) starts one instance on first need, inside bubblewrap with
the same isolation as a converter run (:meth:`~detox.sandbox.bwrap.BwrapSandbox.launch_command`: no
network, read-only system, private size-capped /tmp holding the throwaway profile, nobody, new
session, ``--die-with-parent``, rlimits, its own process group), and drives it through
:mod:`detox.sandbox.inside.office_host` over stdin/stdout (:class:`~detox.sandbox.resident.ResidentProcess`).

Lifecycle of an instance (:class:`LibreOffice`):

* started lazily, with its own start-up timeout; one document at a time (a lock);
* a document that passes its wall-clock timeout kills the whole instance (SandboxTimeout); so does a
  crash, a protocol error or LibreOffice failing to load or export a file (SandboxError): the part is
  held and the next document starts a fresh instance;
* recycled after ``documents_per_instance`` documents, and before the instance's CPU rlimit (which
  counts for the life of a process, not per document) could end it mid-document;
* stopped at process exit (atexit; ``--die-with-parent`` covers a worker that dies without it).

A document is only ever imported by a filter on an allowlist the caller picks (:data:`FILTERS`): type
detection naming anything else is answered "refused" without importing it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from detox.errors import SandboxError
from detox.sandbox import contract
from detox.sandbox.base import Limits, Sandbox
from detox.sandbox.bwrap import SANDBOX_HOME, BwrapSandbox
from detox.sandbox.process import SubprocessSandbox
from detox.sandbox.resident import ResidentProcess
from detox.sandbox.spawn import Launch, child_env

log = logging.getLogger(__name__)

# LibreOffice import filters allowed per kind of document (names as in its filter registry).
FILTERS: Mapping[str, frozenset[str]] = {
    "word": frozenset(
        {"MS Word 97", "MS Word 97 Vorlage", "MS Word 95", "MS Word 95 Vorlage", "MS WinWord 6.0"}
    ),
    "excel": frozenset(
        {
            "MS Excel 97",
            "MS Excel 97 Vorlage/Template",
            "MS Excel 95",
            "MS Excel 95 Vorlage/Template",
            "MS Excel 5.0/95",
            "MS Excel 5.0/95 Vorlage/Template",
        }
    ),
    "powerpoint": frozenset({"MS PowerPoint 97", "MS PowerPoint 97 AutoPlay", "MS PowerPoint 97 Vorlage"}),
    "rtf": frozenset({"Rich Text Format"}),
}
DEFAULT_PYTHON = "/usr/bin/python3"  # Debian's python3-uno installs ``uno`` for the system Python only
HOST_SCRIPT = contract.OFFICE_HOST_SCRIPT
# RLIMIT_CPU counts for the life of a process: an instance may use this many times sandbox.cpu_s in
# all, and is recycled once it has used half of that (no single document comes near the other half:
# its wall-clock timeout ends it first).
CPU_BUDGET_FACTOR = 10
INSTANCE_OPEN_FILES = 1024
INSTANCE_FILE_BYTES = 256 * 1024 * 1024  # the input copy and the PDF in /tmp (tmpfs: twice this)
_MAX_INSTANCES = 2  # per process: instances with other settings are stopped beyond this
_STOP_GRACE_S = 3.0


@dataclass(frozen=True, slots=True)
class OfficeSettings:
    """What an instance is started with (instances are shared per process by these settings)."""

    soffice: str = "soffice"  # a name looked up on PATH, or an absolute path
    python: str = DEFAULT_PYTHON
    documents_per_instance: int = 200
    start_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Conversion:
    """The answer for one document: a PDF (``ok``), ``refused`` (not a format the caller allowed) or
    ``too-long`` (more pages than ``max_pages``; not exported)."""

    status: Literal["ok", "refused", "too-long"]
    pdf: bytes = b""
    import_filter: str = ""
    detail: str = ""


# -- is LibreOffice here? ------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def unavailable_reason(soffice: str, python: str) -> str | None:
    """Why LibreOffice cannot run here (no soffice, or no ``uno`` for ``python``); None when it can."""
    found = shutil.which(soffice)
    if found is None:
        return f"soffice ({soffice}) is not installed or not on PATH"
    if not os.path.isabs(python) or not os.access(python, os.X_OK):
        return f"{python} is not an executable Python"
    try:
        probe = subprocess.run(
            [python, "-I", "-c", "import uno"],
            capture_output=True,
            timeout=30,
            check=False,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{python} does not run: {exc}"
    if probe.returncode != 0:
        return f"{python} cannot import uno (Debian: apt-get install python3-uno)"
    return None


def soffice_path(soffice: str) -> str:
    found = shutil.which(soffice)
    if found is None:
        raise SandboxError(f"soffice ({soffice}) is not installed or not on PATH")
    return os.path.abspath(found)


def _outside_usr(path: str) -> list[str]:
    """The installation root of ``path`` (…/program/soffice → …) when bwrap does not show it anyway."""
    real = os.path.realpath(path)
    if real.startswith("/usr/"):
        return []
    return [os.path.dirname(os.path.dirname(real))]


# -- one instance per process --------------------------------------------------------------------


class LibreOffice:
    """A resident LibreOffice in ``sandbox``: started on first need, restarted after any failure."""

    def __init__(self, sandbox: Sandbox, settings: OfficeSettings) -> None:
        if not isinstance(sandbox, BwrapSandbox | SubprocessSandbox):
            raise SandboxError(f"LibreOffice cannot run in a {sandbox.name!r} sandbox")
        self.sandbox = sandbox
        self.settings = settings
        configured = sandbox.default_limits
        self.limits = Limits(
            cpu_s=configured.cpu_s * CPU_BUDGET_FACTOR,
            memory_bytes=configured.memory_bytes,
            max_file_bytes=INSTANCE_FILE_BYTES,
            max_open_files=INSTANCE_OPEN_FILES,
        )
        self.lock = threading.Lock()
        self.process: ResidentProcess | None = None
        self.documents = 0  # converted by the current process
        self.cpu_s = 0.0  # the most CPU time one of its processes has used, as it last reported
        self.starts = 0
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    # The public face ------------------------------------------------------------------------

    def convert(
        self,
        data: bytes,
        *,
        extension: str,
        filters: frozenset[str],
        timeout_s: float,
        max_pages: int,
        max_output_bytes: int,
        deadline: float | None = None,
    ) -> Conversion:
        """``data`` as PDF, within ``timeout_s`` (and the absolute monotonic ``deadline``, if given).

        The start of a fresh instance has its own timeout (``start_timeout_s``); both are cut to what
        is left before ``deadline``. Raises SandboxTimeout / SandboxError (the instance is gone then).
        """
        with self.lock:
            process = self._ready(deadline)
            request = {
                "op": "convert",
                "extension": extension,
                "filters": sorted(filters),
                "max_pages": max_pages,
            }
            try:
                header, pdf = process.request(
                    request, data, _cut(timeout_s, deadline), max_payload=max_output_bytes
                )
            except BaseException:
                self._stop(process)  # already killed by the failed request: only forgotten here
                raise
            self.documents += 1
            cpu = header.get("cpu_s")
            if isinstance(cpu, int | float) and not isinstance(cpu, bool):
                self.cpu_s = float(cpu)
            status = header.get("status")
            detail = str(header.get("detail", ""))[:300]
            if status == "refused":
                return Conversion("refused", detail=detail)
            if status == "too-long":
                return Conversion("too-long", detail=f"{header.get('pages')} pages")
            if status != "ok":
                # LibreOffice failed on the file: its state is unknown, so the next one gets a fresh one.
                self._stop(process)
                raise SandboxError(f"LibreOffice could not convert the document: {detail or status}")
            used = header.get("filter")
            if used not in filters or not pdf.startswith(b"%PDF-"):
                self._stop(process)
                raise SandboxError("LibreOffice answered something that is not a PDF of an allowed format")
            return Conversion("ok", pdf=pdf, import_filter=str(used))

    def stop(self) -> None:
        with self.lock:
            if self.process is not None:
                self._stop(self.process)

    # Lifecycle ------------------------------------------------------------------------------

    def _ready(self, deadline: float | None) -> ResidentProcess:
        process = self.process
        if process is not None:
            if not process.alive:
                log.warning("LibreOffice (pid %d) is gone; starting a new instance", process.pid)
                self._stop(process)
            elif self.documents >= self.settings.documents_per_instance:
                log.info("LibreOffice recycled after %d documents", self.documents)
                self._stop(process)
            elif self.cpu_s >= self.limits.cpu_s / 2:
                log.info("LibreOffice recycled after %.0f s of CPU time", self.cpu_s)
                self._stop(process)
            else:
                return process
        return self._start(_cut(self.settings.start_timeout_s, deadline))

    def _start(self, timeout_s: float) -> ResidentProcess:
        started = time.monotonic()
        with self._launch() as launch:
            process = ResidentProcess(
                "libreoffice", launch, self.limits, signal_offset=self.sandbox.signal_exit_offset
            )
        try:
            ready = process.wait_ready(timeout_s)
        except BaseException:  # our timeout, or the runner's deadline: the process is already killed
            self._cleanup()
            raise
        if ready.get("status") != "ready":
            process.kill()
            self._cleanup()
            raise SandboxError("LibreOffice host did not announce itself")
        self.process = process
        self.documents = 0
        self.cpu_s = 0.0
        self.starts += 1
        log.info(
            "LibreOffice %s started in the %s sandbox (pid %d) in %.1f s",
            str(ready.get("version", "?"))[:20],
            self.sandbox.name,
            process.pid,
            time.monotonic() - started,
        )
        return process

    @contextlib.contextmanager
    def _launch(self) -> Iterator[Launch]:
        soffice = soffice_path(self.settings.soffice)
        binds = [*_outside_usr(soffice), *_outside_usr(self.settings.python)]
        pipe = f"detox-{uuid.uuid4().hex}"  # unique even where /tmp is shared (the subprocess provider)
        if isinstance(self.sandbox, BwrapSandbox):
            command = [self.settings.python, "-I", "-B", HOST_SCRIPT, soffice, SANDBOX_HOME, pipe]
            with self.sandbox.launch_command(command, self.limits, binds) as launch:
                yield launch
            return
        # Development only (sandbox.allow_unsandboxed): a private directory instead of a private /tmp.
        self._workdir = tempfile.TemporaryDirectory(prefix="detox-office-", ignore_cleanup_errors=True)
        base = self._workdir.name
        command = [self.settings.python, "-I", "-B", HOST_SCRIPT, soffice, base, pipe]
        yield Launch(argv=command, env=child_env(base), cwd=base)

    def _stop(self, process: ResidentProcess) -> None:
        process.close(_STOP_GRACE_S)
        if self.process is process:
            self.process = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def _forget(self) -> None:
        """In a forked child: the instance belongs to the parent; drop our copies of its pipes."""
        if self.process is not None:
            self.process.abandon()
            self.process = None
        if self._workdir is not None:
            # Kept, never finalized here: a TemporaryDirectory collected in this child (Popen's
            # preexec_fn runs at-fork handlers) would remove the parent's instance directory.
            _abandoned_workdirs.append(self._workdir)
        self._workdir = None
        self.lock = threading.Lock()


_abandoned_workdirs: list[tempfile.TemporaryDirectory[str]] = []


def _cut(timeout_s: float, deadline: float | None) -> float:
    if deadline is None:
        return timeout_s
    return max(0.001, min(timeout_s, deadline - time.monotonic()))


_instances: OrderedDict[tuple[object, ...], LibreOffice] = OrderedDict()
_registry_lock = threading.Lock()


def instance_for(sandbox: Sandbox, settings: OfficeSettings) -> LibreOffice:
    """This process's instance for these settings and sandbox configuration (created, not started)."""
    key = (settings, sandbox.name, sandbox.default_limits)
    with _registry_lock:
        office = _instances.get(key)
        if office is None:
            office = LibreOffice(sandbox, settings)
            _instances[key] = office
            while len(_instances) > _MAX_INSTANCES:
                _, oldest = _instances.popitem(last=False)
                oldest.stop()
        _instances.move_to_end(key)
        return office


def stop_all() -> None:
    """Stop every instance this process started (atexit, and tests)."""
    with _registry_lock:
        offices = list(_instances.values())
        _instances.clear()
    for office in offices:
        office.stop()


def _after_fork_in_child() -> None:
    global _registry_lock
    for office in _instances.values():
        office._forget()
    _instances.clear()
    _registry_lock = threading.Lock()


atexit.register(stop_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
