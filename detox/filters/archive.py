"""Archive attachments: opened in the sandbox, every member through the whole pipeline, repacked.

The filter claims an attachment by what libmagic found in its bytes (``part.detected_type``): zip,
7z, tar, gzip, bzip2, xz/lzma and LZH (LZH is held unopened by default: see ``hold_formats``).
Office documents and other zip-based formats (docx, xlsx, pptx, odt, epub, jar...) normally get their
own type from libmagic and are not claimed here; a zip that libmagic could only call
``application/zip`` but that turns out to be one of them is held (``archive-is-document``, or
``executable`` for a Java/Android program), never unpacked into loose parts.

What happens
    1. Archive nesting is counted in the part id: a member of part ``2`` is ``2:dir/a.txt``, a member
       of that one (if it is an archive) ``2:dir/a.zip:b.txt``. An archive already ``max_depth``
       levels down is held (``limit-exceeded``). MIME depth does not count against it.
    2. :mod:`detox.sandbox.inside.converters.archive` lists and extracts one level inside the sandbox,
       with caps on
       entries, total and per-member bytes and compression ratio (see its docstring), and answers
       "held" for encrypted archives (PPAP: ``encrypted-archive``), bombs, corrupt or unsupported ones.
    3. Each extracted member becomes a new attachment part (declared type from its extension, detected
       type from libmagic, depth + 1) and goes through ``FilterContext.decide_member``: the same
       policy rules, filters, caps and failure handling as a mail attachment. A member that is itself
       an archive comes back here one level deeper.
    4. Members the converter refused (links, devices, absolute or ``..`` paths, unsupported zip
       methods) are held and listed (``archive-member-unsafe``); macOS and Windows folder metadata
       (``__MACOSX/``, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``) is dropped without a notice.
    5. What the pipeline converted (REPLACE) or passed as inert (PASS) is written into a NEW zip:
       deflated, UTF-8 names (flag bit 11, which Windows Explorer, macOS and Lhaplus read), the
       original folder structure kept, every path segment sanitized. Held and dropped members are
       never in it; the notice lists the held ones with their own reasons and hold ids.

Repack, not separate attachments: a verdict carries one output, so separate attachments would need a
runner change; a recipient of a 300-file archive would get a 300-attachment mail; and the folder
structure, which is often the point of sending an archive, would be lost. The repacked zip is named
after the original (``資料.7z`` -> ``資料.zip``, ``data.tar.gz`` -> ``data.zip``).

An archive none of whose members survived is held (``archive-empty-after-detox``) with every member
listed; an archive without any file at all is held too (``archive-empty``): a zip can look empty to one
parser and full to another.
"""

from __future__ import annotations

import hashlib
import io
import math
import mimetypes
import stat
import time
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, field_validator

from detox.errors import FilterError, FilterTimeout
from detox.filters.base import FilterContext
from detox.filters.sandboxed import Answer, SandboxCall, SandboxedFilter
from detox.pipeline.detect import detect_type
from detox.pipeline.model import Action, Output, Part, PartRecord, Role, Verdict
from detox.sandbox.base import Limits
from detox.sandbox.contract import ARCHIVE_FORMATS as FORMATS
from detox.sandbox.contract import ARCHIVE_HELD_REASONS as HELD_REASONS
from detox.sandbox.contract import ARCHIVE_REFUSED_KINDS as REFUSED_KINDS
from detox.sandbox.contract import unpack_archive_result as unpack_result

# libmagic's types for the formats the converter reads.
ARCHIVE_TYPES: dict[str, str] = {
    "application/zip": "zip",
    "application/x-zip": "zip",
    "application/x-zip-compressed": "zip",
    "application/x-7z-compressed": "7z",
    "application/x-tar": "tar",
    "application/x-gtar": "tar",
    "application/gzip": "gzip",
    "application/x-gzip": "gzip",
    "application/x-bzip2": "bzip2",
    "application/x-xz": "xz",
    "application/x-lzma": "xz",
    "application/x-lzh-compressed": "lzh",
    "application/x-lzh": "lzh",
    "application/x-lha": "lzh",
}
MEMBER_SEPARATOR = ":"  # between an archive's part id and a member's path
ZIP_TYPE = "application/zip"
# Already compressed: stored in the repacked zip rather than deflated again.
_STORED_TYPES = frozenset({"image/png", "image/jpeg", "application/zip", "application/pdf"})
_ARCHIVE_SUFFIXES = (
    ".tar.gz", ".tar.bz2", ".tar.xz", ".tar.lzma", ".tgz", ".tbz", ".tbz2", ".txz",
    ".zip", ".7z", ".tar", ".gz", ".bz2", ".xz", ".lzma", ".lzh", ".lha",
)  # fmt: skip
_OS_METADATA_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db"})
_WINDOWS_FORBIDDEN = set('<>:"|?*')
_WINDOWS_DEVICES = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
)
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_MAX_SEGMENT = 120  # characters per path segment in the output zip and in part ids
_MAX_ID_PATH = 240
_MAX_META_PATH = 1024
_DEFAULT_DATE = (1980, 1, 1, 0, 0, 0)
# The built-in extension table only: the host's /etc/mime.types must not change what a member is.
_MIME = mimetypes.MimeTypes()

