"""The OPC package walk: the zip read under caps, part names, relationships, and what each part is.

:func:`read_members` inflates every member with the caps enforced on the bytes actually produced and
refuses what makes a package ambiguous (overlapping members, two names for one part, hostile names);
:func:`_classify_part` says which parts are removed, and as what kind.
"""

from __future__ import annotations

import io
import itertools
import re
import zipfile
from dataclasses import dataclass
from urllib.parse import unquote

from detox.sandbox.inside.converters.office.model import (
    _CHUNK,
    _KEPT_BINARY_TYPES,
    _RATIO_FLOOR,
    _VML_TYPE,
    OLE_MAGIC,
    ZIP_MAGIC,
    Caps,
    HeldError,
    PackageRejected,
)
from detox.sandbox.inside.converters.office.ooxml import _PART_NAME_FORBIDDEN, _S, _any, _tags, parse_xml


@dataclass
class _Rel:
    rid: str
    type: str
    target: str
    external: bool

    @property
    def kind(self) -> str:
        """The last segment of the type URI ("hyperlink", "oleObject"...): the same in strict OOXML."""
        return self.type.rstrip("/").rsplit("/", 1)[-1]


def _key(name: str) -> str:
    """OPC part names compare case-insensitively, percent-encoding aside."""
    return unquote(name).casefold()


def _rels_name(source: str) -> str:
    if not source:
        return "_rels/.rels"
    directory, _, base = source.rpartition("/")
    return f"{directory}/_rels/{base}.rels" if directory else f"_rels/{base}.rels"


_RELS_PATH = re.compile(r"^(?:(.*)/)?_rels/([^/]*)\.rels$", re.IGNORECASE)


def _source_of_rels(name: str) -> str | None:
    """The part a .rels part describes ("" for the package), None if the name is not a rels part."""
    match = _RELS_PATH.match(name)
    if match is None:
        return None
    directory, base = match.group(1) or "", match.group(2)
    if not base:
        return "" if not directory else None
    return f"{directory}/{base}" if directory else base


def _check_part_name(name: str) -> None:
    if not name or len(name) > 1024 or name.startswith("/") or _PART_NAME_FORBIDDEN.search(name):
        raise PackageRejected(f"part name refused: {name[:80]!r}")
    decoded = unquote(name)
    if _PART_NAME_FORBIDDEN.search(decoded) or decoded.count("/") != name.count("/"):
        raise PackageRejected(f"part name with an encoded separator or control character: {name[:80]!r}")
    for segment in name.split("/"):
        if not segment or segment in (".", "..") or segment.endswith("."):
            raise PackageRejected(f"part name refused: {name[:80]!r}")


