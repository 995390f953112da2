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

import bz2
import importlib
import io
import lzma
import stat
import struct
import tarfile
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from detox.sandbox import contract
from detox.sandbox.contract import ARCHIVE_FORMATS as FORMATS
from detox.sandbox.contract import ARCHIVE_MAX_HEADER_BYTES as MAX_META_BYTES
from detox.sandbox.contract import ARCHIVE_REFUSED_KINDS as REFUSED_KINDS
from detox.sandbox.inside import wire

HELD_REASONS = contract.ARCHIVE_HELD_REASONS  # what Held may carry (the filter checks it)

CHUNK = 64 * 1024
MAX_PATH_CHARS = 1024

DEFAULT_MAX_MEMBERS = 1000
DEFAULT_MAX_TOTAL_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_MEMBER_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_RATIO = 100
DEFAULT_RATIO_GRACE_BYTES = 1024 * 1024


class Held(Exception):
    """The archive is held as a whole: ``reason`` is one of HELD_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:300]


# -- the wire format ---------------------------------------------------------------------------


def pack_result(meta: Mapping[str, Any], chunks: list[bytes] | None = None) -> bytes:
    try:
        return wire.pack_result(meta, *(chunks or []), max_header_bytes=MAX_META_BYTES)
    except ValueError:
        raise Held("limit-exceeded", "member list too large") from None


def unpack_result(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a converter result into (metadata, member bytes). Raises ValueError when malformed."""
    return wire.unpack_result(raw, max_header_bytes=MAX_META_BYTES)


# -- caps and the collector --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caps:
    max_members: int = DEFAULT_MAX_MEMBERS
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_ratio: int = DEFAULT_MAX_RATIO
    ratio_grace_bytes: int = DEFAULT_RATIO_GRACE_BYTES

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Caps:
        def positive(key: str, default: int) -> int:
            value = args.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"bad argument {key}")
            return value

        return cls(
            max_members=positive("max_members", DEFAULT_MAX_MEMBERS),
            max_total_bytes=positive("max_total_bytes", DEFAULT_MAX_TOTAL_BYTES),
            max_member_bytes=positive("max_member_bytes", DEFAULT_MAX_MEMBER_BYTES),
            max_ratio=positive("max_ratio", DEFAULT_MAX_RATIO),
            ratio_grace_bytes=positive("ratio_grace_bytes", DEFAULT_RATIO_GRACE_BYTES),
        )


@dataclass(slots=True)
class _Member:
    path: str
    data: bytes
    stored: int | None
    mtime: tuple[int, ...] | None


@dataclass
class Collector:
    """Counts entries and bytes against the caps and keeps what was extracted."""

    caps: Caps
    input_size: int
    entries: int = 0
    total: int = 0
    members: list[_Member] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.caps.max_members:
            raise Held("limit-exceeded", f"more than {self.caps.max_members} entries")

    def check_declared(self, sizes: list[tuple[int, int | None]]) -> None:
        """A quick answer from the sizes the archive declares (uncompressed, compressed)."""
        caps = self.caps
        total = 0
        for size, stored in sizes:
            if size > caps.max_member_bytes:
                raise Held("limit-exceeded", f"a member declares {size} bytes")
            if (
                stored is not None
                and size > caps.ratio_grace_bytes
                and size > caps.max_ratio * max(stored, 1)
            ):
                raise Held("archive-bomb", f"a member declares ratio {size}:{stored}")
            total += size
        if total > caps.max_total_bytes:
            raise Held("limit-exceeded", f"members declare {total} bytes in all")
        self._check_overall(total)

    def _check_overall(self, total: int) -> None:
        caps = self.caps
        if total > caps.ratio_grace_bytes and total > caps.max_ratio * max(self.input_size, 1):
            raise Held("archive-bomb", f"{total} bytes out of {self.input_size}")

    def count(self, produced: int, member_size: int, stored: int | None) -> None:
        """Account for ``produced`` new bytes of a member now ``member_size`` long."""
        caps = self.caps
        self.total += produced
        if member_size > caps.max_member_bytes:
            raise Held("limit-exceeded", f"a member is larger than {caps.max_member_bytes} bytes")
        if self.total > caps.max_total_bytes:
            raise Held("limit-exceeded", f"members are larger than {caps.max_total_bytes} bytes in all")
        if (
            stored is not None
            and member_size > caps.ratio_grace_bytes
            and member_size > caps.max_ratio * max(stored, 1)
        ):
            raise Held("archive-bomb", f"a member expands beyond {caps.max_ratio}:1")
        self._check_overall(self.total)

    def read(self, reader: Callable[[int], bytes], stored: int | None) -> bytes:
        """Read one member with a bounded loop: never more than one chunk past a cap."""
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = reader(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            self.count(len(chunk), size, stored)
            chunks.append(chunk)
        return b"".join(chunks)

    def add(self, path: str, data: bytes, stored: int | None, mtime: tuple[int, ...] | None) -> None:
        self.members.append(_Member(path, data, stored, _valid_mtime(mtime)))

    def refuse(self, path: str, why: str, size: int) -> None:
        assert why in REFUSED_KINDS
        self.refused.append({"path": _printable(path)[:MAX_PATH_CHARS], "why": why, "size": max(size, 0)})


class _CountingWriter:
    """A write-only sink for decoders that push their output (py7zr, lzhlib)."""

    def __init__(self, collector: Collector, stored: int | None) -> None:
        self.collector = collector
        self.stored = stored
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes | bytearray) -> int:
        n = len(data)
        if n:
            self.size += n
            self.collector.count(n, self.size, self.stored)
            self.chunks.append(bytes(data))
        return n

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)


