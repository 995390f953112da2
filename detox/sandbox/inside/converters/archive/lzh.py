"""LZH archives (only when the filter lets them through): lhafile's header walk, lzhlib's decoder.

lhafile is unmaintained and lzhlib crashes on some malformed input: here that is a dead sandbox
child, and the part is held.
"""

from __future__ import annotations

import importlib
import io
import struct

from detox.sandbox.inside.converters.archive.collect import Collector, Held, _CountingWriter
from detox.sandbox.inside.converters.archive.names import classify_path, decode_name


def extract_lzh(data: bytes, out: Collector) -> str:
    # No type information ships with lhafile (pure Python) or its C decoder lzhlib.
    lhafile = importlib.import_module("lhafile")
    lzhlib = importlib.import_module("lzhlib")

    if len(data) < 22 or not (data[2:4] == b"-l" and data[6:7] == b"-"):
        raise Held("archive-corrupt", "not an LZH archive")
    try:
        archive = lhafile.LhaFile(io.BytesIO(data))
    except RuntimeError as exc:  # lhafile's word for a method it does not decode (-lzs-, -lh1-...)
        raise Held("archive-unsupported", f"lzh: {exc}") from None
    except (lhafile.BadLhafile, struct.error, ValueError, IndexError, UnboundLocalError, OSError) as exc:
        raise Held("archive-corrupt", f"lzh: {type(exc).__name__}: {exc}") from None
    infos = list(archive.infolist())
    if len(infos) > out.caps.max_members:
        raise Held("limit-exceeded", f"more than {out.caps.max_members} entries")
    out.check_declared(
        [(int(i.file_size), int(i.compress_size)) for i in infos if i.compress_type != b"-lhd-"]
    )
    for info in infos:
        out.entry()
        # lhafile decoded the raw bytes as Latin-1 (and joined a level-2 directory with "/"): undo it.
        member_name = decode_name(str(info.filename).encode("latin-1", "replace"), "lzh")
        if info.compress_type == b"-lhd-":
            continue
        path, why = classify_path(member_name)
        if why:
            out.refuse(member_name, why, int(info.file_size))
            continue
        start = int(info.file_offset)
        stored = int(info.compress_size)
        sink = _CountingWriter(out, stored)
        try:
            session = lzhlib.LZHDecodeSession(io.BytesIO(data[start : start + stored]), sink, info)
            while not session.do_next():  # one block (<= 64 KiB of output) per call
                pass
            size, crc = session.output_pos, session.crc16
        except Held:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the data is bad
            raise Held("archive-corrupt", f"lzh member: {type(exc).__name__}: {exc}") from None
        if size != info.file_size or sink.size != info.file_size or crc != info.CRC:
            raise Held("archive-corrupt", f"lzh member {path!r}: size or CRC-16 mismatch")
        dt = info.date_time
        mtime = (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second) if dt is not None else None
        out.add(path, sink.getvalue(), stored, mtime)
    return "lzh"