REASON_MEMBER_UNSAFE = "archive-member-unsafe"
REASON_EMPTY = "archive-empty"
REASON_NOTHING_LEFT = "archive-empty-after-detox"


class ArchiveOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Archives inside archives: an archive this many levels down is held (the top one is level 0).
    max_depth: int = Field(default=3, ge=1, le=10)
    max_members: int = Field(default=1000, gt=0, le=100_000)  # entries of any kind, per archive
    max_total_bytes: int = Field(default=200 * 1024 * 1024, gt=0)  # uncompressed, per archive
    max_member_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    max_ratio: int = Field(default=100, ge=2)  # uncompressed:compressed, per member and overall
    # Formats held instead of opened (reason archive-unsupported). LZH is held by default: the only
    # Python reader, lhafile, is unmaintained and its C decoder crashes on malformed input (a
    # segfault within seconds of mutation fuzzing). Removing "lzh" opens LZH with it, in the sandbox,
    # once lhafile is installed (pip install lhafile).
    hold_formats: tuple[str, ...] = ("lzh",)
    # Share of the filter's timeout the extraction may use; the rest is for the members' filters.
    extract_time_share: float = Field(default=0.5, gt=0, le=1)

    @field_validator("hold_formats")
    @classmethod
    def _known_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(FORMATS))
        if unknown:
            raise ValueError(f"unknown archive formats {unknown}; known: {list(FORMATS)}")
        return value


DateTime = tuple[int, int, int, int, int, int]
# A member for the new zip: folder segments, file name, bytes, content type, modification time.
_Kept = tuple[list[str], str, bytes, str, DateTime | None]


@dataclass(frozen=True, slots=True)
class _Extracted:
    path: str  # as the converter decoded it
    data: bytes
    mtime: DateTime | None


@dataclass(frozen=True, slots=True)
class _Refused:
    path: str
    why: str
    size: int


