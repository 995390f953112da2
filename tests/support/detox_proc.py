"""Run the real ``detox serve`` as a child process for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import free_port

REPO = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a TOML config from ``{"server": {"listen": ...}, "filters.html": {...}}``."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def wait_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class DetoxProcess:
    """``detox serve`` in ``workdir`` with a generated config; stop() by PID, always."""

    def __init__(
        self,
        workdir: Path,
        deliver_to: str,
        overrides: dict[str, dict[str, Any]] | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = env or {}  # extra environment, e.g. PYTHONPATH with test-only filters
        self.port = port or free_port()
        self.deliver_to = deliver_to
        sections: dict[str, dict[str, Any]] = {
            "server": {"listen": f"127.0.0.1:{self.port}"},
            "delivery": {"deliver_to": deliver_to, "retry_base_s": 0.5, "retry_max_s": 2.0},
            "pipeline": {"workers": 2},
            "logging": {"level": "INFO"},
        }
        for section, values in (overrides or {}).items():
            sections.setdefault(section, {}).update(values)
        self.config = write_config(workdir / "detox.toml", sections)
        self.log = workdir / "detox.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DetoxProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "detox", "serve", "--config", str(self.config)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        try:
            wait_port("127.0.0.1", self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"detox did not start:\n{self.log.read_text(errors='replace')}") from None
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        # The whole process group would include the pytest run; kill detox and its workers by PID.
        children = _children(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        children = _children(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``python -m detox ARGS --config <this serve's config>``, run where serve runs, with its
        environment (a relative state directory is the same one)."""
        pythonpath = os.pathsep.join(p for p in (self.env.get("PYTHONPATH"), str(REPO)) if p)
        return subprocess.run(
            [sys.executable, "-m", "detox", *args, "--config", str(self.config)],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env, "PYTHONPATH": pythonpath},
        )

    def audit_records(self) -> list[dict[str, Any]]:
        """Every audit record so far (rotated files included), oldest first; none before the first."""
        from detox.audit import read_records

        path = self.state / "audit" / "audit.jsonl"
        return read_records(path) if path.exists() else []

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def state(self) -> Path:
        return self.workdir / "var"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The standard output of a command that must have succeeded (else its exit code and output)."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (worker processes, the forkserver)."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        try:
            text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
        except OSError:
            continue
        kids = [int(k) for k in text.split()]
        found.extend(kids)
        frontier.extend(kids)
    return found
