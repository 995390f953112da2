"""Zip archives: :mod:`zipfile`, with encryption (PPAP) found anywhere in the archive holding it whole.

Also tells apart the zips that are really documents (OOXML, ODF, EPUB) or programs (Java, Android).
"""

from __future__ import annotations

import io
import lzma
import stat
import struct
import zipfile
import zlib

from detox.sandbox.inside.converters.archive.collect import Collector, Held
from detox.sandbox.inside.converters.archive.names import _printable, classify_path, decode_name

_ZIP_ENCRYPTED = 0x0001
_ZIP_STRONG_ENCRYPTION = 0x0040
_ZIP_UTF8 = 0x0800
_ZIP_CD_ENCRYPTED = 0x2000
_ZIP_AES = 99
_UNIX = 3


def _zip_unicode_path(info: zipfile.ZipInfo, raw: bytes) -> str | None:
    """The Info-ZIP Unicode Path extra field (0x7075), when its CRC matches the raw name."""
    extra = info.extra
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if tag == 0x7075 and len(body) >= 5 and body[0] == 1:
            (crc,) = struct.unpack_from("<I", body, 1)
            if crc == zlib.crc32(raw):
                try:
                    return body[5:].decode("utf-8")
                except UnicodeDecodeError:
                    return None
    return None


def zip_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its author meant it (see the module docstring)."""
    if info.flag_bits & _ZIP_UTF8:
        return info.orig_filename
    raw = info.orig_filename.encode("cp437")  # zipfile decoded the raw bytes as CP437: undo it
    return _zip_unicode_path(info, raw) or decode_name(raw, "cp437")


def _zip_document_kind(names: set[str]) -> str | None:
    if "[Content_Types].xml" in names:
        return "archive-is-document"  # OOXML (docx, xlsx, pptx...), XPS
    if "mimetype" in names and any(n.startswith("META-INF/") for n in names):
        return "archive-is-document"  # ODF, EPUB
    if "META-INF/MANIFEST.MF" in names and any(n.endswith(".class") for n in names):
        return "executable"  # Java archive
    if "AndroidManifest.xml" in names and "classes.dex" in names:
        return "executable"
    return None


def _zip_declared_entries(data: bytes) -> int | None:
    """The entry count of the end-of-central-directory record, read before zipfile builds its list."""
    pos = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 65535))
    if pos < 0 or pos + 22 > len(data):
        return None
    (count,) = struct.unpack_from("<H", data, pos + 10)
    return None if count == 0xFFFF else count


def extract_zip(data: bytes, out: Collector) -> str:
    declared = _zip_declared_entries(data)
    if declared is not None and declared > out.caps.max_members:
        raise Held("limit-exceeded", f"the directory declares {declared} entries")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except NotImplementedError as exc:  # a zip version or feature zipfile does not read (spanned...)
        raise Held("archive-unsupported", f"zip: {exc}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error) as exc:
        raise Held("archive-corrupt", f"zip: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > out.caps.max_members:
            raise Held("limit-exceeded", f"more than {out.caps.max_members} entries")
        for info in infos:
            if info.flag_bits & (_ZIP_ENCRYPTED | _ZIP_STRONG_ENCRYPTION | _ZIP_CD_ENCRYPTED) or (
                info.compress_type == _ZIP_AES
            ):
                raise Held(
                    "encrypted-archive", f"zip member {_printable(info.orig_filename)[:80]!r} is encrypted"
                )
        names = [zip_name(info) for info in infos]
        kind = _zip_document_kind(set(names))
        if kind is not None:
            raise Held(kind, "zip container of a document or a program")
        out.check_declared([(i.file_size, i.compress_size) for i in infos if not i.is_dir()])
        for info, member_name in zip(infos, names, strict=True):
            out.entry()
            mode = info.external_attr >> 16
            is_dir = info.is_dir() or (member_name.endswith(("/", "\\")) and info.file_size == 0)
            if info.create_system == _UNIX and mode and not is_dir:
                kind_of = stat.S_IFMT(mode)
                if kind_of == stat.S_IFLNK:
                    out.refuse(member_name, "symlink", info.file_size)
                    continue
                if kind_of in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
                    out.refuse(member_name, "device", info.file_size)
                    continue
            if is_dir:
                continue
            path, why = classify_path(member_name)
            if why:
                out.refuse(member_name, why, info.file_size)
                continue
            try:
                with zf.open(info) as stream:
                    content = out.read(stream.read, info.compress_size)
            except NotImplementedError:
                out.refuse(member_name, "unsupported-method", info.file_size)
                continue
            except (
                zipfile.BadZipFile,
                EOFError,
                zlib.error,
                lzma.LZMAError,
                OSError,
                struct.error,
                ValueError,
                RuntimeError,
            ) as exc:
                raise Held("archive-corrupt", f"zip member: {exc}") from None
            out.add(path, content, info.compress_size, info.date_time)
    return "zip"
