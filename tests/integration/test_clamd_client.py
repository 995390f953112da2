"""The clamd client against a real clamd (Debian's clamav-daemon) with a signature database made here.

What is checked: PING, VERSION with and without a daily database (its build time is the signature
age), INSTREAM verdicts (EICAR, hash and body signatures, clean data, empty data, many chunks), the
size cap on both sides (ours before sending, clamd's StreamMaxLength), TCP as well as a unix socket,
and every way clamd can fail us: absent, killed mid-stream, silent (timeout), answering garbage.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.clamd import (
    BODY_MARKER,
    BODY_SIGNATURE,
    EICAR,
    EICAR_SIGNATURE,
    HASH_SAMPLE,
    HASH_SIGNATURE,
    ClamdInstance,
)

from detox.antivirus.clamd import (
    ClamdClient,
    ClamdTooLarge,
    ClamdUnavailable,
    clean_signature,
    parse_address,
    parse_scan_answer,
    parse_version,
)


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdInstance]:
    with ClamdInstance(tmp_path_factory.mktemp("clamd"), tcp=True, daily_age_hours=30) as instance:
        yield instance


def client(instance: ClamdInstance, **kw: float | int) -> ClamdClient:
    return ClamdClient(instance.unix_address, **kw)  # type: ignore[arg-type]


# -- against the real clamd -------------------------------------------------------------------------


def test_ping_and_version_give_the_database_age(clamd: ClamdInstance) -> None:
    c = client(clamd)
    c.ping()
    version = c.version()
    assert version.engine.count(".") >= 1
    assert version.db_version == 27000
    assert clamd.db_time is not None and version.db_time is not None
    # clamd prints the build time to the second, in its local time; we read it back the same way
    assert abs(version.db_time - clamd.db_time) < 2
    age = version.age_hours()
    assert age is not None and 29.9 < age < 30.2


def test_version_without_a_daily_database_has_no_date(tmp_path: Path) -> None:
    with ClamdInstance(tmp_path) as instance:
        version = client(instance).version()
    assert version.db_version is None and version.db_time is None and version.age_hours() is None


@pytest.mark.parametrize(
    ("data", "signature"),
    [
        (EICAR, EICAR_SIGNATURE),
        (b"Hello,\r\n" + EICAR + b"\r\nbye\r\n", EICAR_SIGNATURE),
        (HASH_SAMPLE, HASH_SIGNATURE),
        (b"x" * 1000 + BODY_MARKER + b"y" * 1000, BODY_SIGNATURE),
        (b"plain clean text\n", None),
        (b"", None),
        (HASH_SAMPLE + b" ", None),  # a hash signature is the exact file only
    ],
    ids=["eicar", "eicar-inside-text", "hash", "body", "clean", "empty", "hash-one-byte-more"],
)
def test_instream_verdicts(clamd: ClamdInstance, data: bytes, signature: str | None) -> None:
    result = client(clamd).scan(data)
    assert result.signature == signature
    assert result.infected is (signature is not None)


def test_many_chunks_find_a_marker_across_a_chunk_boundary(clamd: ClamdInstance) -> None:
    c = client(clamd, chunk_bytes=4096)
    data = b"a" * (4096 * 3 - 10) + BODY_MARKER + b"b" * 20000
    assert c.scan(data).signature == BODY_SIGNATURE
    assert c.scan(memoryview(b"c" * 100_000)).signature is None


def test_over_tcp(clamd: ClamdInstance) -> None:
    c = ClamdClient(clamd.tcp_address)
    c.ping()
    assert c.scan(EICAR).signature == EICAR_SIGNATURE
    assert c.version().db_version == 27000


def test_our_cap_refuses_before_sending(clamd: ClamdInstance) -> None:
    with pytest.raises(ClamdTooLarge, match="max_stream_bytes"):
        client(clamd, max_stream_bytes=1000).scan(b"z" * 1001)
    assert client(clamd, max_stream_bytes=1000).scan(b"z" * 1000).signature is None


def test_clamd_stream_max_length_is_too_large_not_unavailable(tmp_path: Path) -> None:
    with ClamdInstance(tmp_path, stream_max_bytes=64 * 1024) as small:
        c = ClamdClient(small.unix_address, max_stream_bytes=10 * 1024 * 1024, chunk_bytes=16 * 1024)
        with pytest.raises(ClamdTooLarge, match="size limit"):
            c.scan(b"q" * (1024 * 1024))
        assert c.scan(b"q" * 1024).signature is None


# -- clamd failing us ---------------------------------------------------------------------------------


def test_absent_socket_is_unavailable(tmp_path: Path) -> None:
    c = ClamdClient(f"unix:{tmp_path / 'none.sock'}", timeout_s=2)
    with pytest.raises(ClamdUnavailable, match="no such socket"):
        c.ping()
    with pytest.raises(ClamdUnavailable):
        c.scan(EICAR)


def test_refused_tcp_is_unavailable() -> None:
    from support import free_port

    with pytest.raises(ClamdUnavailable, match="cannot connect"):
        ClamdClient(f"tcp:127.0.0.1:{free_port()}", timeout_s=2).scan(b"x")


class _KillingClient(ClamdClient):
    """Kills the real clamd after the first chunk has gone out: clamd dies mid-stream."""

    def __init__(self, instance: ClamdInstance) -> None:
        super().__init__(instance.unix_address, chunk_bytes=64 * 1024, timeout_s=10)
        self.instance = instance

    def _frames(self, view: memoryview) -> Iterator[bytes | memoryview]:
        for i, frame in enumerate(super()._frames(view)):
            if i == 3:
                self.instance.kill()
            yield frame


def test_clamd_killed_mid_stream_is_unavailable(tmp_path: Path) -> None:
    with ClamdInstance(tmp_path) as instance:
        with pytest.raises(ClamdUnavailable):
            _KillingClient(instance).scan(b"k" * (4 * 1024 * 1024))
        # after a crash the socket file is left behind: nobody listens on it
        with pytest.raises(ClamdUnavailable, match="cannot connect"):
            ClamdClient(instance.unix_address, timeout_s=2).ping()
        instance.start()  # back: scanning works again
        assert ClamdClient(instance.unix_address).scan(EICAR).infected


class _FakeClamd:
    """A unix socket that answers every connection with fixed bytes (or nothing): not clamd."""

    def __init__(self, path: Path, answer: bytes | None) -> None:
        self.path = path
        self.answer = answer
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    if self.answer is None:
                        time.sleep(3)  # silent: never answers within the client's timeout
                    else:
                        conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping = True
        self.sock.close()


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (None, "no answer within"),
        (b"stream: OK", "closed without an answer"),  # no NUL terminator
        (b"stream: maybe\x00", "unexpected answer"),
        (b"stream: OK\nstream: OK\x00", "several lines"),
        (b"stream: OK\x00stream: OK\x00", "more than one answer"),
        (b"\xff\xfe\x00", "not ASCII"),
        (b"A" * 5000, "longer than"),
    ],
    ids=["silent", "unterminated", "garbage", "two-lines", "two-answers", "binary", "endless"],
)
def test_answers_that_are_not_clamds_are_unavailable(
    tmp_path: Path, answer: bytes | None, match: str
) -> None:
    fake = _FakeClamd(tmp_path / "fake.sock", answer)
    try:
        c = ClamdClient(f"unix:{tmp_path / 'fake.sock'}", timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(ClamdUnavailable, match=match):
            c.scan(b"some bytes")
        assert time.monotonic() - started < 2.5  # one deadline for the whole exchange
    finally:
        fake.close()


# -- parsing ------------------------------------------------------------------------------------------


def test_parse_scan_answer_strictly() -> None:
    assert parse_scan_answer("stream: OK").signature is None
    assert parse_scan_answer("stream: Win.Test.EICAR_HDB-1 FOUND").signature == "Win.Test.EICAR_HDB-1"
    # a FOUND is a FOUND even with an odd name: it still counts, the name is made printable
    assert parse_scan_answer("stream: bad\x1bname FOUND").signature == "bad?name"
    with pytest.raises(ClamdTooLarge):
        parse_scan_answer("INSTREAM size limit exceeded. ERROR")
    from detox.antivirus.clamd import ClamdScanError

    with pytest.raises(ClamdScanError):
        parse_scan_answer("stream: Can't allocate memory ERROR")
    for bad in ("", "OK", "stream:OK", "stream: OK ", "PONG"):
        with pytest.raises(ClamdUnavailable):
            parse_scan_answer(bad)


def test_parse_version() -> None:
    v = parse_version("ClamAV 1.4.6/27500/Tue Jan  2 09:26:00 2024")
    assert (v.engine, v.db_version) == ("1.4.6", 27500)
    assert v.db_time == time.mktime((2024, 1, 2, 9, 26, 0, 0, 0, -1))
    assert parse_version("ClamAV 0.103.11").db_time is None
    for bad in ("ClamAV", "clamav 1.0", "ClamAV 1.0/x/y", "ClamAV 1.0/1/Someday"):
        with pytest.raises(ClamdUnavailable):
            parse_version(bad)


def test_clean_signature() -> None:
    assert (
        clean_signature("Heuristics.Phishing.Email.SpoofedDomain")
        == "Heuristics.Phishing.Email.SpoofedDomain"
    )
    assert clean_signature("x" * 300) == "x" * 200
    assert clean_signature("日本語") == "???"


def test_parse_address() -> None:
    assert str(parse_address("unix:/run/clamav/clamd.ctl")) == "unix:/run/clamav/clamd.ctl"
    a = parse_address("tcp:[::1]:3310")
    assert (a.family, a.host, a.port) == ("tcp", "::1", 3310)
    assert str(a) == "tcp:[::1]:3310"
    assert parse_address("tcp:clamd.internal:3310").host == "clamd.internal"
    for bad in (
        "",
        "unix:",
        "tcp:host",
        "tcp::3310",
        "tcp:h:0",
        "tcp:h:70000",
        "http://x",
        "/run/clamd.sock",
    ):
        with pytest.raises(ValueError):
            parse_address(bad)
