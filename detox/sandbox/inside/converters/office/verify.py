"""The last look: the rebuilt package re-opened and checked for anything the converter removes.

Anything found is a bug in the converter (:class:`NotInertError`): the part is held, never sent.
"""

from __future__ import annotations

import io
import zipfile

from detox.sandbox.inside.converters.office.model import (
    FORBIDDEN_NAME_FRAGMENTS,
    FORBIDDEN_TYPE_FRAGMENTS,
    OLE_MAGIC,
    ZIP_MAGIC,
    NotInertError,
)
from detox.sandbox.inside.converters.office.ooxml import (
    _DDE,
    _SAFE_LINK_SCHEMES,
    _W,
    _W_FLDSIMPLE,
    _attr,
    _scheme,
    _tags,
    parse_xml,
)


def verify(package: bytes, *, keep_hyperlinks: bool) -> None:
    """Re-open the output and check that nothing this converter removes is in it."""
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        for info in archive.infolist():
            name = info.filename
            low = f"/{name.lower()}"
            if any(fragment in low for fragment in FORBIDDEN_NAME_FRAGMENTS):
                raise NotInertError(f"a forbidden part survived: {name[:80]!r}")
            data = archive.read(info)
            if data.startswith((OLE_MAGIC, ZIP_MAGIC)):
                raise NotInertError(f"an embedded file survived: {name[:80]!r}")
            if name == "[Content_Types].xml":
                text = data.decode("utf-8").lower()
                for fragment in FORBIDDEN_TYPE_FRAGMENTS:
                    if fragment in text:
                        raise NotInertError(f"content type {fragment!r} survived")
            elif name.endswith(".rels"):
                for el in parse_xml(data, name):
                    if el.get("TargetMode") == "External":
                        kind = (el.get("Type") or "").rsplit("/", 1)[-1]
                        target = el.get("Target") or ""
                        safe = kind == "hyperlink" and _scheme(target) in _SAFE_LINK_SCHEMES
                        if not (safe and keep_hyperlinks):
                            raise NotInertError(f"an external {kind} relationship survived")
            elif name.endswith(".xml") and (b"instrText" in data or b"fldSimple" in data):
                root = parse_xml(data, name)
                instructions = "".join(
                    (_attr(el, "instr") or "") if el.tag in _W_FLDSIMPLE else (el.text or "")
                    for el in root.iter(*_tags(_W, "instrText", "delInstrText", "fldSimple"))
                )
                if _DDE.search(instructions):
                    raise NotInertError(f"a DDE field survived in {name[:80]!r}")
