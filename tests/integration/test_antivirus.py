"""[antivirus] through the real pipeline, against a real clamd with a signature database made here.

EICAR as a text attachment (which without antivirus crosses as text), inside zip/7z/tar, inside an
Office file, inside a forwarded message, in the body itself; the hash and body signatures in an
octet-stream and in a PDF; hold-part and hold-message; clamd absent (tempfail / hold); a member too
large to scan; identical parts scanned once; clean mail byte-identical with antivirus on and off;
``detox scan`` giving the same result as the pipeline; the quarantine refusing a lone release.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

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
from support.configs import make_config
from support.filter_samples import docx, pdf, zip_of

from detox.antivirus.clamd import ClamdClient
from detox.antivirus.scan import AntivirusUnavailable
from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.pipeline.runner import DetoxResult, Pipeline
from detox.pipeline.vocabulary import REASONS

ENV = Envelope("1A0000000000000AV001", "sender@vendor.example.com", ("taro@city.example.lg.jp",))
FIXED_ENV = Envelope(
    "1A0000000000000AV002",
    "sender@vendor.example.com",
    ("taro@city.example.lg.jp",),
    "192.0.2.1",
    "mx.vendor.example.com",
    "2026-12-07T09:00:00+09:00",
)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdInstance]:
    with ClamdInstance(tmp_path_factory.mktemp("clamd"), tcp=True) as instance:
        yield instance


@pytest.fixture(scope="module")
def av(clamd: ClamdInstance) -> Pipeline:
    return Pipeline(make_config(antivirus={"clamd": clamd.unix_address}))


@pytest.fixture(scope="module")
def plain() -> Pipeline:
    return Pipeline(DetoxConfig())


def mail(body: str = "本文です。\n", attachments: list[tuple[str, str, bytes]] = ()) -> EmailMessage:  # type: ignore[assignment]
    msg = EmailMessage()
    msg["From"] = "髙橋 <sender@vendor.example.com>"
    msg["To"] = "taro@city.example.lg.jp"
    msg["Subject"] = "見積書の送付"
    msg["Message-ID"] = "<av-test@vendor.example.com>"
    msg.set_content(body)
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def run(pipeline: Pipeline, msg: EmailMessage | bytes) -> DetoxResult:
    return pipeline.run(msg if isinstance(msg, bytes) else msg.as_bytes(), ENV)


def virus_parts(result: DetoxResult) -> dict[str, str]:
    return {r.part_id: r.virus for r in result.records if r.reason == "virus" and r.virus}


def assert_nothing_crosses(result: DetoxResult, *needles: bytes) -> None:
    for needle in needles:
        assert needle not in result.output
    # also not base64- or QP-encoded: decode every part of the output
    import email

    for part in email.message_from_bytes(result.output).walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            for needle in needles:
                assert needle not in payload


def notice(result: DetoxResult) -> str:
    import email

    out = email.message_from_bytes(result.output)
    body = next(p for p in out.walk() if p.get_content_type() == "text/plain")
    payload = body.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("utf-8")


def _unbound(output: bytes) -> bytes:
    import re

    for boundary in set(re.findall(rb'boundary="([^"]+)"', output)):
        output = output.replace(boundary, b"BOUNDARY")
    return output


# -- the reason is registered and worded ---------------------------------------------------------------


def test_reasons_are_registered_with_japanese_text() -> None:
    config = DetoxConfig()
    for reason in ("virus", "antivirus-unavailable"):
        assert reason in REASONS
        assert config.notice.reasons[reason]
    assert "$signature" in config.notice.reasons["virus"]


# -- where EICAR hides ---------------------------------------------------------------------------------


def test_eicar_text_attachment_crosses_as_text_without_antivirus_and_is_held_with_it(
    plain: Pipeline, av: Pipeline
) -> None:
    msg = mail(attachments=[("eicar.txt", "text/plain", EICAR)])
    without = run(plain, msg)
    assert EICAR in without.output or any(r.action == "replace" for r in without.records)  # crosses today
    result = run(av, msg)
    assert virus_parts(result) == {"2": EICAR_SIGNATURE}
    [held] = [r for r in result.records if r.part_id == "2"]
    assert (held.action, held.reason, held.filter) == ("hold", "virus", "antivirus")
    assert_nothing_crosses(result, EICAR)
    text = notice(result)
    assert f"ウイルス（{EICAR_SIGNATURE}）が検出されたため" in text
    assert "eicar.txt" in text and "本文です。" in text  # the rest of the mail still arrives
    report = result.report.as_dict()
    part = next(p for p in report["parts"] if p["part_id"] == "2")
    assert part["virus"] == EICAR_SIGNATURE
    assert report["antivirus"]["found"] == [{"part_id": "2", "signature": EICAR_SIGNATURE}]
    assert report["antivirus"]["held_message"] is None
    # the original message was scanned too, and every part once
    assert report["antivirus"]["streams"] == 3  # original, body, attachment


def test_eicar_in_the_body_itself(av: Pipeline) -> None:
    result = run(av, mail(body="Please run this:\n" + EICAR.decode() + "\n"))
    assert virus_parts(result) == {"1": EICAR_SIGNATURE}
    assert_nothing_crosses(result, EICAR)
    assert "本文（text/plain）" in notice(result)


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _7z(entries: list[tuple[str, bytes]]) -> bytes:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        for name, data in entries:
            archive.writestr(data, name)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("filename", "ctype", "make"),
    [
        ("見積.zip", "application/zip", lambda e: zip_of(dict(e))),
        ("見積.7z", "application/x-7z-compressed", _7z),
        ("見積.tar", "application/x-tar", _tar),
    ],
    ids=["zip", "7z", "tar"],
)
def test_eicar_inside_an_archive_holds_the_member(av: Pipeline, filename: str, ctype: str, make: Any) -> None:
    archive = make([("readme.txt", "読んでください\n".encode()), ("tools/eicar.com", EICAR)])
    result = run(av, mail(attachments=[(filename, ctype, archive)]))
    found = virus_parts(result)
    # clamd finds it in the archive as a whole: the archive is held before it is opened
    assert found == {"2": EICAR_SIGNATURE}, [r.as_dict() for r in result.records]
    assert_nothing_crosses(result, EICAR)


def test_a_member_is_scanned_on_its_own_through_decide_member(tmp_path: Path) -> None:
    """clamd configured not to open archives (ScanArchive no) sees nothing in the zip: the member is
    still scanned, on its own, when the archive filter hands it to ctx.decide_member — and only the
    member is held; the rest of the archive is repacked and delivered."""
    with ClamdInstance(tmp_path, scan_archive=False) as blind:
        pipeline = Pipeline(make_config(antivirus={"clamd": blind.unix_address}))
        archive = zip_of({"readme.txt": "読んでください\n".encode(), "tools/eicar.com": EICAR})
        result = run(pipeline, mail(attachments=[("見積.zip", "application/zip", archive)]))
    assert virus_parts(result) == {"2:tools/eicar.com": EICAR_SIGNATURE}
    zip_record = next(r for r in result.records if r.part_id == "2")
    assert zip_record.action == "replace" and zip_record.virus is None  # repacked without it
    assert_nothing_crosses(result, EICAR)
    assert "eicar.com" in notice(result) and EICAR_SIGNATURE in notice(result)


def test_eicar_inside_an_office_file(av: Pipeline) -> None:
    import zipfile

    buf = io.BytesIO(docx())
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("word/embeddings/oleObject1.bin", EICAR)
    result = run(av, mail(attachments=[("報告書.docx", "application/octet-stream", buf.getvalue())]))
    assert virus_parts(result) == {"2": EICAR_SIGNATURE}
    assert_nothing_crosses(result, EICAR)


def test_eicar_inside_a_forwarded_message(av: Pipeline) -> None:
    inner = mail(body="転送元の本文\n", attachments=[("eicar.txt", "text/plain", EICAR)])
    outer = mail(body="転送します。\n")
    outer.add_attachment(inner)
    result = run(av, outer)
    found = virus_parts(result)
    assert list(found.values()) == [EICAR_SIGNATURE]
    [part_id] = found
    assert part_id.startswith("2.")  # inside the forwarded message, part 2
    assert_nothing_crosses(result, EICAR)


def test_custom_hash_and_body_signatures(av: Pipeline) -> None:
    marked_pdf = pdf() + b"\n%" + BODY_MARKER + b"\n"
    result = run(
        av,
        mail(
            attachments=[
                ("sample.bin", "application/octet-stream", HASH_SAMPLE),
                ("見積書.pdf", "application/pdf", marked_pdf),
                ("clean.pdf", "application/pdf", pdf()),
            ]
        ),
    )
    assert virus_parts(result) == {"2": HASH_SIGNATURE, "3": BODY_SIGNATURE}
    clean = next(r for r in result.records if r.part_id == "4")
    assert clean.action == "replace" and clean.virus is None  # the clean PDF is still rasterized


# -- hold-message ---------------------------------------------------------------------------------------


def test_hold_message_holds_the_whole_original(clamd: ClamdInstance) -> None:
    pipeline = Pipeline(make_config(antivirus={"clamd": clamd.unix_address, "on_virus": "hold-message"}))
    result = run(pipeline, mail(body="秘密の本文\n", attachments=[("eicar.txt", "text/plain", EICAR)]))
    [record] = result.records
    assert (record.part_id, record.action, record.reason, record.virus) == (
        "0",
        "hold",
        "virus",
        EICAR_SIGNATURE,
    )
    text = notice(result)
    assert "メール全体" in text and EICAR_SIGNATURE in text and "/0）" in text
    assert "秘密の本文" not in text  # nothing of the message crosses
    assert result.report.as_dict()["antivirus"]["held_message"] == "virus"
    # a clean mail is untouched by hold-message
    clean = run(pipeline, mail())
    assert "本文です。" in notice(clean) and clean.report.antivirus is not None
    assert not clean.report.antivirus.found


# -- clamd failing --------------------------------------------------------------------------------------


def test_clamd_absent_tempfails_by_default(tmp_path: Path) -> None:
    pipeline = Pipeline(make_config(antivirus={"clamd": f"unix:{tmp_path / 'gone.sock'}", "timeout_s": 2}))
    with pytest.raises(AntivirusUnavailable, match="antivirus unavailable"):
        run(pipeline, mail())


def test_clamd_absent_with_on_error_hold_holds_the_whole_message(tmp_path: Path) -> None:
    config = make_config(antivirus={"clamd": f"unix:{tmp_path / 'gone.sock'}", "on_error": "hold"})
    result = run(Pipeline(config), mail(body="本文\n", attachments=[("a.txt", "text/plain", b"x\n")]))
    [record] = result.records
    assert (record.part_id, record.reason, record.virus) == ("0", "antivirus-unavailable", None)
    assert "ウイルス検査ができなかったため" in notice(result)


def test_a_member_too_large_to_scan_is_held_not_passed(clamd: ClamdInstance) -> None:
    import random

    member = random.Random(7).randbytes(1_500_000).hex().encode()  # 3 MB of text, compresses ~2:1
    archive = zip_of({"big.txt": member, "small.txt": b"hello\n"})
    msg = mail(attachments=[("big.zip", "application/zip", archive)]).as_bytes()
    cap = len(msg) + 100_000
    assert len(member) > cap  # only the member, once unpacked, is over the cap
    config = make_config(
        server={"max_message_bytes": cap},
        antivirus={"clamd": clamd.unix_address, "max_stream_bytes": cap},
        filters={"archive": {"options": {"max_ratio": 1000}}},
    )
    result = run(Pipeline(config), msg)
    big = next(r for r in result.records if r.part_id.endswith(":big.txt"))
    assert (big.action, big.reason, big.filter) == ("hold", "limit-exceeded", "antivirus")
    assert "not scanned" in (big.error or "")
    small = next(r for r in result.records if r.part_id.endswith(":small.txt"))
    assert small.action != "hold"


def test_max_stream_bytes_must_hold_a_whole_message(tmp_path: Path) -> None:
    from detox.config.loader import load_config
    from detox.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text('[antivirus]\nclamd = "unix:/run/clamav/clamd.ctl"\nmax_stream_bytes = 1000\n')
    with pytest.raises(ConfigError, match=r"antivirus\.max_stream_bytes"):
        load_config(path)
    path.write_text('[antivirus]\nclamd = "http://clamd"\n')
    with pytest.raises(ConfigError, match=r"antivirus\.clamd"):
        load_config(path)


# -- cost and no change -------------------------------------------------------------------------------


def test_identical_parts_are_scanned_once(av: Pipeline) -> None:
    data = b"the same file twice\n" * 50
    result = run(av, mail(attachments=[("a.txt", "text/plain", data), ("b.txt", "text/plain", data)]))
    assert result.report.antivirus is not None
    assert result.report.antivirus.streams == 3  # original, body, the file once


def test_clean_mail_is_unchanged_by_antivirus(av: Pipeline, plain: Pipeline) -> None:
    """Same decisions, same report (but for its ``antivirus`` key); a text-only mail is byte-identical
    (a rasterized PDF is not even between two runs of the same pipeline: its bytes carry a time)."""
    msg = mail(attachments=[("資料.pdf", "application/pdf", pdf()), ("memo.txt", "text/plain", b"memo\n")])
    on, off = run(av, msg), run(plain, msg)

    def decisions(result: DetoxResult) -> list[tuple[Any, ...]]:
        return [(r.part_id, r.action, r.reason, r.filter, r.output_filename, r.virus) for r in result.records]

    assert decisions(on) == decisions(off) and on.actions == off.actions
    assert on.report.as_dict()["antivirus"]["found"] == []
    assert "antivirus" not in off.report.as_dict()
    text_only = mail(attachments=[("memo.txt", "text/plain", "メモ\n".encode())]).as_bytes()
    a = av.run(text_only, FIXED_ENV)
    b = plain.run(text_only, FIXED_ENV)
    assert _unbound(a.output) == _unbound(b.output)
    ra, rb = a.report.as_dict(), b.report.as_dict()
    ra.pop("antivirus")
    ra.pop("output_sha256"), rb.pop("output_sha256")
    assert ra == rb


def test_over_tcp(clamd: ClamdInstance) -> None:
    pipeline = Pipeline(make_config(antivirus={"clamd": clamd.tcp_address}))
    result = run(pipeline, mail(attachments=[("eicar.txt", "text/plain", EICAR)]))
    assert virus_parts(result) == {"2": EICAR_SIGNATURE}


# -- detox scan gives the relay's result --------------------------------------------------------------


def test_detox_scan_cli_gives_the_pipelines_result(
    tmp_path: Path, clamd: ClamdInstance, av: Pipeline
) -> None:
    msg = mail(attachments=[("eicar.txt", "text/plain", EICAR)])
    src = tmp_path / "in.eml"
    src.write_bytes(msg.as_bytes())
    conf = tmp_path / "c.toml"
    conf.write_text(f'[antivirus]\nclamd = "{clamd.unix_address}"\n[storage]\nstate_dir = "{tmp_path}/s"\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "detox",
            "scan",
            str(src),
            "--config",
            str(conf),
            "--report",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    parts = {p["part_id"]: p for p in report["parts"]}
    assert parts["2"]["reason"] == "virus" and parts["2"]["virus"] == EICAR_SIGNATURE
    expected = run(av, msg).report.as_dict()
    assert [(p["part_id"], p["action"], p["reason"]) for p in report["parts"]] == [
        (p["part_id"], p["action"], p["reason"]) for p in expected["parts"]
    ]
    assert EICAR not in done.stdout

    absent = tmp_path / "absent.toml"
    absent.write_text(
        f'[antivirus]\nclamd = "unix:{tmp_path}/none.sock"\n[storage]\nstate_dir = "{tmp_path}/s"\n'
    )
    failed = subprocess.run(
        [sys.executable, "-m", "detox", "scan", str(src), "--config", str(absent)],
        capture_output=True,
        timeout=120,
        cwd=REPO,
    )
    assert failed.returncode == 1 and b"antivirus unavailable" in failed.stderr
    assert failed.stdout == b""  # nothing produced, nothing unscanned


# -- clamd killed mid-stream, in the pipeline -----------------------------------------------------------


class _KillAfterOriginal(ClamdClient):
    """Scans the original and the body, then kills the real clamd in the middle of the attachment."""

    def __init__(self, instance: ClamdInstance) -> None:
        super().__init__(instance.unix_address, chunk_bytes=64 * 1024, timeout_s=10)
        self.instance = instance
        self.streams = 0

    def _frames(self, view: memoryview) -> Iterator[bytes | memoryview]:
        self.streams += 1
        for i, frame in enumerate(super()._frames(view)):
            if self.streams > 1 and len(view) > 200_000 and i == 3:  # the attachment, mid-stream
                self.instance.kill()
            yield frame


@pytest.mark.parametrize("on_error", ["tempfail", "hold"])
def test_clamd_killed_mid_stream_in_the_pipeline(tmp_path: Path, on_error: str) -> None:
    import random

    big = random.Random(3).randbytes(600_000)  # the attachment goes out in several chunks
    msg = mail(attachments=[("data.bin", "application/octet-stream", big)])
    with ClamdInstance(tmp_path) as instance:
        pipeline = Pipeline(make_config(antivirus={"clamd": instance.unix_address, "on_error": on_error}))
        killer = _KillAfterOriginal(instance)
        pipeline.clamd = killer
        if on_error == "tempfail":
            with pytest.raises(AntivirusUnavailable):
                run(pipeline, msg)
        else:
            result = run(pipeline, msg)
            [record] = result.records
            assert (record.part_id, record.reason) == ("0", "antivirus-unavailable")
            assert big not in result.output
        assert killer.streams == 3 and instance.proc is not None and instance.proc.poll() is not None


# -- check-config: the signature database's age --------------------------------------------------------


def _check_config(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "detox", "check-config", str(conf)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@pytest.mark.parametrize("age_h", [2.0, 30.0, None])
def test_check_config_shows_the_signature_age(tmp_path: Path, age_h: float | None) -> None:
    with ClamdInstance(tmp_path / "c", daily_age_hours=age_h) as instance:
        conf = tmp_path / "detox.toml"
        conf.write_text(f'[antivirus]\nclamd = "{instance.unix_address}"\nmax_signature_age_h = 24\n')
        done = _check_config(conf)
    assert done.returncode == 0, done.stderr
    assert f"antivirus (clamd {instance.unix_address}): OK (ClamAV " in done.stdout
    if age_h is None:
        assert "date is unknown" in done.stderr and "freshclam" in done.stderr
    else:
        assert "signatures 27000 of " in done.stdout and f"{age_h:.1f} h old" in done.stdout
        assert ("older than antivirus.max_signature_age_h" in done.stderr) is (age_h > 24)


def test_check_config_fails_when_clamd_is_down(tmp_path: Path) -> None:
    conf = tmp_path / "detox.toml"
    conf.write_text(f'[antivirus]\nclamd = "unix:{tmp_path}/none.sock"\n')
    done = _check_config(conf)
    assert done.returncode == 1
    assert "FAILED" in done.stderr and "wait in the spool" in done.stderr


def test_an_original_larger_than_clamd_accepts_is_held_whole(tmp_path: Path) -> None:
    """clamd's StreamMaxLength below the message: waiting would not change it, so the whole message
    is held (limit-exceeded) at once — never delivered unscanned."""
    with ClamdInstance(tmp_path, stream_max_bytes=64 * 1024) as small:
        pipeline = Pipeline(make_config(antivirus={"clamd": small.unix_address}))
        result = run(pipeline, mail(attachments=[("a.txt", "text/plain", b"line of text\n" * 10_000)]))
    [record] = result.records
    assert (record.part_id, record.reason, record.filter) == ("0", "limit-exceeded", "antivirus")
    assert "メール全体" in notice(result) and "大きさや入れ子の上限を超えたため" in notice(result)