class ArchiveFilter(SandboxedFilter[ArchiveOptions]):
    """zip, 7z, tar(.gz/.bz2/.xz), gzip, bzip2, xz and LZH attachments: members detoxified, repacked."""

    name: ClassVar[str] = "archive"
    converter: ClassVar[str] = "archive"
    converter_reasons: ClassVar[frozenset[str]] = HELD_REASONS
    opens: ClassVar[str] = "archives"
    reasons: ClassVar[tuple[str, ...]] = (
        *sorted(HELD_REASONS),
        "archive-unsupported",  # a format in hold_formats
        REASON_EMPTY,
        REASON_NOTHING_LEFT,
        REASON_MEMBER_UNSAFE,  # a refused member's record
        "archive-os-metadata",  # a dropped member's record
    )
    notes: ClassVar[tuple[str, ...]] = ("archive-repacked",)  # with the notes of its members' filters
    # It claims by the detected type, before the filters that claim by the declared one.
    runs_before: ClassVar[tuple[str, ...]] = ("html", "text-attachment")

    def applies_to(self, part: Part) -> bool:
        return part.role is Role.ATTACHMENT and part.detected_type in ARCHIVE_TYPES

    def precheck(self, part: Part, ctx: FilterContext) -> Verdict | None:
        if part.part_id.count(MEMBER_SEPARATOR) >= self.options.max_depth:
            return Verdict(Action.HOLD, reason="limit-exceeded")
        if ARCHIVE_TYPES[part.detected_type] in self.options.hold_formats:
            return Verdict(Action.HOLD, reason="archive-unsupported")
        return None

    def begin(self, part: Part, ctx: FilterContext) -> SandboxCall:
        call = super().begin(part, ctx)
        if ctx.decide_member is None:
            raise FilterError("the runner gave no decide_member: members cannot be checked")
        return call

    def sandbox_timeout(self, timeout_s: float) -> float:
        # The extraction's share; the rest is for the members' filters.
        return max(1.0, timeout_s * self.options.extract_time_share)

    def limits(self, call: SandboxCall) -> Limits:
        sandbox_timeout = self.sandbox_timeout(call.timeout_s)
        configured = call.sandbox.default_limits
        return replace(
            configured,
            timeout_s=sandbox_timeout,
            cpu_s=max(1, min(configured.cpu_s, math.ceil(sandbox_timeout))),
            max_output_bytes=self.options.max_total_bytes + 8 * 1024 * 1024 + 64 * 1024,
            max_file_bytes=16 * 1024 * 1024,  # the converter writes no file
            max_open_files=64,
        )

    def converter_args(self, call: SandboxCall) -> dict[str, Any]:
        options = self.options
        return {
            "format": ARCHIVE_TYPES[call.part.detected_type],
            "name": call.part.untrusted_filename or "",
            "max_members": options.max_members,
            "max_total_bytes": options.max_total_bytes,
            "max_member_bytes": options.max_member_bytes,
            "max_ratio": options.max_ratio,
        }

    def unpack_answer(self, raw: bytes) -> tuple[dict[str, Any], bytes]:
        return unpack_result(raw)  # the archive converter's: a member list needs a longer header

    def converted(self, call: SandboxCall, answer: Answer) -> Verdict:
        blob = answer.release()
        extracted, refused = self._check_result(answer.header, blob)
        del blob  # the members hold their own copies; the worker's peak memory matters
        if not extracted and not refused:
            return Verdict(Action.HOLD, reason=REASON_EMPTY)
        return self._decide_members(call.part, call.ctx, extracted, refused, call.started, call.timeout_s)

    # -- the converter's answer, checked ------------------------------------------------------

    def _check_result(self, meta: dict[str, Any], blob: bytes) -> tuple[list[_Extracted], list[_Refused]]:
        """Trust nothing the sandbox says without a look: counts, offsets, sizes, names, kinds."""
        options = self.options
        members, refused = meta.get("members"), meta.get("refused")
        if not isinstance(members, list) or not isinstance(refused, list):
            raise self.fault("returned a malformed member list")
        if len(members) + len(refused) > options.max_members:
            raise self.fault("returned more members than max_members")
        extracted: list[_Extracted] = []
        offset = 0
        for item in members:
            if not isinstance(item, dict):
                raise self.fault("returned a malformed member")
            path, start, size = item.get("path"), item.get("offset"), item.get("size")
            if not (isinstance(path, str) and 0 < len(path) <= _MAX_META_PATH):
                raise self.fault("returned a member without a path")
            if not (_is_int(start) and _is_int(size) and start == offset and size >= 0):
                raise self.fault("returned members out of order")
            if size > options.max_member_bytes:
                raise self.fault("returned a member over max_member_bytes")
            offset += size
            if offset > len(blob):
                raise self.fault("returned a member past the end of its data")
            extracted.append(_Extracted(path, blob[start:offset], _mtime(item.get("mtime"))))
        if offset != len(blob):
            raise self.fault("returned bytes no member accounts for")
        if offset > options.max_total_bytes:
            raise self.fault("returned more than max_total_bytes")
        refusals: list[_Refused] = []
        for item in refused:
            if not isinstance(item, dict):
                raise self.fault("returned a malformed refusal")
            path, why, size = item.get("path"), item.get("why"), item.get("size")
            if not (isinstance(path, str) and len(path) <= _MAX_META_PATH and why in REFUSED_KINDS):
                raise self.fault("returned a malformed refusal")
            refusals.append(_Refused(path, str(why), size if _is_int(size) and size >= 0 else 0))
        return extracted, refusals

    # -- the members through the pipeline -----------------------------------------------------

    def _decide_members(
        self,
        part: Part,
        ctx: FilterContext,
        extracted: list[_Extracted],
        refused: list[_Refused],
        started: float,
        timeout: float,
    ) -> Verdict:
        assert ctx.decide_member is not None  # checked in begin()
        ids = _UniqueIds(part.part_id)
        records: list[PartRecord] = []
        kept: list[_Kept] = []
        notes: list[str] = []
        removed: Counter[str] = Counter()

        extracted.reverse()
        while extracted:
            entry = extracted.pop()  # in archive order; a decided member's bytes can then be freed
            segments = safe_segments(entry.path)
            if segments is None:  # the converter should have refused it; refuse it here then
                refused.append(_Refused(entry.path, "parent-path", len(entry.data)))
                continue
            digest = hashlib.sha256(entry.data)  # the member's SHA-256 and detect_type's cache key
            member = Part(
                part_id=ids.make(segments),
                role=Role.ATTACHMENT,
                declared_type=guess_type(segments[-1]),
                detected_type=detect_type(entry.data, digest=digest.digest()),
                charset_label=None,
                untrusted_filename=segments[-1],
                payload=entry.data,
                sha256=digest.hexdigest(),
                depth=part.depth + 1,
            )
            if is_os_metadata(segments):
                records.append(_record(member, Action.DROP, "archive-os-metadata"))
                removed["os-metadata"] += 1
                continue
            # The runner's deadline is re-armed by each member's own filter run, so the archive keeps
            # its own clock: past the filter's timeout, the whole archive is held (filter-timeout).
            if time.monotonic() - started > timeout:
                raise FilterTimeout(f"archive members not decided within {timeout:g}s")
            verdict, record = ctx.decide_member(member)
            records.append(record)
            records.extend(verdict.members)
            notes.extend(verdict.notes)
            if verdict.action is Action.REPLACE and verdict.output is not None:
                out = verdict.output
                kept.append(
                    (segments[:-1], out.filename or segments[-1], out.data, out.content_type, entry.mtime)
                )
            elif verdict.action is Action.PASS:
                kept.append((segments[:-1], segments[-1], entry.data, member.declared_type, entry.mtime))
            elif verdict.action is Action.DROP:
                removed["member-dropped"] += 1
            else:  # HOLD; a TEXT verdict for an attachment cannot happen (the runner refuses it)
                removed["member-held"] += 1

        for item in refused:
            segments = safe_segments(item.path, strict=False) or ["(名前なし)"]
            records.append(_refused_record(ids.make(segments), segments[-1], item))
            removed["member-unsafe"] += 1

        if not kept:
            return Verdict(
                Action.HOLD, reason=REASON_NOTHING_LEFT, removed=dict(removed), members=tuple(records)
            )
        data = build_zip(kept)
        if data == part.payload:  # an archive detox made, sent back through: make the output differ
            data = build_zip(kept, comment=b"detox")
        return Verdict(
            Action.REPLACE,
            output=Output(ZIP_TYPE, data, repacked_name(part.untrusted_filename)),
            removed=dict(removed),
            notes=("archive-repacked", *notes),
            members=tuple(records),
        )


