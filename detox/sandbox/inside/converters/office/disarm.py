"""One OOXML package, rebuilt: the walk from the package root, the parts kept, the package written.

:class:`Disarm` reads the members (:mod:`~detox.sandbox.inside.converters.office.package`), finds the
main part, classifies and removes parts, prunes relationships, drops what no kept relationship reaches
any more, counts what went, runs the part transforms over every kept XML part
(:mod:`~detox.sandbox.inside.converters.office.parts`, ``word``, ``excel``), rebuilds
``[Content_Types].xml`` and the relationship parts, writes the new zip and checks it once more
(:func:`~detox.sandbox.inside.converters.office.verify.verify`).
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections import Counter
from urllib.parse import unquote

from lxml import etree

from detox.sandbox.inside.converters.office.excel import _external_formulas, disarm_workbook
from detox.sandbox.inside.converters.office.model import (
    _VML_TYPE,
    MACRO_MAIN_TYPES,
    MAIN_TYPES,
    Caps,
    HeldError,
    PackageRejected,
    Result,
)
from detox.sandbox.inside.converters.office.ooxml import (
    _CT_NS,
    _RELS_CT,
    _RELS_NS,
    _S,
    _SAFE_LINK_SCHEMES,
    _URL_SCHEME,
    _W_FIELD_EVENTS,
    _any,
    _is,
    _scheme,
    parse_xml,
    serialize,
)
from detox.sandbox.inside.converters.office.package import (
    _classify_part,
    _has_dde_link,
    _is_xml_type,
    _key,
    _Rel,
    _rels_name,
    _source_of_rels,
    _zip_info,
    read_members,
)
from detox.sandbox.inside.converters.office.parts import (
    _empty_containers,
    dangling_references,
    disarm_objects,
    drawing_and_vml,
    misused_hyperlinks,
    word_settings,
)
from detox.sandbox.inside.converters.office.verify import verify
from detox.sandbox.inside.converters.office.word import disarm_fields

# Kinds of removed parts counted only when something referred to them; the others always are.
_COUNTED_IF_REFERENCED = frozenset(
    {"unknown-part", "printer-settings", "svg-image", "signature", "vml-drawing"}
)


class Disarm:
    """One package, rebuilt. ``run()`` returns the new package or raises."""

    def __init__(self, data: bytes, caps: Caps, *, keep_hyperlinks: bool) -> None:
        self.data = data
        self.caps = caps
        self.keep_hyperlinks = keep_hyperlinks
        self.parts: dict[str, bytes] = {}  # name -> bytes, in the zip's order (rels parts excluded)
        self.by_key: dict[str, str] = {}  # _key(name) -> name
        self.defaults: dict[str, str] = {}  # extension (casefolded) -> content type
        self.overrides: dict[str, str] = {}  # _key(part name) -> content type
        self.rels: dict[str, list[_Rel]] = {}  # source part ("" = package) -> relationships
        self.rels_order: dict[str, int] = {}
        self.removed: dict[str, str] = {}  # part name -> kind ("" = not counted)
        self.removed_ids: dict[str, set[str]] = {}  # source part -> relationship ids removed
        self.kept_rels: dict[str, list[tuple[_Rel, str | None]]] = {}
        self.external_removed: dict[str, list[str]] = {}  # source part -> kinds of external rels removed
        self.counts: Counter[str] = Counter()
        self.main = ""

    # -- the steps ---------------------------------------------------------------------------

    def run(self) -> Result:
        members = read_members(self.data, self.caps)
        self._load(members)
        source_type, plain_type = self._main_type()
        kind, mime, extension = MAIN_TYPES[plain_type]
        self._classify()
        self._check_vml()
        self._prune_relationships()
        self._collect_garbage()
        self._count_removed_parts()
        written: list[tuple[str, bytes]] = []
        for name, data in self.parts.items():
            if name in self.removed:
                continue
            ctype = self.content_type(name)
            if ctype is not None and _is_xml_type(ctype):
                root = parse_xml(self._xml_bytes(name, data), name)
                self._transform(name, root, is_main=name == self.main and kind == "excel")
                data = serialize(root)
            written.append((name, data))
        for source in self._rels_sources():
            rels = self.kept_rels.get(source, [])
            if rels:
                written.append((_rels_name(source), self._serialize_rels(rels)))
        content_types = self._serialize_content_types([n for n, _ in written if n in self.parts], plain_type)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as out:
            out.writestr(_zip_info("[Content_Types].xml"), content_types)
            for name, data in sorted(written, key=lambda item: self._order(item[0])):
                out.writestr(_zip_info(name), data)
        package = buffer.getvalue()
        verify(package, keep_hyperlinks=self.keep_hyperlinks)
        return Result(package, mime, extension, kind, source_type, len(written) + 1, self.counts)

    def _order(self, name: str) -> tuple[int, int]:
        """Root relationships first, then the parts in their original order, each followed by its rels."""
        if name == "_rels/.rels":
            return (0, 0)
        return (1, self.rels_order.get(name, 0))

    def _load(self, members: list[tuple[str, bytes]]) -> None:
        content_types: bytes | None = None
        rels_parts: list[tuple[str, bytes]] = []
        for position, (name, data) in enumerate(members):
            self.rels_order[name] = position * 2
            if name == "[Content_Types].xml":
                content_types = data
            elif _source_of_rels(name) is not None:
                rels_parts.append((name, data))
            elif _key(name) == _key("[Content_Types].xml"):
                raise PackageRejected("a second [Content_Types].xml")
            else:
                self.parts[name] = data
                self.by_key[_key(name)] = name
        if content_types is None:
            raise PackageRejected("no [Content_Types].xml: not an OOXML package")
        self._load_content_types(content_types)
        for name, data in rels_parts:
            source = _source_of_rels(name)
            assert source is not None
            if source and _key(source) not in self.by_key:
                continue  # relationships of a part that does not exist: dropped
            source = self.by_key.get(_key(source), source)
            if source in self.rels:
                raise PackageRejected(f"two relationship parts for {source[:80]!r}")
            self.rels[source] = self._parse_rels(name, data)
            self.rels_order[_rels_name(source)] = self.rels_order.get(source, -1) + 1

    def _load_content_types(self, data: bytes) -> None:
        root = parse_xml(data, "[Content_Types].xml")
        if root.tag != f"{{{_CT_NS}}}Types":
            raise PackageRejected("[Content_Types].xml is not a Types element")
        for el in root:
            if el.tag == f"{{{_CT_NS}}}Default":
                ext, ctype = el.get("Extension"), el.get("ContentType")
                if ext and ctype:
                    self.defaults[ext.casefold()] = ctype.strip()
            elif el.tag == f"{{{_CT_NS}}}Override":
                part, ctype = el.get("PartName"), el.get("ContentType")
                if part and ctype:
                    self.overrides[_key(part.lstrip("/"))] = ctype.strip()

    def _parse_rels(self, name: str, data: bytes) -> list[_Rel]:
        root = parse_xml(data, name)
        if root.tag != f"{{{_RELS_NS}}}Relationships":
            raise PackageRejected(f"{name}: not a Relationships element")
        rels: list[_Rel] = []
        ids: set[str] = set()
        for el in root:
            if el.tag != f"{{{_RELS_NS}}}Relationship":
                continue
            rid, rtype, target = el.get("Id"), el.get("Type"), el.get("Target")
            if not rid or rtype is None or target is None:
                raise PackageRejected(f"{name}: a relationship without Id, Type or Target")
            if rid in ids:
                raise PackageRejected(f"{name}: duplicate relationship id {rid[:40]!r}")
            ids.add(rid)
            external = (el.get("TargetMode") or "Internal").strip().casefold() == "external"
            rels.append(_Rel(rid, rtype.strip(), target, external))
        return rels

    def content_type(self, name: str) -> str | None:
        ctype = self.overrides.get(_key(name))
        if ctype is None:
            base = name.rsplit("/", 1)[-1]
            if "." in base:
                ctype = self.defaults.get(base.rsplit(".", 1)[1].casefold())
        return ctype

    def resolve(self, source: str, rel: _Rel) -> str | None:
        """The part an internal relationship points at, None when there is no such part."""
        target = rel.target.strip()
        if not target or "\\" in target or _URL_SCHEME.match(target) or "#" in target:
            return None
        path = unquote(target)
        joined = path.lstrip("/") if path.startswith("/") else posixpath.join(posixpath.dirname(source), path)
        normal = posixpath.normpath(joined)
        if normal in (".", "..") or normal.startswith("../"):
            return None
        return self.by_key.get(_key(normal))

    def _main_type(self) -> tuple[str, str]:
        mains = [r for r in self.rels.get("", []) if r.kind == "officeDocument" and not r.external]
        if len(mains) != 1:
            raise PackageRejected("not exactly one main document relationship")
        main = self.resolve("", mains[0])
        if main is None:
            raise PackageRejected("the main document part is missing")
        self.main = main
        source_type = (self.content_type(main) or "").lower()
        plain = MACRO_MAIN_TYPES.get(source_type, source_type)
        if plain not in MAIN_TYPES:
            if "binary" in source_type:
                raise HeldError("unsupported-type", "an Excel binary workbook (xlsb)")
            raise HeldError("unsupported-type", f"an OPC package of type {source_type[:100]!r}")
        return source_type, plain

    def _incoming(self) -> dict[str, set[str]]:
        """Part name -> the kinds of the relationships pointing at it (from any source)."""
        incoming: dict[str, set[str]] = {}
        for source, rels in self.rels.items():
            for rel in rels:
                if not rel.external:
                    target = self.resolve(source, rel)
                    if target is not None:
                        incoming.setdefault(target, set()).add(rel.kind.casefold())
        return incoming

    def _classify(self) -> None:
        incoming = self._incoming()
        for name, data in self.parts.items():
            kind = _classify_part(name, self.content_type(name), incoming.get(name, set()), data)
            if kind is not None:
                self.removed[name] = kind

    def _check_vml(self) -> None:
        """VML drawings that are not well-formed XML are dropped (Office writes some that are not)."""
        for name, data in self.parts.items():
            if name in self.removed or (self.content_type(name) or "").lower() != _VML_TYPE:
                continue
            try:
                parse_xml(self._xml_bytes(name, data), name)
            except PackageRejected:
                self.removed[name] = "vml-drawing"

    def _prune_relationships(self) -> None:
        for source, rels in self.rels.items():
            if source and source in self.removed:
                continue
            kept: list[tuple[_Rel, str | None]] = []
            gone = self.removed_ids.setdefault(source, set())
            for rel in rels:
                if rel.external:
                    verdict = self._external_verdict(rel)
                    if verdict is None:
                        kept.append((rel, None))
                    else:
                        self.external_removed.setdefault(source, []).append(verdict)
                        gone.add(rel.rid)
                    continue
                target = self.resolve(source, rel)
                if target is None or target in self.removed or rel.kind.casefold() == "attachedtemplate":
                    gone.add(rel.rid)
                    continue
                kept.append((rel, target))
            self.kept_rels[source] = kept

    def _external_verdict(self, rel: _Rel) -> str | None:
        """None to keep an external relationship, else the kind it is counted as."""
        if rel.kind.casefold() != "hyperlink":
            return "external-link"
        return self._link_verdict(rel.target)

    def _link_verdict(self, url: str) -> str | None:
        if _scheme(url) not in _SAFE_LINK_SCHEMES:
            return "external-link"
        return None if self.keep_hyperlinks else "hyperlink"

    def _collect_garbage(self) -> None:
        """Remove the parts no kept relationship reaches from the package root."""
        reached: set[str] = set()
        todo = [""]
        while todo:
            source = todo.pop()
            for _, target in self.kept_rels.get(source, []):
                if target is not None and target not in reached and target not in self.removed:
                    reached.add(target)
                    todo.append(target)
        for name in self.parts:
            if name not in reached and name not in self.removed:
                self.removed[name] = ""
        # Relationships whose target was only now found unreachable cannot exist: a kept source's
        # kept targets are reached by construction. Sources removed here lose their rels with them.
        for source in list(self.kept_rels):
            if source and source in self.removed:
                del self.kept_rels[source]
        if self.main in self.removed:
            raise PackageRejected(f"the main part {self.main[:80]!r} is itself something to remove")

    def _count_removed_parts(self) -> None:
        """The counts for the report: removed parts by kind, and the external relationships removed."""
        # Leftovers nothing points at (Office's [trash]/ folder...) are not worth a line in the notice.
        referenced = self._incoming()
        for name, kind in self.removed.items():
            if kind in _COUNTED_IF_REFERENCED and name not in referenced:
                self.removed[name] = ""
        for source, verdicts in self.external_removed.items():
            if source in self.kept_rels:  # the source part stays: its external links were real
                self.counts.update(verdicts)
        kinds = Counter(self.removed.values())
        for kind, count in kinds.items():
            if kind and kind != "activex-binary":
                self.counts[kind] += count
        if not kinds["activex"] and kinds["activex-binary"]:
            self.counts["activex"] += kinds["activex-binary"]
        for name, kind in self.removed.items():
            if kind == "external-link" and _has_dde_link(self.parts[name], name):
                self.counts["external-link"] -= 1
                self.counts["dde"] += 1

    def _rels_sources(self) -> list[str]:
        return [s for s in self.kept_rels if s == "" or (s in self.parts and s not in self.removed)]

    def _xml_bytes(self, name: str, data: bytes) -> bytes:
        if len(data) > self.caps.max_xml_bytes:
            raise HeldError("limit-exceeded", f"{name[:80]!r}: XML over {self.caps.max_xml_bytes} bytes")
        return data

    # -- writing -----------------------------------------------------------------------------

    def _serialize_rels(self, rels: list[tuple[_Rel, str | None]]) -> bytes:
        root = etree.Element(f"{{{_RELS_NS}}}Relationships", nsmap={None: _RELS_NS})
        for rel, _ in rels:
            attrs = {"Id": rel.rid, "Type": rel.type, "Target": rel.target}
            if rel.external:
                attrs["TargetMode"] = "External"
            etree.SubElement(root, f"{{{_RELS_NS}}}Relationship", attrs)
        return serialize(root)

    def _serialize_content_types(self, names: list[str], plain_main: str) -> bytes:
        root = etree.Element(f"{{{_CT_NS}}}Types", nsmap={None: _CT_NS})
        defaults = {"rels": _RELS_CT, "xml": "application/xml"}
        overrides: list[tuple[str, str]] = []
        for name in names:
            ctype = self.content_type(name)
            if ctype is None:
                raise PackageRejected(f"{name[:80]!r} has no content type")
            if name == self.main:
                ctype = plain_main
            base = name.rsplit("/", 1)[-1]
            ext = base.rsplit(".", 1)[1].casefold() if "." in base else ""
            from_default = bool(ext) and _key(name) not in self.overrides and self.defaults.get(ext) == ctype
            if from_default and defaults.get(ext, ctype) == ctype:
                defaults[ext] = ctype
            else:
                overrides.append(("/" + name, ctype))
        for ext, ctype in defaults.items():
            etree.SubElement(root, f"{{{_CT_NS}}}Default", {"Extension": ext, "ContentType": ctype})
        for part, ctype in overrides:
            etree.SubElement(root, f"{{{_CT_NS}}}Override", {"PartName": part, "ContentType": ctype})
        return serialize(root)

    # -- the XML transforms ------------------------------------------------------------------

    def _transform(self, name: str, root: etree._Element, *, is_main: bool) -> None:
        disarm_objects(root)
        if _any(root, _W_FIELD_EVENTS):
            disarm_fields(root, self.counts, self._link_verdict)
        word_settings(root, self.counts)
        if is_main:
            disarm_workbook(root, self.removed_ids.get(name, set()), self.counts)
        if _is(root, _S, "worksheet"):
            self.counts["dde"] += _external_formulas(root)
        drawing_and_vml(root, self.counts, self._link_verdict)
        dangling_references(root, self.removed_ids.get(name, set()))
        misused_hyperlinks(root, self.kept_rels.get(name, []), self.counts)
        _empty_containers(root)
