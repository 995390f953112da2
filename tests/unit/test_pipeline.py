"""The pipeline on messages built here: structure, policy, failure handling, output shape."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import pickle
import time
from email.message import EmailMessage
from typing import ClassVar

import pytest
from PIL import Image, PngImagePlugin
from support.pipelines import pipeline_runner

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.filters.base import Filter, FilterContext
from detox.pipeline.model import Action, Output, Part, Role, Verdict
from detox.pipeline.registry import build_pipeline

ENV = Envelope(
    "0190000000000ABC", "sender@example.jp", ("taro@city.example.lg.jp",), "192.0.2.1", "mx.example.jp"
)
ALLOWED_OUTPUT_TYPES = {"text/plain", "text/csv", "multipart/mixed", "message/rfc822"}


run = pipeline_runner(ENV).parsed  # (result, the output parsed)


def body_text(out: EmailMessage) -> str:
    part = out.get_body(("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def assert_safe_shape(out: EmailMessage) -> None:
    for part in out.walk():
        assert part.get_content_type() in ALLOWED_OUTPUT_TYPES, part.get_content_type()


def base(subject: str = "お知らせ") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "山田 太郎 <yamada@example.jp>"
    msg["To"] = "髙橋 <taro@city.example.lg.jp>"
    msg["Cc"] = "cc@example.jp"
    msg["Subject"] = subject
    msg["Date"] = "Tue, 24 Nov 2026 10:00:00 +0900"
    msg["Message-ID"] = "<abc@example.jp>"
    msg["DKIM-Signature"] = "v=1; a=rsa-sha256; d=example.jp; b=xyz"
    msg["ARC-Seal"] = "i=1; a=rsa-sha256; b=xyz"
    msg["X-Tracking"] = "secret"
    return msg


def test_plain_mail_keeps_text_and_headers() -> None:
    msg = base("①㈱髙 のお知らせ")
    msg.set_content("こんにちは。①㈱髙﨑\n二行目\n")
    _result, out = run(msg)
    text = body_text(out)
    assert "こんにちは。①㈱髙﨑\n二行目" in text
    assert "【detox 無害化通知】" in text
    assert ENV.queue_id in text
    assert out["Subject"] == "①㈱髙 のお知らせ"
    assert out["From"].addresses[0].display_name == "山田 太郎"
    assert out["To"].addresses[0].display_name == "髙橋"
    assert out["Message-ID"] == "<abc@example.jp>"
    assert out["X-Detox-Id"] == ENV.queue_id
    assert out["X-Detox-Actions"].startswith("text-converted")
    assert "by detox.city.example.lg.jp (detox)" in out["Received"]
    for dropped in ("DKIM-Signature", "ARC-Seal", "X-Tracking"):
        assert dropped not in out
    assert out.get_content_type() == "text/plain"
    assert out.get_content_charset() == "utf-8"
    assert_safe_shape(out)


def test_html_alternative_collapses_to_html_text_when_plain_is_a_stub() -> None:
    msg = base()
    msg.set_content("HTMLメールを表示できません。")
    msg.add_alternative(
        "<html><body><p>会議のご案内</p><ul><li>日時: 12月1日</li><li>場所: 本庁舎</li></ul>"
        "<script>alert(1)</script><a href='https://evil.example/login'>こちら</a></body></html>",
        subtype="html",
    )
    result, out = run(msg)
    text = body_text(out)
    assert "会議のご案内" in text and "日時: 12月1日" in text
    assert "alert" not in text
    assert "hxxps://evil[.]example/login" in text
    assert "HTMLメールを表示できません" not in text
    assert "HTML 形式の本文をテキストに変換しました" in text
    assert "urls-defanged=1" in result.actions
    assert "html-converted=1" in result.actions
    assert_safe_shape(out)
    actions = {r.part_id: r.action for r in result.records}
    assert actions == {"1": "drop", "2": "text"}


def test_alternative_prefers_plain_when_it_carries_the_content() -> None:
    msg = base()
    msg.set_content("会議のご案内\n日時: 12月1日\n場所: 本庁舎\n")
    msg.add_alternative("<p>会議のご案内</p><p>日時: 12月1日</p><p>場所: 本庁舎</p>", subtype="html")
    result, out = run(msg)
    assert "会議のご案内" in body_text(out)
    assert "html-converted" not in result.actions
    assert [r.action for r in result.records] == ["text", "drop"]


def test_attachments_text_passes_as_utf8_others_held() -> None:
    msg = base()
    msg.set_content("添付をご確認ください。")
    msg.add_attachment(
        "名前,金額\n髙橋,100\n".encode("cp932"),
        maintype="text",
        subtype="csv",
        filename="一覧.csv",
        params={"charset": "shift_jis"},
    )
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="請求書.pdf")
    msg.add_attachment(b"MZ\x90\x00", maintype="application", subtype="octet-stream", filename="a.exe")
    result, out = run(msg)
    assert out.get_content_type() == "multipart/mixed"
    attachments = list(out.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["一覧.csv"]
    assert attachments[0].get_content_type() == "text/csv"
    assert attachments[0].get_content_charset() == "utf-8"
    assert attachments[0].get_content() == "名前,金額\n髙橋,100\n"
    text = body_text(out)
    assert "請求書.pdf" in text and "a.exe" in text
    assert f"{ENV.queue_id}/3" in text and f"{ENV.queue_id}/4" in text
    assert "attachments-held=2" in result.actions
    held = {r.filename: r for r in result.held}
    assert held["請求書.pdf"].reason == "filter-error"  # claimed by the pdf filter; not a real PDF
    assert held["請求書.pdf"].filter == "pdf"
    assert held["a.exe"].detected_type != "text/plain"
    assert_safe_shape(out)


def test_text_attachment_that_is_not_text_is_held() -> None:
    msg = base()
    msg.set_content("本文")
    msg.add_attachment(
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff",
        maintype="text",
        subtype="plain",
        filename="readme.txt",
    )
    result, out = run(msg)
    assert list(out.iter_attachments()) == []
    assert result.held[0].reason == "not-text"


def test_forwarded_message_is_detoxified_recursively() -> None:
    inner = base("転送元の件名")
    inner.set_content("元のメール")
    inner.add_alternative("<p>元のメール<b>HTML</b></p><img src='x' alt='ロゴ'>", subtype="html")
    inner.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="資料.pdf")
    outer = base("Fwd: 転送")
    outer.set_content("転送します")
    outer.add_attachment(inner)
    result, out = run(outer)
    assert_safe_shape(out)
    forwarded = [a for a in out.iter_attachments() if a.get_content_type() == "message/rfc822"]
    assert len(forwarded) == 1
    inner_out = forwarded[0].get_content()
    assert inner_out["Subject"] == "転送元の件名"
    assert "DKIM-Signature" not in inner_out
    inner_text = inner_out.get_body(("plain",)).get_content()
    assert "元のメール" in inner_text
    assert all(p.get_content_type() != "text/html" for p in inner_out.walk())
    assert "資料.pdf" in body_text(out)  # held parts of the forwarded mail are in the outer notice
    assert any(r.part_id == "2.2" and r.action == "hold" for r in result.records)


def test_signed_mail_signature_dropped() -> None:
    raw = (
        b"From: a@example.jp\r\nTo: taro@city.example.lg.jp\r\nSubject: signed\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + "署名付き\r\n".encode()
        + b"--b\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMIIB\r\n--b--\r\n"
    )
    result, out = run(raw)
    assert "署名付き" in body_text(out)
    assert "電子署名は無害化により無効になるため取り除きました" in body_text(out)
    assert "attachments-held" not in result.actions
    assert out.get_content_type() == "text/plain"


def test_encrypted_mail_is_held() -> None:
    raw = (
        b"From: a@example.jp\r\nSubject: enc\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n--b--\r\n"
    )
    result, out = run(raw)
    assert [r.reason for r in result.held] == ["encrypted"]
    assert_safe_shape(out)


def test_deep_nesting_is_capped() -> None:
    depth = 300
    raw = b"From: a@example.jp\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    for i in range(depth):
        raw += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
    raw += b"Content-Type: text/plain\r\n\r\ndeep text\r\n"
    for i in reversed(range(depth)):
        raw += f"--b{i}--\r\n".encode()
    started = time.monotonic()
    result, out = run(raw)
    assert time.monotonic() - started < 60
    assert any(r.reason == "limit-exceeded" for r in result.held)
    assert_safe_shape(out)


def test_too_many_parts_are_held_unopened() -> None:
    msg = base()
    msg.set_content("本文")
    for i in range(8):
        msg.add_attachment(f"t{i}".encode(), maintype="text", subtype="plain", filename=f"{i}.txt")
    config = DetoxConfig.model_validate({"limits": {"max_mime_parts": 5}})
    result, _ = run(msg, config)
    assert sum(1 for r in result.records if r.reason == "limit-exceeded") == 4


def test_garbage_input_still_yields_a_message() -> None:
    raw = b"\x00\xff garbage without headers \r\n\r\n\xe3\x81\x82 text \x00 with NULs\r\n" + b"x" * 100_000
    result, out = run(raw)
    assert result.output
    assert_safe_shape(out)


def test_output_charset_iso2022jp_with_fallback() -> None:
    msg = base()
    msg.set_content("①㈱髙﨑 のお知らせ")
    config = DetoxConfig.model_validate({"body": {"output_charset": "iso-2022-jp"}})
    _, out = run(msg, config)
    assert out.get_content_charset() == "iso-2022-jp"
    assert b"\x1b$B" in out.get_payload(decode=True)
    msg2 = base()
    msg2.set_content("絵文字 😀 は JIS にない")
    _, out2 = run(msg2, config)
    assert out2.get_content_charset() == "utf-8"
    assert "😀" in body_text(out2)


def test_url_defang_exemption_by_sender_domain() -> None:
    msg = base()
    msg.set_content("https://partner.example/page")
    config = DetoxConfig.model_validate({"urls": {"exempt_sender_domains": ["example.jp"]}})
    _, out = run(msg, config)
    assert "https://partner.example/page" in body_text(out)
    _, out2 = run(msg)
    assert "hxxps://partner[.]example/page" in body_text(out2)


def _png_text(key: str, value: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(key, value)
    return info


def test_report_is_json_and_complete() -> None:
    msg = base()
    msg.set_content("本文")
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (200, 30, 30)).save(buf, "PNG", pnginfo=_png_text("Author", "someone"))
    msg.add_attachment(buf.getvalue(), maintype="image", subtype="png", filename="図.png")
    result, _ = run(msg)
    report = json.loads(result.report.to_json())
    assert report["queue_id"] == ENV.queue_id
    assert report["message"]["subject"] == "お知らせ"
    part = next(p for p in report["parts"] if p["filename"] == "図.png")
    assert part["declared_type"] == "image/png"
    assert part["detected_type"] == "image/png"
    assert len(part["sha256"]) == 64
    assert part["action"] == "replace" and part["filter"] == "image"
    assert part["output_sha256"] and part["output_sha256"] != part["sha256"]
    assert report["output_sha256"]


def test_report_is_typed_frozen_and_crosses_the_worker_pipe() -> None:
    msg = base()
    msg.set_content("本文")
    result, _ = run(msg)
    report = result.report
    assert report.message.subject == "お知らせ" and report.envelope == ENV
    assert [p.part_id for p in report.parts] == [r.part_id for r in result.records]
    # The JSON keys, in the order scan --report has always written them.
    assert list(report.as_dict()) == [
        "queue_id",
        "message",
        "envelope",
        "parts",
        "urls_defanged",
        "actions",
        "output_sha256",
        "output_size",
    ]
    assert list(report.as_dict()["message"]) == [
        "from",
        "to",
        "subject",
        "message_id",
        "size",
        "sha256",
        "defects",
    ]
    assert list(report.parts[0].as_dict()) == list(result.records[0].as_dict())
    assert report.parts[0].as_dict() == result.records[0].as_dict()
    assert report.to_json() == json.dumps(report.as_dict(), ensure_ascii=False, indent=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.actions = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(report)) == report  # worker -> serve


# -- the filter contract: the runner turns every failure into the configured on_error --------------


class _TestFilter(Filter):
    name: ClassVar[str] = "test"

    def applies_to(self, part: Part) -> bool:
        return part.role is Role.ATTACHMENT


class Boom(_TestFilter):
    name: ClassVar[str] = "boom"

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        raise ValueError("broken converter")


class Slow(_TestFilter):
    name: ClassVar[str] = "slow"

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        time.sleep(5)
        return Verdict(Action.HOLD, reason="never")


class Echo(_TestFilter):
    name: ClassVar[str] = "echo"

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        return Verdict(
            Action.REPLACE, output=Output(part.declared_type, part.payload, part.untrusted_filename)
        )


class Passer(_TestFilter):
    name: ClassVar[str] = "passer"

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        return Verdict(Action.PASS)


def attachment_mail() -> EmailMessage:
    msg = base()
    msg.set_content("本文")
    msg.add_attachment(b"\xd0\xcf\x11\xe0 data", maintype="application", subtype="msword", filename="x.doc")
    return msg


@pytest.mark.parametrize(
    ("flt", "reason"),
    [(Boom, "filter-error"), (Slow, "filter-timeout"), (Echo, "filter-error"), (Passer, "filter-error")],
)
def test_filter_failures_hold_the_part(flt: type[Filter], reason: str) -> None:
    config = DetoxConfig.model_validate({"filters": {flt.name: {"timeout_s": 0.5}}})
    filters = [*build_pipeline(config), flt(flt.Options())]
    # put the test filter first so it claims the attachment
    filters = [filters[-1], *filters[:-1]]
    started = time.monotonic()
    result, out = run(attachment_mail(), config, filters)
    assert time.monotonic() - started < 4
    record = next(r for r in result.records if r.filename == "x.doc")
    assert record.action == "hold"
    assert record.reason == reason
    assert record.filter == flt.name
    assert list(out.iter_attachments()) == []


def test_on_error_drop_and_tempfail() -> None:
    from detox.errors import PipelineTempFail

    config = DetoxConfig.model_validate({"filters": {"boom": {"on_error": "drop"}}})
    result, _ = run(attachment_mail(), config, [Boom(Boom.Options())])
    assert next(r for r in result.records if r.filename == "x.doc").action == "drop"
    config = DetoxConfig.model_validate({"filters": {"boom": {"on_error": "tempfail"}}})
    with pytest.raises(PipelineTempFail):
        run(attachment_mail(), config, [Boom(Boom.Options())])


# The contract on every installed filter (garbage never passes unchanged, declared reasons and
# notes, on_error, the deadline), the sandboxed ones in the real sandbox: tests/contract.


def test_outlook_rfc2231_iso2022jp_name_does_not_break_parsing() -> None:
    """policy=default raises on this header; the pipeline must still read the mail and keep the file."""
    from urllib.parse import quote

    import detox.text.charset  # noqa: F401 - registers the iso-2022-jp-ms codec

    name = quote("①資料（髙﨑）.txt".encode("iso-2022-jp-ms"), safe="")
    raw = (
        "From: a@example.jp\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n本文\r\n"
        f"--b\r\nContent-Type: text/plain; charset=utf-8; name*=ISO-2022-JP''{name}\r\n"
        f"Content-Disposition: attachment; filename*=ISO-2022-JP''{name}\r\n\r\n添付の中身\r\n--b--\r\n"
    ).encode()
    result, out = run(raw)
    assert [a.get_filename() for a in out.iter_attachments()] == ["①資料（髙﨑）.txt"]
    assert "本文" in body_text(out)
    assert not result.held


def test_html_attachment_becomes_text_with_links_defanged() -> None:
    msg = base()
    msg.set_content("案内を添付します")
    msg.add_attachment(
        "<p>申込は<a href='https://evil.example/a'>こちら</a></p><script>x()</script>",
        subtype="html",
        filename="案内.html",
    )
    result, out = run(msg)
    [att] = list(out.iter_attachments())
    assert att.get_filename() == "案内.html.txt"
    assert att.get_content_type() == "text/plain"
    content = att.get_content()
    assert "hxxps://evil[.]example/a" in content and "x()" not in content
    assert "urls-defanged=1" in result.actions
    assert "URL 1 件" in body_text(out)


def test_whole_encrypted_message_is_held_as_part_0() -> None:
    raw = (
        b"From: a@example.jp\r\nSubject: enc\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b--\r\n"
    )
    result, out = run(raw)
    assert [(r.part_id, r.reason) for r in result.held] == [("0", "encrypted")]
    assert f"{ENV.queue_id}/0" in body_text(out)


# -- nested deadlines (an archive's filter runs its members' filters) ------------------------------


def test_inner_deadline_does_not_cancel_the_outer_one() -> None:
    import time

    from detox.errors import FilterTimeout
    from detox.pipeline.deadline import deadline

    started = time.monotonic()
    with pytest.raises(FilterTimeout), deadline(0.3):
        with deadline(5.0):
            time.sleep(0.01)  # the inner block ends well within both
        time.sleep(2.0)  # the outer deadline must still fire here
    assert time.monotonic() - started < 1.5


def test_inner_deadline_never_outlives_the_outer_one() -> None:
    import time

    from detox.errors import FilterTimeout
    from detox.pipeline.deadline import deadline

    started = time.monotonic()
    with pytest.raises(FilterTimeout), deadline(0.3):
        with contextlib.suppress(FilterTimeout), deadline(10.0):
            time.sleep(3.0)  # capped by the outer's 0.3 s; the inner handler swallows it
        time.sleep(3.0)  # and the outer fires right after
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain ascii\r\n" * 50,
        "a\x01b\x0bc\x7f" * 20,  # 3 controls in 7: too many
        "x" * 98 + "\x01\x02",  # 2 in 100: at the limit
        "x" * 97 + "\x01\x02\x03",  # 3 in 100: over it
        "本文\x01です" * 30,
        "\x1b$B" + "x" * 200,
    ],
)
def test_looks_textual_counts_controls_as_the_expression_does(text: str) -> None:
    import re

    from detox.filters.text import _looks_textual
    from detox.text.charset import Decoded

    part = Part("1", Role.BODY, "text/plain", "text/plain", None, None, text.encode("utf-8"), "0" * 64, 0)
    controls = len(re.findall(r"[\x00-\x08\x0b\x0e-\x1f\x7f]", text[:65536]))
    expected = b"\x00" not in part.payload and controls <= len(text[:65536]) // 50
    assert _looks_textual(part, Decoded(text, "utf-8", "label")) is expected