# -- helpers ------------------------------------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _mtime(value: object) -> DateTime | None:
    if not (isinstance(value, list) and len(value) == 6 and all(_is_int(v) for v in value)):
        return None
    y, mo, d, h, mi, s = value
    if 1980 <= y <= 2107 and 1 <= mo <= 12 and 1 <= d <= 31 and 0 <= h < 24 and 0 <= mi < 60 and 0 <= s < 60:
        return (y, mo, d, h, mi, s)
    return None


def guess_type(name: str) -> str:
    """The member's declared type, from its extension (the built-in table), as a mailer would."""
    guessed, _ = _MIME.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def _clean_segment(segment: str) -> str:
    """One path segment made safe for any file system: no controls, no Windows-reserved characters
    or device names, no trailing dots or spaces, bounded length."""
    text = unicodedata.normalize("NFC", segment)  # macOS writes decomposed kana (テ + U+3099)
    text = "".join(
        "_" if ch in _WINDOWS_FORBIDDEN else ch
        for ch in text
        if unicodedata.category(ch) not in _UNSAFE_CATEGORIES
    )
    text = text.strip().rstrip(". ")
    if len(text) > _MAX_SEGMENT:
        _, dot, ext = text.rpartition(".")
        keep = f".{ext}" if dot and 0 < len(ext) <= 10 else ""
        text = text[: _MAX_SEGMENT - len(keep)] + keep
    if not text or text in (".", ".."):
        return "_"
    if text.split(".", 1)[0].lower() in _WINDOWS_DEVICES:
        return "_" + text
    return text


