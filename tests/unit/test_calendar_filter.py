"""Calendar files: Outlook invitations and .ics attachments become text; nothing importable crosses."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.pipelines import pipeline_runner

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.pipeline.runner import DetoxResult

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "mail"
ENV = Envelope("0190000000000CAL00", "soumu@pref.example.lg.jp", ("taro@city.example.lg.jp",))

INVITE = """BEGIN:VCALENDAR\r
PRODID:-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN\r
VERSION:2.0\r
METHOD:REQUEST\r
BEGIN:VTIMEZONE\r
TZID:Tokyo Standard Time\r
BEGIN:STANDARD\r
DTSTART:16010101T000000\r
TZOFFSETFROM:+0900\r
TZOFFSETTO:+0900\r
END:STANDARD\r
END:VTIMEZONE\r
BEGIN:VEVENT\r
ORGANIZER;CN=髙橋 一郎:mailto:takahashi@pref.example.lg.jp\r
ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=山田 太郎:mailto:taro@city\r
 .example.lg.jp\r
ATTENDEE;PARTSTAT=ACCEPTED;CN=㈱髙﨑建設:mailto:info@takasaki.example.jp\r
DESCRIPTION:①議題：防災訓練の日程\\n②資料はこちら https://evil.example.com/login\r
 .php\\n以上、よろしくお願いいたします。\r
