"""Archive converter: list and extract ONE level of an untrusted archive, within caps.

Runs INSIDE the sandbox (:mod:`detox.sandbox.inside`): ``main(data, args)`` gets the attachment's bytes and
returns a result in the wire format below. It never writes a file: every member is read into memory
through a bounded loop. Nested archives are not opened here: each member goes back through the whole
pipeline (``FilterContext.decide_member``), and an archive member comes back to this converter as a
new, separate run, one level deeper.

Formats (``args["format"]``, from the filter's reading of libmagic's type; checked against the bytes)
    * ``zip``: :mod:`zipfile` (stored, deflate, bzip2, lzma). Other methods (implode, deflate64,
      PPMd...) refuse the member alone ("unsupported-method").
    * ``tar``: :mod:`tarfile` (ustar, GNU, pax). Regular files only: symbolic and hard links, devices,
      FIFOs and anything else are refused and listed.
    * ``gzip``, ``bzip2``, ``xz`` (also lzma-alone): the stream is decompressed (multi-stream files
      too); a tar inside (``.tar.gz``, ``.tgz``...) is listed as a tar, anything else is one member
      named after the gzip header's FNAME or the attachment's name without its extension.
    * ``7z``: py7zr (pure-Python parser; LZMA/LZMA2/PPMd/BCJ/zstd/brotli/deflate through its codec
      packages), extracted through a writer factory whose writer counts every byte.
    * ``lzh`` (only when the filter's ``hold_formats`` lets it through; held by default): lhafile's
      header walk (pure Python) and its ``lzhlib`` C decoder (-lh0-, -lh5-, -lh6-, -lh7-) driven block
      by block into a counting writer; CRC-16 and size checked. lhafile is unmaintained and lzhlib
      crashes on some malformed input: here that is a dead sandbox child, and the part is held.

Caps (``args``; defaults in brackets): ``max_members`` [1000] entries of any kind (directories and
refused entries count), ``max_total_bytes`` [200 MiB] of member data, ``max_member_bytes`` [100 MiB]
per member, ``max_ratio`` [100] uncompressed:compressed, per member where the format stores a per-member
compressed size and over the whole archive. Ratios are only judged past ``ratio_grace_bytes`` [1 MiB]
of output (small repetitive files compress far better than 100:1 and are harmless). Declared sizes are
checked first for a quick answer, but never trusted: the bytes actually produced are counted in the
read loop and the run stops at the first chunk past a cap.

Encryption (ZipCrypto: flag bit 0; WinZip AES: method 99; PKWARE strong encryption: flag bit 6; 7z
encrypted headers or coders) anywhere in the archive holds the whole archive: ``encrypted-archive``.
An archive that holds an encrypted member next to clear ones is the same PPAP mail with a decoy.

Names
    * zip: UTF-8 when flag bit 11 is set, or from an Info-ZIP Unicode Path extra field (0x7075) whose
      CRC matches the raw name; otherwise the raw bytes are tried as UTF-8 (macOS, Linux), then as
      CP932 when that reads as Japanese (Windows Explorer and most Japanese tools write CP932 without
      the flag), else CP437 (the zip standard's default).
    * tar, gzip: UTF-8, else CP932 when it reads as Japanese, else Latin-1.
    * lzh: UTF-8, else CP932 / EUC-JP when it reads as Japanese, else CP932 with replacement.
    * Backslashes are separators (Windows tools write them); decoding happens first, so the 0x5C
      second byte of a CP932 character (ソ, 表, 能...) is never taken for one.
    * Members whose path is absolute, has a drive letter, a ``..`` segment, or a NUL or control
      character, are refused (never extracted) and listed.

Wire format of the result: :mod:`detox.sandbox.inside.wire`, the payload the member bytes, concatenated.

The JSON object has ``status``: ``"ok"`` or ``"held"``. A held result has ``reason`` (one of
:data:`HELD_REASONS`), ``detail`` (a short English text for the logs) and no member bytes. An ok
result has ``format`` (``zip``, ``tar``, ``tar+gzip``, ``gzip``, ``7z``, ``lzh``...), ``entries``
(every entry seen), ``members`` (list of ``{"path", "offset", "size", "stored", "mtime"}``: ``path``
the decoded path with ``/`` separators, ``offset``/``size`` into the bytes after the header, members
back to back in order, ``stored`` the compressed size or null, ``mtime`` ``[Y, M, D, h, m, s]`` or
null) and ``refused`` (list of ``{"path", "why", "size"}``; ``why`` one of :data:`REFUSED_KINDS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detox.sandbox.contract import ARCHIVE_FORMATS as FORMATS
from detox.sandbox.contract import ARCHIVE_MAX_HEADER_BYTES as MAX_META_BYTES
from detox.sandbox.contract import ARCHIVE_REFUSED_KINDS as REFUSED_KINDS
from detox.sandbox.inside import wire
from detox.sandbox.inside.converters.archive.collect import HELD_REASONS, Caps, Collector, Held
from detox.sandbox.inside.converters.archive.lzh import extract_lzh
from detox.sandbox.inside.converters.archive.names import decode_name
from detox.sandbox.inside.converters.archive.sevenzip import extract_7z
from detox.sandbox.inside.converters.archive.tar import extract_compressed, extract_tar
from detox.sandbox.inside.converters.archive.zip import extract_zip, zip_name

__all__ = [
    "FORMATS",
    "HELD_REASONS",
    "MAX_META_BYTES",
    "REFUSED_KINDS",
    "Caps",
    "Held",
    "decode_name",
    "main",
    "pack_result",
    "unpack_result",
    "zip_name",
]


# -- the wire format ---------------------------------------------------------------------------


def pack_result(meta: Mapping[str, Any], chunks: list[bytes] | None = None) -> bytes:
    try:
        return wire.pack_result(meta, *(chunks or []), max_header_bytes=MAX_META_BYTES)
    except ValueError:
        raise Held("limit-exceeded", "member list too large") from None


def unpack_result(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a converter result into (metadata, member bytes). Raises ValueError when malformed."""
    return wire.unpack_result(raw, max_header_bytes=MAX_META_BYTES)


