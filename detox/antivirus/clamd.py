"""A small synchronous client for clamd: PING, VERSION and INSTREAM, with strict answers.

Why our own and not a library: the protocol is a handful of lines (``zCOMMAND\\0``; INSTREAM sends
chunks as a 4-byte big-endian length plus the bytes and ends with a zero length), and what matters
here is what libraries do loosely — one deadline for the whole exchange, a size cap checked before a
byte is sent, every answer parsed against the few shapes clamd really sends and anything else an
error. The PyPI ``clamd`` package has not been maintained since 2020 and its ``instream`` returns
whatever dict it could parse; ``clamav-client`` and ``aioclamd`` add a dependency for the same few
lines. The pipeline runs in worker processes, one message at a time, so the client is synchronous:
one connection per stream (a unix-socket connect costs tens of microseconds; no session state to
lose when clamd restarts).

Errors are split by what the caller should do:

* :class:`ClamdUnavailable` — clamd could not be reached, timed out, hung up or said something we
  do not understand: try the message again later (or hold it), never pass it unscanned;
* :class:`ClamdTooLarge` — the stream is over our cap or clamd's ``StreamMaxLength``: retrying does
  not help, the part is held;
* :class:`ClamdScanError` — clamd answered ``... ERROR`` for this stream.
"""

from __future__ import annotations

import errno
import re
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from detox.errors import DetoxError

DEFAULT_CHUNK_BYTES = 256 * 1024
MAX_ANSWER_BYTES = 4096  # clamd's answers are one short line; more is not clamd
_END = struct.pack(">I", 0)


class ClamdError(DetoxError):
    """clamd did not give a usable verdict."""


class ClamdUnavailable(ClamdError):
    """Not reachable, timed out, connection lost, or an answer we do not understand: try later."""


class ClamdTooLarge(ClamdError):
    """The stream is larger than what we may send or clamd accepts (``StreamMaxLength``)."""


class ClamdScanError(ClamdError):
    """clamd answered ``... ERROR`` for the stream."""


# -- addresses --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClamdAddress:
    family: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_address(value: str) -> ClamdAddress:
    """``unix:/run/clamav/clamd.ctl`` or ``tcp:HOST:PORT`` (IPv6 as ``tcp:[::1]:3310``)."""
    if value.startswith("unix:"):
        path = value.removeprefix("unix:")
        if not path or "\x00" in path:
            raise ValueError(f"expected unix:PATH, got {value!r}")
        return ClamdAddress("unix", path=path)
    if value.startswith("tcp:"):
        host, sep, port = value.removeprefix("tcp:").rpartition(":")
        host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected tcp:HOST:PORT, got {value!r}")
        return ClamdAddress("tcp", host=host, port=int(port))
    raise ValueError(f"expected unix:PATH or tcp:HOST:PORT, got {value!r}")


# -- answers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One INSTREAM verdict: ``signature`` is None for ``stream: OK``."""

    signature: str | None = None

    @property
    def infected(self) -> bool:
        return self.signature is not None


@dataclass(frozen=True, slots=True)
class ClamdVersion:
    """``VERSION``: ``ClamAV 1.4.6/27500/Tue Jan  2 09:26:00 2024`` (engine/daily db version/db time).

    Without a daily database (only local .hdb/.ndb files) clamd says just ``ClamAV 1.4.6``: the
    database version and time are then unknown (None).
    """

    engine: str
    db_version: int | None
    db_time: float | None  # epoch seconds; clamd prints the daily database's build time, local time
    raw: str

    def age_hours(self, now: float | None = None) -> float | None:
        if self.db_time is None:
            return None
        return max(((time.time() if now is None else now) - self.db_time) / 3600.0, 0.0)