SUMMARY:【会議】①防災訓練打合せ（㈱髙﨑建設）\r
DTSTART;TZID=Tokyo Standard Time:20261201T100000\r
DTEND;TZID=Tokyo Standard Time:20261201T113000\r
LOCATION:本庁舎 第３会議室\r
UID:040000008200E00074C5B7101A82E00800000000\r
ATTACH;FMTTYPE=application/octet-stream;ENCODING=BASE64;VALUE=BINARY;X-FILENAME=run.exe:TVqQAAMAAAAEAAAA\r
BEGIN:VALARM\r
ACTION:DISPLAY\r
DESCRIPTION:REMINDER\r
TRIGGER;RELATED=START:-PT15M\r
END:VALARM\r
END:VEVENT\r
END:VCALENDAR\r
"""


run = pipeline_runner(ENV)


def outlook_invite() -> bytes:
    """multipart/alternative: text/plain, text/html and text/calendar; method=REQUEST (Outlook)."""
    msg = EmailMessage()
    msg["From"] = "髙橋 一郎 <takahashi@pref.example.lg.jp>"
    msg["To"] = "taro@city.example.lg.jp"
    msg["Subject"] = "【会議】①防災訓練打合せ"
    msg.set_content("防災訓練の打合せを行います。", charset="iso-2022-jp")
    msg.add_alternative("<p>防災訓練の打合せを行います。</p>", subtype="html")
    msg.add_alternative(
        INVITE.encode("utf-8"), maintype="text", subtype="calendar", params={"method": "REQUEST"}
    )
    return msg.as_bytes()


def attachments(result: DetoxResult) -> dict[str, str]:
    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    found = {}
    for part in out.iter_attachments():
        assert part.get_content_type() == "text/plain", part.get_content_type()
        found[str(part.get_filename())] = part.get_content()
    return found


def body(result: DetoxResult) -> str:
    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    part = out.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_outlook_invitation_becomes_a_text_attachment() -> None:
    result = run(outlook_invite())
    record = next(r for r in result.records if r.filter == "calendar")
    assert record.action == "replace"
    assert record.removed == {"attachment": 1, "alarm": 1}
    ((name, text),) = attachments(result).items()
    assert name.endswith(".ics.txt")
    assert "種別: 会議出席依頼" in text
    assert "件名: 【会議】①防災訓練打合せ（㈱髙﨑建設）" in text
    assert "開始: 2026-12-01 10:00" in text and "終了: 2026-12-01 11:30" in text
    assert "場所: 本庁舎 第３会議室" in text
    assert "主催者: 髙橋 一郎 <takahashi@pref.example.lg.jp>" in text
    assert "出席者: 山田 太郎 <taro@city.example.lg.jp>（未回答）" in text
    assert "出席者: ㈱髙﨑建設 <info@takasaki.example.jp>（承諾）" in text
    assert "  ②資料はこちら hxxps://evil[.]example[.]com/login.php" in text
    assert "BEGIN:" not in text and "TVqQ" not in text and "run.exe" not in text
    assert "防災訓練の打合せを行います。" in body(result)
    assert "予定表ファイル（.ics）1 件" in body(result)
    assert "calendar-converted=1" in result.actions


def test_utc_times_are_shown_in_japan_time_and_dates_as_all_day() -> None:
    ics = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nSUMMARY:UTC\r\nDTSTART:20261201T010000Z\r\n"
        "DTEND:20261201T020000Z\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nSUMMARY:終日\r\nDTSTART;VALUE=DATE:20261224\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    text = attachments(run(attachment_mail(ics.encode("utf-8"), "予定.ics")))["予定.ics.txt"]
    assert "開始: 2026-12-01 10:00（日本時間）" in text
    assert "開始: 2026-12-24（終日）" in text


def attachment_mail(
    data: bytes, filename: str, subtype: str = "calendar", charset: str | None = None
) -> bytes:
    msg = EmailMessage()
    msg["From"] = "soumu@pref.example.lg.jp"
    msg["Subject"] = "予定"
    msg.set_content("予定を送ります。")
    params = {"charset": charset} if charset else {}
    msg.add_attachment(data, maintype="text", subtype=subtype, filename=filename, params=params)
    return msg.as_bytes()


def test_cp932_calendar_with_label_is_decoded() -> None:
    ics = INVITE.replace("METHOD:REQUEST\r\n", "")
    raw = attachment_mail(ics.encode("cp932"), "会議.ics", charset="shift_jis")
    text = attachments(run(raw))["会議.ics.txt"]
    assert "件名: 【会議】①防災訓練打合せ（㈱髙﨑建設）" in text
    assert "種別" not in text


def test_urls_stay_clickable_for_an_exempt_sender() -> None:
    config = DetoxConfig.model_validate({"urls": {"exempt_sender_domains": ["pref.example.lg.jp"]}})
    text = next(iter(attachments(run(outlook_invite(), config)).values()))
    assert "https://evil.example.com/login.php" in text


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not a calendar", "unparsable"),
        (
            b"BEGIN:VCALENDAR\r\n"
            + b"BEGIN:VEVENT\r\nSUMMARY:x\r\nEND:VEVENT\r\n" * 600
            + b"END:VCALENDAR\r\n",
            "limit-exceeded",
        ),
        (
            b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:x\r\nEND:VEVENT\r\n" + b"X" * (3 * 1024 * 1024),
            "limit-exceeded",
        ),
    ],
    ids=["not-a-calendar", "too-many-components", "too-large"],
)
def test_what_cannot_be_rendered_is_held(data: bytes, reason: str) -> None:
    result = run(attachment_mail(data, "x.ics"))
    record = next(r for r in result.records if r.role == "attachment")
    assert (record.action, record.reason) == ("hold", reason)
    assert not attachments(result)


@pytest.mark.parametrize(
    "data",
    [b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:x\r\n", b"BEGIN:VCALENDAR\r\n:::\r\nEND:VCALENDAR\r\n"],
    ids=["unterminated", "bad-content-line"],
)
def test_a_calendar_icalendar_cannot_read_is_held_by_the_runner(data: bytes) -> None:
    result = run(attachment_mail(data, "x.ics"))
    record = next(r for r in result.records if r.role == "attachment")
    assert (record.action, record.reason) == ("hold", "filter-error")
    assert not attachments(result)


def test_the_fixture_invitation() -> None:
    raw = (FIXTURES / "outlook-invite-iso2022jp.eml").read_bytes()
    result = run(raw)
    ((name, text),) = attachments(result).items()
    assert name == "invite.ics.txt"
    assert "件名: ①住民説明会（髙﨑地区）" in text
    assert "場所: ㈱髙﨑商事 会議室" in text
    assert "住民説明会のご案内です。" in body(result)


def test_the_notice_lists_what_was_converted_with_both_hashes() -> None:
    import hashlib

    raw = (FIXTURES / "outlook-invite-iso2022jp.eml").read_bytes()
    result = run(raw)
    record = next(r for r in result.records if r.filter == "calendar")
    src = email.message_from_bytes(raw, policy=email.policy.default)
    ics = next(p for p in src.walk() if p.get_content_type() == "text/calendar").get_payload(decode=True)
    assert record.sha256 == hashlib.sha256(ics).hexdigest()
    (converted,) = attachments(result).values()
    notice = body(result)
    assert "・invite.ics（" in notice and "→ invite.ics.txt（予定表をテキストに変換） 除去: alarm=1" in notice
    assert f"SHA-256 元: {record.sha256}" in notice
    assert f"SHA-256 後: {hashlib.sha256(converted.encode('utf-8')).hexdigest()}" in notice
    assert result.report.parts[-1].output_filename == "invite.ics.txt"
    assert result.report.parts[-1].conversion == "calendar-converted"