# -- names -------------------------------------------------------------------------------------

# Characters a Japanese file name is made of besides ASCII: kana, kanji, full-width forms and the
# JIS X 0208 / NEC / IBM symbols CP932 carries.
_JA_STRONG = ((0x3000, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF01, 0xFF60))
_JA_ALSO = (
    (0xFF61, 0xFF9F),  # half-width katakana
    (0xFFE0, 0xFFEE),
    (0x00A7, 0x00A8),
    (0x00B0, 0x00B1),
    (0x00B4, 0x00B4),
    (0x00B6, 0x00B6),
    (0x00D7, 0x00D7),
    (0x00F7, 0x00F7),
    (0x0391, 0x03C9),  # Greek
    (0x0401, 0x0451),  # Cyrillic
    (0x2010, 0x203F),  # dashes, quotes, ※, …
    (0x2100, 0x22FF),  # ℃, №, ™, Roman numerals, arrows, maths
    (0x2300, 0x23FF),
    (0x2460, 0x24FF),  # ①
    (0x2500, 0x257F),  # box drawing
    (0x25A0, 0x26FF),  # ■ ○ ★ ♪
    (0x3200, 0x33FF),  # ㈱ ㌔
)


def _in(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


def plausibly_japanese(text: str) -> bool:
    """True when every non-ASCII character is one a Japanese name uses and one is kana or kanji."""
    strong = False
    for ch in text:
        code = ord(ch)
        if code < 0x80:
            if code < 0x20 or code == 0x7F:
                return False
        elif _in(code, _JA_STRONG):
            strong = True
        elif not _in(code, _JA_ALSO):
            return False
    return strong


def decode_name(raw: bytes, fallback: str) -> str:
    """Decode an archive's raw name bytes: UTF-8, Japanese legacy encodings, then ``fallback``."""
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    candidates = ("cp932", "euc_jp") if fallback == "lzh" else ("cp932",)
    for codec in candidates:
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        if plausibly_japanese(text):
            return text
    if fallback == "lzh":
        return raw.decode("cp932", "replace")
    return raw.decode(fallback, "replace")


# Controls, format characters (bidi overrides, zero-width), lone surrogates, line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _safe_char(ch: str) -> bool:
    return unicodedata.category(ch) not in _UNSAFE_CATEGORIES


def _printable(text: str) -> str:
    return "".join(ch if _safe_char(ch) else "?" for ch in text)


def classify_path(name: str) -> tuple[str, str]:
    """(normalized path, "") for a safe relative path, or (name, why) for one that is refused."""
    if len(name) > MAX_PATH_CHARS or not name:
        return name, "bad-name"
    if not all(_safe_char(ch) for ch in name):  # NUL, controls, bidi overrides, lone surrogates
        return name, "bad-name"
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) >= 2 and unified[1] == ":" and unified[0].isalpha()):
        return name, "absolute-path"
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        return name, "parent-path"
    if not parts:
        return name, "bad-name"
    return "/".join(parts), ""


def _valid_mtime(mtime: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if mtime is None or len(mtime) < 6:
        return None
    y, mo, d, h, mi, s = (int(x) for x in mtime[:6])
    if not (
        1980 <= y <= 2107 and 1 <= mo <= 12 and 1 <= d <= 31 and 0 <= h < 24 and 0 <= mi < 60 and 0 <= s < 62
    ):
        return None
    return (y, mo, d, h, mi, min(s, 59))


def _from_epoch(seconds: float | None) -> tuple[int, ...] | None:
    if seconds is None:
        return None
    try:
        return tuple(time.localtime(seconds)[:6])
    except (OverflowError, OSError, ValueError):
        return None


# -- zip ---------------------------------------------------------------------------------------

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


# -- tar and the single-stream compressors -----------------------------------------------------


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


# -- 7z ----------------------------------------------------------------------------------------


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


# -- lzh ---------------------------------------------------------------------------------------


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
