"""7z archives: py7zr, extracted through a writer factory whose writer counts every byte."""

from __future__ import annotations

import io
import lzma
import struct
import zlib
from typing import Any

from detox.sandbox.inside.converters.archive.collect import Collector, Held, _CountingWriter
from detox.sandbox.inside.converters.archive.names import _from_epoch, classify_path


def extract_7z(data: bytes, out: Collector) -> str:
    import py7zr  # imported here: only 7z needs it, and it is the slowest import of all
    from py7zr import exceptions as p7exc
    from py7zr.io import Py7zIO, WriterFactory

    class Writer(Py7zIO):
        def __init__(self, sink: _CountingWriter) -> None:
            self.sink = sink

        def write(self, s: bytes | bytearray) -> int:
            return self.sink.write(s)

        def read(self, size: int | None = None) -> bytes:
            return b""

        def seek(self, offset: int, whence: int = 0) -> int:
            return 0

        def flush(self) -> None:
            return None

        def size(self) -> int:
            return self.sink.size

    class Factory(WriterFactory):
        def __init__(self) -> None:
            self.created: list[tuple[str, _CountingWriter]] = []

        def create(self, filename: str) -> Py7zIO:
            sink = _CountingWriter(out, None)
            self.created.append((filename, sink))
            return Writer(sink)

    corrupt: tuple[type[Exception], ...] = (
        p7exc.Bad7zFile,
        p7exc.CrcError,
        p7exc.DecompressionError,
        p7exc.InternalError,
        EOFError,
        lzma.LZMAError,
        zlib.error,
        struct.error,
        ValueError,
        IndexError,
        KeyError,
        TypeError,
    )
    try:
        archive = py7zr.SevenZipFile(io.BytesIO(data), mode="r", max_extract_size=out.caps.max_total_bytes)
    except p7exc.PasswordRequired:
        raise Held("encrypted-archive", "7z headers are encrypted") from None
    except p7exc.UnsupportedCompressionMethodError as exc:
        raise Held("archive-unsupported", f"7z: {exc}") from None
    except corrupt as exc:
        raise Held("archive-corrupt", f"7z: {type(exc).__name__}: {exc}") from None
    with archive:
        if archive.needs_password():
            raise Held("encrypted-archive", "7z content is encrypted")
        files = list(archive.files)
        if len(files) > out.caps.max_members:
            raise Held("limit-exceeded", f"more than {out.caps.max_members} entries")
        targets: list[tuple[str, str, Any]] = []  # (archive name, safe path, ArchiveFile)
        declared: list[tuple[int, int | None]] = []
        for f in files:
            out.entry()
            member_name = str(f.filename)  # 7z stores UTF-16: nothing to guess (lone surrogates are refused)
            if f.is_directory:
                continue
            if f.is_symlink or f.is_junction:
                out.refuse(member_name, "symlink", 0)
                continue
            if f.is_socket:
                out.refuse(member_name, "device", 0)
                continue
            path, why = classify_path(member_name)
            if why:
                out.refuse(member_name, why, int(f.uncompressed or 0))
                continue
            targets.append((str(f.filename), path, f))
            declared.append((int(f.uncompressed or 0), None))
        out.check_declared(declared)
        factory = Factory()
        if targets:
            try:
                archive.extract(targets=[t[0] for t in targets], factory=factory)
            except p7exc.DecompressionBombError:
                raise Held("limit-exceeded", "7z members are larger than the cap in all") from None
            except p7exc.PasswordRequired:
                raise Held("encrypted-archive", "7z content is encrypted") from None
            except p7exc.UnsupportedCompressionMethodError as exc:
                raise Held("archive-unsupported", f"7z: {exc}") from None
            except corrupt as exc:
                raise Held("archive-corrupt", f"7z: {type(exc).__name__}: {exc}") from None
        # py7zr names each writer after the member's path with "." and empty segments dropped, and
        # "_N" added to a repeated name (counted over every entry of that name, in archive order).
        # Match the writers back the same way, and refuse any surprise.
        by_name: dict[str, list[_CountingWriter]] = {}
        for created_name, sink in factory.created:
            by_name.setdefault(created_name, []).append(sink)
        wanted = {t[0] for t in targets}
        chosen = {id(t[2]): t for t in targets}
        seen: dict[str, int] = {}
        for f in files:
            archive_name = str(f.filename)
            if archive_name not in wanted:
                continue
            if archive_name in seen:
                key = f"{archive_name}_{seen[archive_name]}"
                seen[archive_name] += 1
            else:
                key = archive_name
                seen[archive_name] = 0
            target = chosen.get(id(f))
            if target is None:
                continue
            path = target[1]
            queue = by_name.get("/".join(p for p in key.split("/") if p not in ("", ".")))
            if not queue:
                raise Held("archive-corrupt", f"7z member {path!r} was not extracted")
            sink = queue.pop(0)
            if sink.size != int(f.uncompressed or 0):
                raise Held("archive-corrupt", f"7z member {path!r} size differs from its header")
            mtime = None
            if f.lastwritetime is not None:
                try:
                    mtime = _from_epoch(f.lastwritetime.totimestamp())
                except (OverflowError, OSError, ValueError):
                    mtime = None
            compressed = f.compressed
            out.add(path, sink.getvalue(), int(compressed) if isinstance(compressed, int) else None, mtime)
    return "7z"