# Signature names as the databases write them: Win.Test.EICAR_HDB-1, Local.X.NDB.UNOFFICIAL,
# Heuristics.Phishing.Email.SpoofedDomain, YARA.rule.UNOFFICIAL. Anything else is rewritten (a
# FOUND is a FOUND even when the name is odd: it still holds the part).
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+\-()!#]{0,199}")
_NAME_BAD_CHAR = re.compile(r"[^A-Za-z0-9._:/+\-()!#]")
_VERSION = re.compile(r"ClamAV ([0-9][0-9A-Za-z.\-+~]{0,40})(?:/([0-9]{1,10})/(.{1,64}))?")
_CTIME = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +"
    r"([0-9]{1,2}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([0-9]{4})"
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def clean_signature(name: str) -> str:
    """The signature name as shown to people: printable ASCII from a fixed set, at most 200."""
    if _NAME_OK.fullmatch(name):
        return name
    return _NAME_BAD_CHAR.sub("?", name)[:200] or "?"


def parse_scan_answer(answer: str) -> ScanResult:
    """``stream: OK`` / ``stream: NAME FOUND``; raises for ``... ERROR`` and anything else."""
    if answer == "stream: OK":
        return ScanResult()
    if answer.startswith("stream: ") and answer.endswith(" FOUND"):
        name = answer.removeprefix("stream: ").removesuffix(" FOUND").strip()
        return ScanResult(clean_signature(name))
    if answer.endswith("ERROR"):
        if "size limit exceeded" in answer:
            raise ClamdTooLarge(f"clamd: {answer}")
        raise ClamdScanError(f"clamd: {answer}")
    raise ClamdUnavailable(f"clamd: unexpected answer {answer[:120]!r}")


def parse_version(answer: str) -> ClamdVersion:
    m = _VERSION.fullmatch(answer)
    if m is None:
        raise ClamdUnavailable(f"clamd: unexpected VERSION answer {answer[:120]!r}")
    engine, db_version, db_date = m.group(1), m.group(2), m.group(3)
    db_time = None
    if db_date is not None:
        t = _CTIME.fullmatch(db_date.strip())
        if t is None:
            raise ClamdUnavailable(f"clamd: unexpected database date {db_date[:64]!r}")
        month = _MONTHS.index(t.group(1)) + 1
        fields = (int(t.group(6)), month, int(t.group(2)), int(t.group(3)), int(t.group(4)), int(t.group(5)))
        db_time = time.mktime((*fields, 0, 0, -1))  # clamd prints ctime(): its local time
    return ClamdVersion(engine, int(db_version) if db_version is not None else None, db_time, answer)


# -- the client -------------------------------------------------------------------------------