def read_members(data: bytes, caps: Caps) -> list[tuple[str, bytes]]:
    """The members of the zip, in order, with every cap enforced on the bytes actually inflated."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise PackageRejected(f"not a readable zip ({exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > caps.max_members:
            raise HeldError("limit-exceeded", f"{len(infos)} zip members, more than {caps.max_members}")
        ordered = sorted(infos, key=lambda i: i.header_offset)
        for first, second in itertools.pairwise(ordered):
            if first.header_offset + 30 + first.compress_size > second.header_offset:
                raise PackageRejected("overlapping zip members")
        declared = sum(i.file_size for i in infos)
        if declared > caps.max_total_bytes:
            raise HeldError("limit-exceeded", f"{declared} bytes uncompressed, over {caps.max_total_bytes}")
        members: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        total = 0
        for info in infos:
            name = info.filename
            if name.endswith("/"):
                if info.file_size:
                    raise PackageRejected("a directory entry with data")
                continue
            _check_part_name(name)
            key = _key(name)
            if key in seen:
                raise PackageRejected(f"duplicate part name {name[:80]!r}")
            seen.add(key)
            if info.flag_bits & 0x1:
                raise PackageRejected("an encrypted zip member")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise PackageRejected(f"zip compression method {info.compress_type}")
            chunks: list[bytes] = []
            size = 0
            try:
                with archive.open(info) as handle:
                    while chunk := handle.read(_CHUNK):
                        size += len(chunk)
                        if total + size > caps.max_total_bytes:
                            raise HeldError("limit-exceeded", f"over {caps.max_total_bytes} bytes inflated")
                        chunks.append(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
                raise PackageRejected(f"zip member {name[:80]!r} unreadable ({exc})") from None
            if size > _RATIO_FLOOR and size > caps.max_ratio * max(info.compress_size, 1):
                raise HeldError("limit-exceeded", f"compression ratio over {caps.max_ratio} ({name[:80]!r})")
            total += size
            members.append((name, b"".join(chunks)))
    return members


def _classify_part(name: str, ctype: str | None, incoming: set[str], data: bytes) -> str | None:
    """The kind a part is removed as ("" = removed, not counted), None to keep it."""
    low = name.lower()
    base = low.rsplit("/", 1)[-1]
    ct = (ctype or "").lower()
    if "vbaprojectsignature" in f"{ct} {base}" or any(k.startswith("vbaprojectsignature") for k in incoming):
        return ""
    if ct == "application/vnd.ms-office.vbaproject" or "vbaproject" in incoming or "vbaproject" in base:
        return "vba-project"
    if "vbadata" in ct or "wordvbadata" in incoming or "vbadata" in base:
        return ""
    customizations = {"keymapcustomizations", "attachedtoolbars"}
    if any(c in ct for c in customizations) or incoming & customizations:
        return "macro-customization"
    if "macrosheet" in ct or incoming & {"xlmacrosheet", "xlintlmacrosheet"} or "/macrosheets/" in f"/{low}":
        return "xlm-macrosheet"
    if "dialogsheet" in ct or "dialogsheet" in incoming or "/dialogsheets/" in f"/{low}":
        return "dialog-sheet"
    if ct == "application/vnd.ms-office.activex+xml":
        return "activex"
    if "activex" in ct or "/activex/" in f"/{low}" or incoming & {"control", "activexcontrolbinary"}:
        return "activex-binary"
    if "/embeddings/" in f"/{low}" or "oleobject" in ct or incoming & {"oleobject", "package"}:
        return "ole-embedding" if data.startswith(OLE_MAGIC) or "oleobject" in ct else "embedded-package"
    if "extensibility" in incoming:
        return "custom-ui"
    if low.startswith("customui/"):
        return ""
    if "externallink" in ct or "externallink" in incoming or "/externallinks/" in f"/{low}":
        return "external-link"
    if ct.endswith("spreadsheetml.connections+xml") or "connections" in incoming:
        return "data-connection"
    if "querytable" in ct or "querytable" in incoming:
        return ""
    if ct == "application/vnd.ms-office.webextension+xml" or "webextension" in incoming:
        return "web-extension"
    if "webextension" in ct or "webextensiontaskpanes" in incoming or "/webextensions/" in f"/{low}":
        return ""
    if "afchunk" in incoming:
        return "alt-chunk"
    if "printersettings" in ct or "printersettings" in incoming:
        return "printer-settings"
    if "digital-signature" in ct or "_xmlsignatures/" in low:
        return "signature" if "xmlsignature+xml" in ct else ""
    if ct == "image/svg+xml" or base.endswith((".svg", ".svgz")):
        return "svg-image"
    if data.startswith(OLE_MAGIC):
        return "ole-embedding"
    if data.startswith(ZIP_MAGIC):
        return "embedded-package"
    if not ct:
        return "unknown-part"
    if _is_xml_type(ct) or ct == _VML_TYPE:
        return None
    if ct.startswith(("image/", "audio/", "video/")) or ct in _KEPT_BINARY_TYPES:
        return None
    return "unknown-part"


def _is_xml_type(ctype: str) -> bool:
    ct = ctype.lower()
    return ct.endswith("+xml") or ct in ("application/xml", "text/xml", _VML_TYPE)


def _has_dde_link(data: bytes, name: str) -> bool:
    try:
        root = parse_xml(data, name)
    except PackageRejected:
        return False
    return _any(root, _tags(_S, "ddeLink"))


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info
