"""A real, private clamd for tests, with a signature database made here (no freshclam, no network).

Everything lives under one directory (a test's ``tmp_path``)::

    ROOT/db/local.hdb     hash signatures: EICAR and HASH_SAMPLE (MD5:size:name)
    ROOT/db/local.ndb     body signatures: the EICAR string and BODY_MARKER anywhere in a file
    ROOT/db/daily.cud     optional: an unsigned "daily" database whose header carries a build time,
                          so ``VERSION`` answers ``ClamAV x.y.z/VERSION/DATE`` (its age is what
                          ``detox check-config`` reports); without it clamd says only ``ClamAV x.y.z``
    ROOT/clamd.conf       LocalSocket ROOT/clamd.sock (and TCPSocket on 127.0.0.1 when asked)
    ROOT/clamd.log

clamd is started in the foreground by PID and stopped by that PID (never by name). Names that clamd
reports for signatures outside the official databases end in ``.UNOFFICIAL``.

The ``daily.cud`` format (what ``sigtool --build --unsigned`` writes): a 512-byte header
``ClamAV-VDB:TIME:VERSION:SIGS:FLEVEL:MD5:DSIG:BUILDER:STIME`` padded with spaces, then a tar whose
``daily.info`` repeats the header and lists each file as ``NAME:SIZE:SHA256``; unsigned, so no DSIG.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from . import free_port, in_ci

__all__ = [
    "BODY_MARKER",
    "BODY_SIGNATURE",
    "EICAR",
    "EICAR_SIGNATURE",
    "HASH_SAMPLE",
    "HASH_SIGNATURE",
    "ClamdInstance",
    "require_clamd",
    "write_daily_cud",
    "write_signature_db",
]

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# A file matched by its MD5 and size only (.hdb), and a marker matched anywhere in a file (.ndb).
HASH_SAMPLE = b"detox hash-signature sample: this exact file is known malware in the test database\n"
BODY_MARKER = b"DETOX-TEST-BODY-SIGNATURE-7f3a"
# What clamd calls them (signatures outside the official databases get ".UNOFFICIAL").
EICAR_SIGNATURE = "Detox.Test.EICAR.NDB.UNOFFICIAL"
HASH_SIGNATURE = "Detox.Test.Hash.HDB.UNOFFICIAL"
BODY_SIGNATURE = "Detox.Test.Body.NDB.UNOFFICIAL"


def find_clamd() -> str | None:
    return shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/sbin")


def require_clamd() -> str:
    """The clamd binary; skips the test when it is missing, except under CI (then it fails)."""
    found = find_clamd()
    if found is None:
        why = "clamd is not installed (Debian: clamav-daemon; scripts/install-system-deps.sh)"
        if in_ci():
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return found


def write_signature_db(db: Path) -> None:
    """EICAR (by body, anywhere in a file) plus one hash and one body signature of our own."""
    db.mkdir(parents=True, exist_ok=True)
    (db / "local.hdb").write_text(
        f"{hashlib.md5(HASH_SAMPLE).hexdigest()}:{len(HASH_SAMPLE)}:Detox.Test.Hash.HDB\n",
        encoding="ascii",
    )
    (db / "local.ndb").write_text(
        f"Detox.Test.EICAR.NDB:0:*:{EICAR.hex()}\nDetox.Test.Body.NDB:0:*:{BODY_MARKER.hex()}\n",
        encoding="ascii",
    )


def write_daily_cud(db: Path, *, age_hours: float, version: int = 27000) -> float:
    """An unsigned daily database built ``age_hours`` ago (one harmless signature); its build time."""
    stime = int(time.time() - age_hours * 3600)
    when = time.strftime("%d %b %Y %H-%M +0000", time.gmtime(stime))
    sig = b"Detox.Test.Daily.NDB:0:*:" + b"DETOX-DAILY-NEVER-IN-MAIL-0c1d".hex().encode() + b"\n"
    header = f"ClamAV-VDB:{when}:{version}:1:90:X:X:detox-tests:{stime}"
    info = f"{header}\ndaily.ndb:{len(sig)}:{hashlib.sha256(sig).hexdigest()}\n".encode()
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in (("daily.info", info), ("daily.ndb", sig)):
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))
    (db / "daily.cud").write_bytes(header.encode().ljust(512, b" ") + tar.getvalue())
    return float(stime)


class ClamdInstance:
    """One clamd on a private unix socket (and optionally 127.0.0.1:PORT)."""

    def __init__(
        self,
        root: Path,
        *,
        tcp: bool = False,
        stream_max_bytes: int = 50 * 1024 * 1024,
        daily_age_hours: float | None = None,
        scan_archive: bool = True,
    ) -> None:
        self.binary = require_clamd()
        # sun_path holds 108 bytes: a deep tmp_path gets a short directory of its own for the socket.
        if len(str(root / "clamd.sock")) > 100:
            root = Path(tempfile.mkdtemp(prefix="dtx-clam-"))
            self._own_root = True
        else:
            self._own_root = False
        self.root = root
        self.db = root / "db"
        self.socket_path = root / "clamd.sock"
        self.port = free_port() if tcp else 0
        self.stream_max_bytes = stream_max_bytes
        self.scan_archive = scan_archive
        self.proc: subprocess.Popen[bytes] | None = None
        write_signature_db(self.db)
        self.db_time = (
            write_daily_cud(self.db, age_hours=daily_age_hours) if daily_age_hours is not None else None
        )

    @property
    def unix_address(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        assert self.port, "started without tcp=True"
        return f"tcp:127.0.0.1:{self.port}"

    def _write_conf(self) -> Path:
        lines = [
            f"DatabaseDirectory {self.db}",
            f"LocalSocket {self.socket_path}",
            "LocalSocketMode 660",
            "FixStaleSocket yes",
            "Foreground yes",
            f"LogFile {self.root / 'clamd.log'}",
            "LogTime yes",
            "ScanMail yes",
            f"ScanArchive {'yes' if self.scan_archive else 'no'}",
            "ScanPDF yes",
            "ScanOLE2 yes",
            "ScanHTML yes",
            "MaxThreads 4",
            f"StreamMaxLength {self.stream_max_bytes}",
            "SelfCheck 0",
        ]
        if self.port:
            lines += [f"TCPSocket {self.port}", "TCPAddr 127.0.0.1"]
        conf = self.root / "clamd.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="ascii")
        return conf

    def start(self, timeout: float = 60.0) -> None:
        conf = self._write_conf()
        self.socket_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clamd exited with {self.proc.returncode}:\n{self.log()}")
            if self._pong():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"clamd did not answer PING within {timeout}s:\n{self.log()}")

    def _pong(self) -> bool:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.socket_path))
            sock.sendall(b"zPING\x00")
            return sock.recv(16) == b"PONG\x00"
        return False

    def log(self) -> str:
        try:
            return (self.root / "clamd.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no clamd.log)"

    def kill(self) -> None:
        """SIGKILL: clamd gone at once, mid-whatever (the socket file stays behind, as after a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> ClamdInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
