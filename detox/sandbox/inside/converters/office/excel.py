"""Excel workbooks: removed sheets taken out of the workbook, auto-macros, DDE and external formulas.

The sheets whose part was removed (macro sheets, dialog sheets) go from ``workbook.xml`` with the
defined names that point into them, and the sheet indices are renumbered; very hidden sheets become
hidden ones. In worksheets, formulas into external workbooks and DDE calls keep only their cached value.
"""

from __future__ import annotations

from collections import Counter

from lxml import etree

from detox.sandbox.inside.converters.office.model import PackageRejected
from detox.sandbox.inside.converters.office.ooxml import (
    _AUTO_NAME,
    _EXTERNAL_BOOK_REF,
    _R,
    _S,
    _S_DEFINED_NAME,
    _S_FORMULA,
    _S_WORKBOOK_VIEW,
    _STRING_LITERAL,
    _drop,
    _find,
    _is,
    _split,
)


def disarm_workbook(root: etree._Element, gone: set[str], counts: Counter[str]) -> None:
    """Sheets whose part was removed go, with the names and indices that refer to them."""
    if not _is(root, _S, "workbook"):
        return
    sheets_el = next((c for c in root if _is(c, _S, "sheets")), None)
    sheets = [c for c in sheets_el if _is(c, _S, "sheet")] if sheets_el is not None else []
    removed_positions: set[int] = set()
    removed_names: set[str] = set()
    for position, sheet in enumerate(sheets):
        if any(_split(k)[0] in _R and v in gone for k, v in sheet.attrib.items()):
            removed_positions.add(position)
            removed_names.add((sheet.get("name") or "").casefold())
            _drop(sheet)
    kept = [s for i, s in enumerate(sheets) if i not in removed_positions]
    if sheets and not kept:
        raise PackageRejected("no worksheet left in the workbook")
    survivors = [i for i in range(len(sheets)) if i not in removed_positions]
    renumber = {old: new for new, old in enumerate(survivors)}
    for sheet in kept:
        if sheet.get("state") == "veryHidden":
            sheet.set("state", "hidden")
            counts["very-hidden-sheet"] += 1
    if kept and all(s.get("state") in ("hidden", "veryHidden") for s in kept):
        del kept[0].attrib["state"]
    for el in _find(root, _S_DEFINED_NAME):
        _defined_name(el, removed_names, renumber, counts)
    for el in _find(root, _S_WORKBOOK_VIEW):
        for attr in ("activeTab", "firstSheet"):
            value = el.get(attr)
            if value is not None and value.isdigit():
                el.set(attr, str(renumber.get(int(value), 0)))


def _defined_name(
    el: etree._Element, removed_sheets: set[str], renumber: dict[int, int], counts: Counter[str]
) -> None:
    name = el.get("name") or ""
    if _AUTO_NAME.match(name):
        counts["auto-macro"] += 1
        _drop(el)
        return
    local = el.get("localSheetId")
    if local is not None:
        if not local.isdigit() or int(local) not in renumber:
            _drop(el)
            return
        el.set("localSheetId", str(renumber[int(local)]))
    formula = _STRING_LITERAL.sub("", el.text or "").casefold()
    quoted = {"'" + sheet.replace("'", "''") + "'!" for sheet in removed_sheets if sheet}
    plain = {sheet + "!" for sheet in removed_sheets if sheet}
    if "|" in formula:
        counts["dde"] += 1
        _drop(el)
    elif _EXTERNAL_BOOK_REF.search(formula) or any(ref in formula for ref in quoted | plain):
        _drop(el)


def _external_formulas(root: etree._Element) -> int:
    """Formulas that refer to an external workbook (``[1]Sheet!A1``: all external links are removed)
    or are DDE calls (``cmd|'/c calc'!A0``: ``|`` is no operator in Excel formulas otherwise) lose the
    formula and keep the cached value. Returns how many were DDE calls."""
    shared: set[str] = set()
    dde = 0
    for el in _find(root, _S_FORMULA):
        text = el.text or ""
        if "[" not in text and "|" not in text:
            continue
        code = _STRING_LITERAL.sub("", text)
        if "|" in code or _EXTERNAL_BOOK_REF.search(code):
            dde += "|" in code
            if el.get("t") == "shared" and el.get("si") is not None:
                shared.add(el.get("si") or "")
            _drop(el)
    if shared:
        for el in _find(root, _S_FORMULA):
            if el.get("t") == "shared" and el.get("si") in shared:
                _drop(el)
    return dde