class ClamdClient:
    """One clamd. Every call opens its own connection and finishes within ``timeout_s``."""

    def __init__(
        self,
        address: ClamdAddress | str,
        *,
        timeout_s: float = 30.0,
        max_stream_bytes: int = 25 * 1024 * 1024,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.timeout_s = timeout_s
        self.max_stream_bytes = max_stream_bytes
        self.chunk_bytes = chunk_bytes

    def ping(self) -> None:
        answer = self._command(b"zPING\x00")
        if answer != "PONG":
            raise ClamdUnavailable(f"clamd: unexpected PING answer {answer[:120]!r}")

    def version(self) -> ClamdVersion:
        return parse_version(self._command(b"zVERSION\x00"))

    def scan(self, data: bytes | memoryview) -> ScanResult:
        """INSTREAM ``data``; the verdict, or one of the :class:`ClamdError` kinds."""
        view = memoryview(data).cast("B")
        if len(view) > self.max_stream_bytes:
            raise ClamdTooLarge(
                f"{len(view)} bytes is over antivirus.max_stream_bytes ({self.max_stream_bytes})"
            )
        deadline = time.monotonic() + self.timeout_s
        with self._connect(deadline) as sock:
            try:
                for piece in self._frames(view):
                    self._settimeout(sock, deadline)
                    sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError) as exc:
                # clamd hangs up mid-stream when it refuses the size (StreamMaxLength): its answer
                # may still be readable; otherwise it went away (killed, restarted).
                try:
                    answer, more = self._answer(sock, deadline)
                except ClamdUnavailable:
                    raise ClamdUnavailable(
                        f"clamd {self.address}: connection lost while sending ({exc})"
                    ) from None
                return self._verdict(answer, more)
            except TimeoutError:
                raise ClamdUnavailable(f"clamd {self.address}: timed out after {self.timeout_s}s") from None
            except OSError as exc:
                raise ClamdUnavailable(f"clamd {self.address}: {exc}") from None
            return self._verdict(*self._answer(sock, deadline))

    def _verdict(self, answer: str, more: bool) -> ScanResult:
        result = parse_scan_answer(answer)
        # With AllMatchScan clamd sends one FOUND per match: the first decides. After OK, nothing.
        if more and not result.infected:
            raise ClamdUnavailable(f"clamd {self.address}: more than one answer")
        return result

    # -- plumbing ------------------------------------------------------------------------------

    def _frames(self, view: memoryview) -> Iterator[bytes | memoryview]:
        size = len(view)
        if size == 0:
            yield b"zINSTREAM\x00" + _END
            return
        if size <= self.chunk_bytes:  # the common case: one write
            yield b"".join((b"zINSTREAM\x00", struct.pack(">I", size), view, _END))
            return
        yield b"zINSTREAM\x00"
        for start in range(0, size, self.chunk_bytes):
            chunk = view[start : start + self.chunk_bytes]
            yield struct.pack(">I", len(chunk))
            yield chunk
        yield _END

    def _command(self, command: bytes) -> str:
        deadline = time.monotonic() + self.timeout_s
        with self._connect(deadline) as sock:
            try:
                self._settimeout(sock, deadline)
                sock.sendall(command)
            except TimeoutError:
                raise ClamdUnavailable(f"clamd {self.address}: timed out after {self.timeout_s}s") from None
            except OSError as exc:
                raise ClamdUnavailable(f"clamd {self.address}: {exc}") from None
            answer, more = self._answer(sock, deadline)
            if more:
                raise ClamdUnavailable(f"clamd {self.address}: more than one answer")
            return answer

    def _connect(self, deadline: float) -> socket.socket:
        if self.address.family == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[Any, ...] = self.address.path
        else:
            try:
                infos = socket.getaddrinfo(self.address.host, self.address.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ClamdUnavailable(f"clamd {self.address}: {exc}") from None
            family, _, _, _, target = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._settimeout(sock, deadline)
            sock.connect(target)
        except TimeoutError:
            sock.close()
            raise ClamdUnavailable(f"clamd {self.address}: connect timed out") from None
        except OSError as exc:
            sock.close()
            why = "no such socket" if exc.errno == errno.ENOENT else exc.strerror or str(exc)
            raise ClamdUnavailable(f"clamd {self.address}: cannot connect: {why}") from None
        except BaseException:
            sock.close()
            raise
        return sock

    def _settimeout(self, sock: socket.socket, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClamdUnavailable(f"clamd {self.address}: timed out after {self.timeout_s}s")
        sock.settimeout(left)

    def _answer(self, sock: socket.socket, deadline: float) -> tuple[str, bool]:
        """The first NUL-terminated answer, and whether more followed it; the connection closing
        first, or an answer too long, is an error."""
        buf = bytearray()
        while True:
            try:
                self._settimeout(sock, deadline)
                data = sock.recv(MAX_ANSWER_BYTES)
            except TimeoutError:
                raise ClamdUnavailable(f"clamd {self.address}: no answer within {self.timeout_s}s") from None
            except OSError as exc:
                raise ClamdUnavailable(f"clamd {self.address}: {exc}") from None
            if not data:
                raise ClamdUnavailable(f"clamd {self.address}: connection closed without an answer")
            buf += data
            end = buf.find(b"\x00")
            if end >= 0:
                raw, more = bytes(buf[:end]), end + 1 != len(buf)
                break
            if len(buf) > MAX_ANSWER_BYTES:
                raise ClamdUnavailable(f"clamd {self.address}: answer longer than {MAX_ANSWER_BYTES} bytes")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ClamdUnavailable(f"clamd {self.address}: answer is not ASCII") from None
        if "\n" in text or "\r" in text:
            raise ClamdUnavailable(f"clamd {self.address}: answer of several lines")
        return text, more