# -- entry point -------------------------------------------------------------------------------


def _extract(fmt: str, data: bytes, name: str, out: Collector) -> str:
    if fmt == "zip":
        if not data.startswith(b"PK"):
            raise Held("archive-corrupt", "not a zip archive")
        return extract_zip(data, out)
    if fmt == "tar":
        extract_tar(data, out)
        return "tar"
    if fmt in ("gzip", "bzip2", "xz"):
        return extract_compressed(fmt, data, name, out)
    if fmt == "7z":
        if not data.startswith(b"7z\xbc\xaf\x27\x1c"):
            raise Held("archive-corrupt", "not a 7z archive")
        return extract_7z(data, out)
    return extract_lzh(data, out)


def main(data: bytes, args: dict[str, Any]) -> bytes:
    caps = Caps.from_args(args)
    fmt = args.get("format")
    if fmt not in FORMATS:
        raise ValueError(f"bad argument format {fmt!r}")
    name = args.get("name") or ""
    if not isinstance(name, str):
        raise ValueError("bad argument name")
    out = Collector(caps, len(data))
    try:
        found = _extract(str(fmt), data, name, out)
        chunks: list[bytes] = []
        members: list[dict[str, Any]] = []
        offset = 0
        for member in out.members:
            members.append(
                {
                    "path": member.path,
                    "offset": offset,
                    "size": len(member.data),
                    "stored": member.stored,
                    "mtime": list(member.mtime) if member.mtime else None,
                }
            )
            chunks.append(member.data)
            offset += len(member.data)
        meta = {
            "status": "ok",
            "format": found,
            "entries": out.entries,
            "members": members,
            "refused": out.refused,
        }
        return pack_result(meta, chunks)
    except Held as held:
        return pack_result({"status": "held", "reason": held.reason, "detail": held.detail, "format": fmt})
