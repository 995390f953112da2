"""Tar archives and the single-stream compressors (gzip, bzip2, xz), a tar inside them included."""

from __future__ import annotations

import bz2
import io
import lzma
import struct
import tarfile
import zlib
from typing import Any

from detox.sandbox.inside.converters.archive.collect import CHUNK, Collector, Held
from detox.sandbox.inside.converters.archive.names import _from_epoch, classify_path, decode_name


def _looks_like_tar(blob: bytes) -> bool:
    if len(blob) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(blob[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def extract_tar(data: bytes, out: Collector) -> None:
    if not _looks_like_tar(data):
        raise Held("archive-corrupt", "not a tar archive")
    try:
        tf = tarfile.open(  # noqa: SIM115 - closed by the with below; only opening is guarded here
            fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape"
        )
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise Held("archive-corrupt", f"tar: {exc}") from None
    with tf:
        while True:
            try:
                member = tf.next()
            except (tarfile.TarError, EOFError, ValueError, UnicodeError) as exc:
                raise Held("archive-corrupt", f"tar: {exc}") from None
            if member is None:
                break
            out.entry()
            raw = member.name.encode("utf-8", "surrogateescape")
            member_name = decode_name(raw, "latin-1")
            if member.isdir():
                continue
            if member.issym():
                out.refuse(member_name, "symlink", 0)
                continue
            if member.islnk():
                out.refuse(member_name, "hardlink", 0)
                continue
            if member.ischr() or member.isblk() or member.isfifo():
                out.refuse(member_name, "device", 0)
                continue
            if not member.isreg():
                out.refuse(member_name, "special", member.size)
                continue
            path, why = classify_path(member_name)
            if why:
                out.refuse(member_name, why, member.size)
                continue
            if member.size > out.caps.max_member_bytes:
                raise Held("limit-exceeded", f"a member declares {member.size} bytes")
            try:
                stream = tf.extractfile(member)
                if stream is None:
                    out.refuse(member_name, "special", member.size)
                    continue
                with stream:
                    content = out.read(stream.read, None)
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                raise Held("archive-corrupt", f"tar member: {exc}") from None
            out.add(path, content, None, _from_epoch(member.mtime))


def _new_decompressor(kind: str) -> Any:
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor(format=lzma.FORMAT_AUTO)


_STREAM_MAGIC = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00"}


def decompress_stream(kind: str, data: bytes, out: Collector) -> bytes:
    """Decompress a gzip/bzip2/xz (or lzma-alone) stream, concatenated streams included, with a
    bounded loop: at most one chunk is produced past the caps before the run stops."""
    caps = out.caps
    # Room for a tar's own headers and padding around max_total_bytes of members.
    limit = caps.max_total_bytes + caps.max_members * 1024 + 10240
    chunks: list[bytes] = []
    produced = 0
    decomp = _new_decompressor(kind)
    pending = data
    errors: tuple[type[Exception], ...] = (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError)
    try:
        while True:
            if kind == "gzip":
                chunk = decomp.decompress(pending, CHUNK)
                pending = decomp.unconsumed_tail
            else:
                chunk = decomp.decompress(pending, max_length=CHUNK)
                pending = b""
            if chunk:
                produced += len(chunk)
                if produced > limit:
                    raise Held("limit-exceeded", f"{kind} stream larger than {limit} bytes")
                if produced > caps.ratio_grace_bytes and produced > caps.max_ratio * max(len(data), 1):
                    raise Held("archive-bomb", f"{kind} stream expands beyond {caps.max_ratio}:1")
                chunks.append(chunk)
            if decomp.eof:
                rest = decomp.unused_data
                magic = _STREAM_MAGIC.get(kind)
                if magic is not None and rest.startswith(magic):  # another stream follows
                    decomp = _new_decompressor(kind)
                    pending = rest
                    continue
                break  # trailing zeros or garbage: not part of any member
            if not chunk:
                stalled = not pending if kind == "gzip" else decomp.needs_input
                if stalled:
                    raise Held("archive-corrupt", f"{kind} stream is truncated")
    except errors as exc:
        raise Held("archive-corrupt", f"{kind}: {exc}") from None
    return b"".join(chunks)


def _gzip_fname(data: bytes) -> str | None:
    """The FNAME field of a gzip header (RFC 1952), if any."""
    if len(data) < 10 or data[:2] != b"\x1f\x8b":
        return None
    flags = data[3]
    pos = 10
    if flags & 0x04:  # FEXTRA
        if pos + 2 > len(data):
            return None
        (xlen,) = struct.unpack_from("<H", data, pos)
        pos += 2 + xlen
    if not flags & 0x08:  # no FNAME
        return None
    end = data.find(b"\x00", pos, pos + 1024)
    if end < 0:
        return None
    return decode_name(data[pos:end], "latin-1") or None


_SINGLE_SUFFIXES = {
    "gzip": (".gz", ".gzip", ".z"),
    "bzip2": (".bz2", ".bz", ".bzip2"),
    "xz": (".xz", ".lzma"),
}
_TAR_SUFFIXES = (".tgz", ".tbz", ".tbz2", ".tb2", ".txz", ".tlz")


def _single_member_name(kind: str, data: bytes, name: str) -> str:
    if kind == "gzip":
        fname = _gzip_fname(data)
        if fname:
            return fname.replace("\\", "/").rsplit("/", 1)[-1] or "file"
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    lower = base.lower()
    for suffix in _SINGLE_SUFFIXES[kind]:
        if lower.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    for suffix in _TAR_SUFFIXES:
        if lower.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)] + ".tar"
    return base or "file"


def extract_compressed(kind: str, data: bytes, name: str, out: Collector) -> str:
    if kind in _STREAM_MAGIC and not data.startswith(_STREAM_MAGIC[kind]) and kind != "xz":
        raise Held("archive-corrupt", f"not a {kind} stream")
    blob = decompress_stream(kind, data, out)
    if _looks_like_tar(blob):
        extract_tar(blob, out)
        return f"tar+{kind}"
    out.entry()
    member = _single_member_name(kind, data, name)
    path, why = classify_path(member)
    if why:
        path = "file"
    out.count(len(blob), len(blob), len(data))
    out.add(path, blob, len(data), None)
    return kind
