"""Legacy Office files (OLE compound files): never converted here, only told apart.

An encrypted one is answered "held: encrypted"; any other "held: legacy-office" with the application
that wrote it and an inventory of what a conversion to pictures leaves behind (the office filter
converts Word, Excel and PowerPoint 97-2003 files with LibreOffice: :mod:`detox.sandbox.libreoffice`).
"""

from __future__ import annotations

import io
import struct
from typing import Any, NamedTuple


class OleProbe(NamedTuple):
    """What the sandbox tells about an OLE file (it is never converted here)."""

    reason: str  # "encrypted" | "legacy-office"
    detail: str
    application: str  # "word" | "excel" | "powerpoint" | "" (another OLE file, or unreadable)
    removed: dict[str, int]  # what a conversion to pictures leaves behind: VBA projects, macro sheets...


def probe_ole(data: bytes) -> OleProbe:
    import olefile  # type: ignore[import-untyped]  # comes with oletools; no type information

    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            return _ole_probe(ole)
    except Exception as exc:  # noqa: BLE001 - unreadable is still a legacy file to hold, never a pass
        return OleProbe("legacy-office", f"OLE file not readable ({type(exc).__name__})", "", {})


def _ole_probe(ole: Any) -> OleProbe:
    if ole.exists("EncryptionInfo") or ole.exists("EncryptedPackage"):
        return OleProbe("encrypted", "an Office package encrypted with a password (MS-OFFCRYPTO)", "", {})
    removed = _ole_inventory(ole)
    if ole.exists("WordDocument"):
        fib = _read_stream(ole, "WordDocument", 12)
        if len(fib) >= 12 and struct.unpack_from("<H", fib, 10)[0] & 0x0100:  # FibBase.fEncrypted
            return OleProbe("encrypted", "a Word 97-2003 document encrypted with a password", "word", {})
        return OleProbe("legacy-office", "a Word 97-2003 document", "word", removed)
    for stream in ("Workbook", "Book"):
        if ole.exists(stream):
            records = _biff_globals(_read_stream(ole, stream, 256 * 1024))
            if any(rtype == 0x002F for rtype, _ in records):  # FILEPASS
                return OleProbe(
                    "encrypted", "an Excel 97-2003 workbook encrypted with a password", "excel", {}
                )
            # BOUNDSHEET: lbPlyPos (4), hsState (1), dt (1): 1 is an Excel 4 macro sheet.
            sheets = sum(1 for rtype, body in records if rtype == 0x0085 and len(body) > 5 and body[5] == 1)
            if sheets:
                removed["xlm-macrosheet"] = sheets
            return OleProbe("legacy-office", "an Excel 97-2003 workbook", "excel", removed)
    if ole.exists("PowerPoint Document"):
        user = _read_stream(ole, "Current User", 64) if ole.exists("Current User") else b""
        # CurrentUserAtom.headerToken: 0xF3D1C4DF when the presentation is encrypted.
        token = struct.unpack_from("<I", user, 12)[0] if len(user) >= 16 else 0
        if ole.exists("EncryptedSummary") or token == 0xF3D1C4DF:
            detail = "a PowerPoint 97-2003 presentation encrypted with a password"
            return OleProbe("encrypted", detail, "powerpoint", {})
        return OleProbe("legacy-office", "a PowerPoint 97-2003 presentation", "powerpoint", removed)
    return OleProbe("legacy-office", "an OLE compound file (not Word, Excel or PowerPoint)", "", {})


def _ole_inventory(ole: Any) -> dict[str, int]:
    """VBA projects (a storage holding ``VBA/dir``) and embedded OLE objects (Word's ObjectPool
    entries, Excel's MBD storages), by the storage names alone. PowerPoint 97 keeps both inside its
    main stream: not counted."""
    paths = [tuple(p) for p in ole.listdir(streams=True, storages=True)]
    projects = {p[:-2] for p in paths if len(p) >= 2 and p[-1].lower() == "dir" and p[-2].upper() == "VBA"}
    objects = {p[:2] for p in paths if len(p) >= 2 and p[0] == "ObjectPool"}
    objects |= {p[:1] for p in paths if p[0].upper().startswith("MBD") and len(p) >= 2}
    counts = {"vba-project": len(projects), "ole-embedding": len(objects)}
    return {kind: n for kind, n in counts.items() if n}


def _read_stream(ole: Any, name: str, size: int) -> bytes:
    with ole.openstream(name) as stream:
        data = stream.read(size)
    return bytes(data)


def _biff_globals(data: bytes) -> list[tuple[int, bytes]]:
    """The records of a BIFF stream's workbook globals substream (up to its EOF record)."""
    records: list[tuple[int, bytes]] = []
    pos = 0
    for _ in range(10_000):
        if pos + 4 > len(data):
            break
        rtype, length = struct.unpack_from("<HH", data, pos)
        records.append((rtype, data[pos + 4 : pos + 4 + length]))
        if rtype == 0x000A and pos:  # EOF of the globals substream
            break
        pos += 4 + length
    return records
