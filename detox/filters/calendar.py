"""Calendar files (iCalendar: .ics, text/calendar, meeting invitations) → a readable text attachment.

An .ics is text, but not inert: mail clients import invitations on sight, and a calendar can carry
attached files (ATTACH, inline base64), alarms that run procedures or send mail (VALARM), and links
that show up as clickable in the calendar. What crosses is a plain UTF-8 text attachment written
here: each event's summary, time (converted to Japan time), place, organizer, attendees, recurrence
and description, with URLs defanged like the body. Nothing can be imported into a calendar from
it; the original stays in the quarantine.

Parsing uses the icalendar library (pure Python) in-process, like the HTML converter: caps on
bytes, components and text length bound the work, and the runner's deadline bounds the time. A file
icalendar cannot read raises, and the runner holds the part.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import icalendar
from pydantic import BaseModel, ConfigDict, Field

from detox.filters.base import Filter, FilterContext
from detox.pipeline.model import Action, Output, Part, Role, Verdict
from detox.text.charset import decode_body
from detox.text.html import strip_invisible
from detox.text.urls import defang_urls

CALENDAR_TYPES = frozenset({"text/calendar", "application/ics", "text/x-vcalendar", "application/x-ical"})
CALENDAR_EXTENSIONS = frozenset({"ics", "ical", "icalendar", "ifb", "vcs"})
_JST = ZoneInfo("Asia/Tokyo")
_METHODS = {
    "REQUEST": "会議出席依頼",
    "CANCEL": "会議の取り消し",
    "REPLY": "出席の返信",
    "COUNTER": "日時変更の提案",
    "PUBLISH": "予定の公開",
    "REFRESH": "最新情報の依頼",
    "ADD": "予定の追加",
    "DECLINECOUNTER": "変更提案の辞退",
}
_KINDS = {"VEVENT": "予定", "VTODO": "タスク", "VJOURNAL": "メモ"}
_PARTSTAT = {
    "ACCEPTED": "承諾",
    "DECLINED": "辞退",
    "TENTATIVE": "仮承諾",
    "NEEDS-ACTION": "未回答",
    "DELEGATED": "委任",
}


class CalendarOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(default=2 * 1024 * 1024, gt=0)  # larger calendars are held
    max_components: int = Field(default=500, gt=0)  # events, to-dos, alarms... in one file
    max_attendees: int = Field(default=200, gt=0)  # listed per event; the rest counted
    max_description_chars: int = Field(default=20_000, gt=0)  # per event


class TooLarge(Exception):
    """Over a cap: the part is held as limit-exceeded."""


class CalendarFilter(Filter[CalendarOptions]):
    """iCalendar attachments (and the text/calendar part of an Outlook invitation) → text."""

    name: ClassVar[str] = "calendar"
    reasons: ClassVar[tuple[str, ...]] = ("limit-exceeded", "unparsable")
    notes: ClassVar[tuple[str, ...]] = ("calendar-converted", "urls-defanged")

    def applies_to(self, part: Part) -> bool:
        if part.role is not Role.ATTACHMENT:
            return False
        return (
            part.declared_type in CALENDAR_TYPES
            or part.detected_type in CALENDAR_TYPES
            or part.extension in CALENDAR_EXTENSIONS
        )

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        options = self.options
        if part.size > options.max_bytes:
            return Verdict(Action.HOLD, reason="limit-exceeded")
        decoded = decode_body(part.payload, part.charset_label)
        if "BEGIN:VCALENDAR" not in decoded.text[:4096].upper():
            return Verdict(Action.HOLD, reason="unparsable")
        try:
            text, removed = render(decoded.text, options)
        except TooLarge:
            return Verdict(Action.HOLD, reason="limit-exceeded")
        # The event's texts are the sender's: no control or invisible character reaches the reader.
        text, invisible, control = strip_invisible(text)
        removed.update({k: v for k, v in (("invisible", invisible), ("control", control)) if v})
        notes = ["calendar-converted"]
        if ctx.defang_urls:
            defanged = defang_urls(text)
            text = defanged.text
            notes.extend(["urls-defanged"] * defanged.count)
        return Verdict(
            Action.REPLACE,
            output=Output("text/plain", text.encode("utf-8"), output_name(part.untrusted_filename), "utf-8"),
            removed=removed,
            notes=tuple(notes),
            charset=decoded.charset,
        )


def output_name(untrusted_filename: str | None) -> str:
    """``招集.ics`` → ``招集.ics.txt``: the reader sees what it was, and no client imports it."""
    return f"{untrusted_filename or '予定表.ics'}.txt"


def render(source: str, options: CalendarOptions) -> tuple[str, dict[str, int]]:
    """The calendar as Japanese text, and counts of what did not cross (attachments, alarms)."""
    calendars = icalendar.Calendar.from_ical(source, multiple=True)
    if not calendars:  # e.g. an unterminated VCALENDAR: icalendar returns nothing rather than raise
        raise ValueError("no complete VCALENDAR")
    removed = {"attachment": 0, "alarm": 0, "component": 0, "unreadable-property": 0}
    seen = 0
    blocks: list[str] = []
    header = "予定表ファイル（iCalendar）の内容をテキストにしたものです。予定表には取り込めません。"
    for calendar in calendars:
        method = str(calendar.get("METHOD", "")).upper()
        if method:
            header += f"\n種別: {_METHODS.get(method, method)}"
        for component in calendar.walk():
            seen += 1
            removed["unreadable-property"] += len(component.errors)
            if seen > options.max_components:
                raise TooLarge(f"more than {options.max_components} components")
            kind = component.name
            if kind == "VALARM":
                removed["alarm"] += 1
            elif kind in _KINDS:
                removed["attachment"] += len(_as_list(component.get("ATTACH")))
                blocks.append(_component_text(component, len(blocks) + 1, options))
            elif kind not in ("VCALENDAR", "VTIMEZONE", "STANDARD", "DAYLIGHT", "VFREEBUSY"):
                removed["component"] += 1
    if not blocks:
        blocks.append("（予定の項目はありませんでした）")
    return header + "\n\n" + "\n\n".join(blocks) + "\n", {k: v for k, v in removed.items() if v}


def _component_text(component: Any, number: int, options: CalendarOptions) -> str:
    lines = [f"■ {_KINDS[component.name]} {number}"]

    def add(label: str, value: str | None) -> None:
        if value:
            lines.append(f"{label}: {_one_line(value)}")

    add("件名", _text(component.get("SUMMARY")))
    start, end = component.get("DTSTART"), component.get("DTEND") or component.get("DUE")
    add("開始", _when(start))
    add("終了" if component.name != "VTODO" else "期限", _when(end))
    if start is not None and end is None and component.get("DURATION") is not None:
        add("所要時間", str(component.get("DURATION").dt))
    add("場所", _text(component.get("LOCATION")))
    add("主催者", _person(component.get("ORGANIZER")))
    attendees = _as_list(component.get("ATTENDEE"))
    for attendee in attendees[: options.max_attendees]:
        add("出席者", _person(attendee))
    if len(attendees) > options.max_attendees:
        lines.append(f"出席者: ほか {len(attendees) - options.max_attendees} 名")
    rule = component.get("RRULE")
    if rule is not None:
        add("繰り返し", rule.to_ical().decode("utf-8", "replace"))
    add("状態", _text(component.get("STATUS")))
    for url in _as_list(component.get("URL")):
        add("URL", _text(url))
    description = _text(component.get("DESCRIPTION"))
    if description:
        description = description[: options.max_description_chars]
        lines.append("説明:")
        lines.extend("  " + line for line in description.splitlines())
    return "\n".join(lines)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _text(value: Any) -> str | None:
    return None if value is None else str(value).strip() or None


def _one_line(value: str) -> str:
    return " ".join(value.split())


def _when(prop: Any) -> str | None:
    """Dates as they are; times in Japan time (floating times as written, marked so)."""
    if prop is None:
        return None
    value = getattr(prop, "dt", None)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.strftime("%Y-%m-%d %H:%M（タイムゾーン指定なし）")
        return value.astimezone(_JST).strftime("%Y-%m-%d %H:%M（日本時間）")
    if isinstance(value, dt.date):
        return value.strftime("%Y-%m-%d（終日）")
    return _text(value)


def _person(prop: Any) -> str | None:
    if prop is None:
        return None
    address = str(prop)
    if address.lower().startswith("mailto:"):
        address = address[7:]
    params = getattr(prop, "params", {})
    name = params.get("CN")
    status = _PARTSTAT.get(str(params.get("PARTSTAT", "")).upper())
    shown = f"{name} <{address}>" if name else address
    return f"{shown}（{status}）" if status else shown
