"""Word fields: DDE, fields that fetch content, macro buttons and obfuscated keywords, removed.

A complex field (``w:fldChar`` begin ... separate ... end) may be split over many runs, nested, or have
its keyword spelled by a nested ``QUOTE`` field; :func:`_collect_fields` reads them as Word does. A
removed field loses its code and keeps its result, so the text the reader saw stays.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lxml import etree

from detox.sandbox.inside.converters.office.ooxml import (
    _DDE,
    _EXTERNAL_FIELDS,
    _W_ANY,
    _W_FLDCHAR,
    _W_FLDDATA,
    _W_FLDSIMPLE,
    _W_INSTR,
    _W_RPR,
    _W_RUN,
    _W_TEXT,
    _attr,
    _drop,
)

# How a link is judged: None to keep it, else the kind it is removed as (Disarm._link_verdict).
LinkVerdict = Callable[[str], str | None]


def disarm_fields(root: etree._Element, counts: Counter[str], link_verdict: LinkVerdict) -> None:
    """Fields that run, fetch or hide something go: their code with them, their result stays."""
    fields, simple = _collect_fields(root)
    removed: set[int] = set()
    for fld in fields:
        if any(id(a) in removed and inside for a, inside in fld.ancestors()):
            removed.add(id(fld))  # went with an enclosing field's instruction
            continue
        kind = _field_kind(
            fld.instruction(), "".join(fld.text) + fld.decoded, fld.starts_nested, link_verdict
        )
        if kind is None:
            continue
        counts[kind] += 1
        removed.add(id(fld))
        for el in (fld.begin, *fld.zone, fld.separate, fld.end):
            if el is not None:
                _drop(el)
    for el in simple:
        parent = el.getparent()
        if parent is None:
            continue
        instr = _attr(el, "instr") or ""
        kind = _field_kind(instr, instr, False, link_verdict)
        if kind is None:
            continue
        counts[kind] += 1
        position = parent.index(el)
        for child in list(el):
            if child.tag in _W_FLDDATA:
                continue
            parent.insert(position, child)
            position += 1
        _drop(el)


def _field_kind(
    instruction: str, everything: str, starts_nested: bool, link_verdict: LinkVerdict
) -> str | None:
    if _DDE.search(everything):
        return "dde"
    if starts_nested:
        return "obfuscated-field"
    keyword, args = _field_keyword(instruction)
    if keyword in ("DDE", "DDEAUTO"):
        return "dde"
    if keyword in _EXTERNAL_FIELDS:
        return "external-link"
    if keyword == "MACROBUTTON":
        return "macro-binding"
    if keyword == "HYPERLINK":
        target = _hyperlink_field_target(args)
        return None if target is None else link_verdict(target)
    return None


@dataclass(eq=False)
class _Field:
    """One complex field (w:fldChar begin ... separate ... end)."""

    begin: etree._Element
    parent: _Field | None
    in_parent_instruction: bool
    own: list[str] = field(default_factory=list)  # its own w:instrText
    text: list[str] = field(default_factory=list)  # all text in its instruction, nested fields' included
    zone: list[etree._Element] = field(default_factory=list)  # everything in its instruction
    starts_nested: bool = False
    decoded: str = ""  # what nested QUOTE fields spell out
    separate: etree._Element | None = None
    end: etree._Element | None = None
    in_instruction: bool = True

    def instruction(self) -> str:
        return "".join(self.own)

    def ancestors(self) -> Iterator[tuple[_Field, bool]]:
        """(ancestor, whether this field lies in the ancestor's instruction)."""
        node: _Field = self
        while node.parent is not None:
            # Inside the ancestor's instruction exactly when the chain's child of it is.
            yield node.parent, node.in_parent_instruction
            node = node.parent


def _collect_fields(root: etree._Element) -> tuple[list[_Field], list[etree._Element]]:
    fields: list[_Field] = []
    simple: list[etree._Element] = []
    stack: list[_Field] = []
    for el in root.iter(*_W_ANY):
        tag = el.tag
        open_instructions = [f for f in stack if f.in_instruction]
        if tag in _W_FLDCHAR:
            kind = _attr(el, "fldCharType")
            if kind == "begin":
                if stack and stack[-1].in_instruction and not "".join(stack[-1].own).strip():
                    stack[-1].starts_nested = True
                for f in open_instructions:
                    f.zone.append(el)
                new = _Field(el, stack[-1] if stack else None, bool(stack) and stack[-1].in_instruction)
                stack.append(new)
                fields.append(new)
            elif kind == "separate" and stack:
                top = stack[-1]
                for f in open_instructions:
                    if f is not top:
                        f.zone.append(el)
                if top.in_instruction:
                    top.separate = el
                    top.in_instruction = False
            elif kind == "end" and stack:
                top = stack.pop()
                top.end = el
                for f in stack:
                    if f.in_instruction:
                        f.zone.append(el)
        elif tag in _W_INSTR:
            text = el.text or ""
            if stack and stack[-1].in_instruction:
                stack[-1].own.append(text)
            for f in open_instructions:
                f.text.append(text)
                f.zone.append(el)
        elif tag in _W_FLDSIMPLE:
            simple.append(el)
            for f in open_instructions:
                f.text.append(_attr(el, "instr") or "")
                f.zone.append(el)
        elif open_instructions and tag not in _W_RPR:
            parent = el.getparent()
            if parent is not None and parent.tag in _W_RUN:
                for f in open_instructions:
                    f.zone.append(el)
                    if tag in _W_TEXT:
                        f.text.append(el.text or "")
    for fld in fields:
        keyword, args = _field_keyword(fld.instruction())
        if keyword == "QUOTE" and args and all(a.isdigit() for a in args):
            spelled = "".join(chr(int(a)) for a in args if int(a) < 0x110000)
            node = fld.parent
            while node is not None:
                node.decoded += spelled
                node = node.parent
    return fields, simple


_FIELD_TOKEN = re.compile(r'"([^"]*)"|(\S+)')


def _hyperlink_field_target(args: list[str]) -> str | None:
    """The address of a HYPERLINK field (None for a jump to a bookmark only: ``\\l "name"``)."""
    expects_value = False
    for arg in args:
        if expects_value:
            expects_value = False
            continue
        if arg.startswith("\\"):
            expects_value = arg.lower() in ("\\l", "\\o", "\\t")
            continue
        return arg
    return None


def _field_keyword(instruction: str) -> tuple[str, list[str]]:
    tokens = [bare or quoted for quoted, bare in _FIELD_TOKEN.findall(instruction)]
    if not tokens:
        return "", []
    return tokens[0].upper(), tokens[1:]