def safe_segments(path: str, *, strict: bool = True) -> list[str] | None:
    """The path as clean relative segments; None (strict) for absolute or ``..`` paths.

    Not strict: unsafe parts are dropped instead (for naming a refused member, never for writing).
    """
    unified = path.replace("\\", "/")
    raw = [p for p in unified.split("/") if p not in ("", ".")]
    absolute = unified.startswith("/") or (len(unified) >= 2 and unified[1] == ":" and unified[0].isalpha())
    if strict and (absolute or ".." in raw or not raw):
        return None
    cleaned = [_clean_segment(p) for p in raw if p != ".."]
    return cleaned or None


def is_os_metadata(segments: list[str]) -> bool:
    """macOS resource forks and Finder/Explorer files: never content the sender meant to send."""
    return segments[0] == "__MACOSX" or segments[-1].lower() in _OS_METADATA_NAMES


class _UniqueIds:
    """Member part ids: ``<archive id>:<path>``, unique within the archive (the store keys on them).

    The path's own ``:`` become ``_`` so that the count of separators is the archive depth.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.used: set[str] = set()

    def make(self, segments: list[str]) -> str:
        path = "/".join(segments).replace(MEMBER_SEPARATOR, "_")
        if len(path) > _MAX_ID_PATH:
            path = path[:150] + "…" + path[-(_MAX_ID_PATH - 151) :]
        candidate = f"{self.prefix}{MEMBER_SEPARATOR}{path}"
        n = 2
        while candidate in self.used:
            candidate = f"{self.prefix}{MEMBER_SEPARATOR}{path}#{n}"
            n += 1
        self.used.add(candidate)
        return candidate


def _record(member: Part, action: Action, reason: str) -> PartRecord:
    return PartRecord(
        part_id=member.part_id,
        role=member.role.value,
        declared_type=member.declared_type,
        detected_type=member.detected_type,
        filename=member.untrusted_filename,
        size=member.size,
        sha256=member.sha256,
        filter=ArchiveFilter.name,
        action=action.value,
        reason=reason,
    )


_REFUSED_TYPES = {"symlink": "inode/symlink", "hardlink": "inode/symlink", "device": "inode/chardevice"}


def _refused_record(part_id: str, filename: str, item: _Refused) -> PartRecord:
    """A member that was never extracted: no bytes, so no hash (the original archive is kept)."""
    return PartRecord(
        part_id=part_id,
        role=Role.ATTACHMENT.value,
        declared_type=guess_type(filename),
        detected_type=_REFUSED_TYPES.get(item.why, "application/octet-stream"),
        filename=filename,
        size=item.size,
        sha256="",
        filter=ArchiveFilter.name,
        action=Action.HOLD.value,
        reason=REASON_MEMBER_UNSAFE,
        error=item.why,
    )


def repacked_name(untrusted_filename: str | None) -> str:
    """``資料.7z`` -> ``資料.zip``, ``data.tar.gz`` -> ``data.zip``, ``memo.txt.gz`` -> ``memo.txt.zip``."""
    name = (untrusted_filename or "").strip()
    if not name:
        return "archive.zip"
    lower = name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + ".zip"
    return name + ".zip"


def _unique_path(folder: list[str], filename: str, used: set[str]) -> str:
    name = _clean_segment(filename.replace("\\", "/").rsplit("/", 1)[-1])
    path = "/".join([*folder, name])
    n = 2
    while path.lower() in used:  # Windows and macOS file systems ignore case
        stem, dot, ext = name.rpartition(".")
        alternative = f"{stem} ({n}).{ext}" if dot and stem else f"{name} ({n})"
        path = "/".join([*folder, alternative])
        n += 1
    used.add(path.lower())
    return path


def build_zip(kept: list[_Kept], comment: bytes = b"") -> bytes:
    """A new zip of the detoxified members: UTF-8 names, the original folders, nothing else."""
    buf = io.BytesIO()
    used: set[str] = set()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder, filename, data, content_type, mtime in kept:
            info = zipfile.ZipInfo(_unique_path(folder, filename, used), date_time=mtime or _DEFAULT_DATE)
            info.compress_type = zipfile.ZIP_STORED if content_type in _STORED_TYPES else zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix: the mode below says "regular file, rw-r--r--", nothing else
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
        if comment:
            zf.comment = comment
    return buf.getvalue()
