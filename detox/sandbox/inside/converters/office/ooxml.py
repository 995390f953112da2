"""Hostile OOXML XML: the namespaces (transitional and strict), the parser and the element helpers.

Every XML part is parsed here (:func:`parse_xml`) with libxml2 configured for hostile input, and
written back from the tree (:func:`serialize`); the tag tuples let lxml filter elements in C.
"""

from __future__ import annotations

import re

from lxml import etree

from detox.sandbox.inside.converters.office.model import PackageRejected

# -- namespaces --------------------------------------------------------------------------------

_CT_NS = "http://schemas.openxmlformats.org/package/2006/content-types"
_RELS_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_RELS_CT = "application/vnd.openxmlformats-package.relationships+xml"


def _both(transitional: str, strict: str) -> frozenset[str]:
    return frozenset({transitional, strict})


_W = _both(
    "http://schemas.openxmlformats.org/wordprocessingml/2006/main",
    "http://purl.oclc.org/ooxml/wordprocessingml/main",
)
_S = _both(
    "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
    "http://purl.oclc.org/ooxml/spreadsheetml/main",
)
_P = _both(
    "http://schemas.openxmlformats.org/presentationml/2006/main",
    "http://purl.oclc.org/ooxml/presentationml/main",
)
_A = _both(
    "http://schemas.openxmlformats.org/drawingml/2006/main", "http://purl.oclc.org/ooxml/drawingml/main"
)
_R = _both(
    "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
    "http://purl.oclc.org/ooxml/officeDocument/relationships",
)
_C = _both(
    "http://schemas.openxmlformats.org/drawingml/2006/chart", "http://purl.oclc.org/ooxml/drawingml/chart"
)
_XDR = _both(
    "http://schemas.openxmlformats.org/drawingml/2006/spreadsheetDrawing",
    "http://purl.oclc.org/ooxml/drawingml/spreadsheetDrawing",
)
_V = "urn:schemas-microsoft-com:vml"
_O = "urn:schemas-microsoft-com:office:office"
_X = "urn:schemas-microsoft-com:office:excel"
_X14 = "http://schemas.microsoft.com/office/spreadsheetml/2009/9/main"
_ASVG = "http://schemas.microsoft.com/office/drawing/2016/SVG/main"
_OLE_GRAPHIC_URIS = frozenset(
    {
        "http://schemas.openxmlformats.org/presentationml/2006/ole",
        "http://purl.oclc.org/ooxml/presentationml/ole",
    }
)

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_SAFE_LINK_SCHEMES = frozenset({"http", "https", "mailto"})
_DDE = re.compile(r"(?<![A-Za-z0-9_])DDE(?:AUTO)?(?![A-Za-z0-9_])", re.IGNORECASE)
_EXTERNAL_FIELDS = frozenset({"INCLUDETEXT", "INCLUDE", "INCLUDEPICTURE", "IMPORT", "LINK", "RD", "DATABASE"})
_AUTO_NAME = re.compile(r"^(?:_xlnm\.)?auto_(?:open|close|activate|deactivate)", re.IGNORECASE)
_EXTERNAL_BOOK_REF = re.compile(r"\[\d+\]")
_STRING_LITERAL = re.compile(r'"(?:[^"]|"")*"')
_DANGEROUS_ACTIONS = ("ppaction://program", "ppaction://macro", "ppaction://ole")
_XML_DECL_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_PART_NAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")


# -- XML ---------------------------------------------------------------------------------------


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


def parse_xml(data: bytes, name: str) -> etree._Element:
    """Parse one hostile XML part; raise PackageRejected for anything OOXML does not allow."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff", b"<\x00", b"\x00<")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise PackageRejected(f"{name}: undecodable UTF-16") from None
        if "<!DOCTYPE" in text or "<!ENTITY" in text:
            raise PackageRejected(f"{name}: XML with a DTD")
    else:
        if b"\x00" in data:
            raise PackageRejected(f"{name}: NUL bytes in UTF-8 XML")
        if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
            raise PackageRejected(f"{name}: XML with a DTD")
        declared = _XML_DECL_ENCODING.match(data.removeprefix(b"\xef\xbb\xbf"))
        if declared and declared.group(1).lower() not in (b"utf-8", b"utf8", b"utf-16", b"utf16"):
            raise PackageRejected(f"{name}: XML encoding {declared.group(1).decode('ascii')!r}")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise PackageRejected(f"{name}: not well-formed XML ({exc})") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise PackageRejected(f"{name}: XML with a DTD")
    if next(root.iter(etree.Entity), None) is not None:
        raise PackageRejected(f"{name}: XML with entity references")
    return root


def serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True, standalone=True)


def _ns(el: etree._Element) -> str:
    tag = el.tag
    return tag[1:].split("}", 1)[0] if isinstance(tag, str) and tag.startswith("{") else ""


def _local(el: etree._Element) -> str:
    tag = el.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _is(el: etree._Element, namespaces: frozenset[str] | str, *names: str) -> bool:
    ns = _ns(el)
    in_ns = ns in namespaces if isinstance(namespaces, frozenset) else ns == namespaces
    return in_ns and _local(el) in names


def _attr(el: etree._Element, name: str) -> str | None:
    """An attribute in the element's own namespace (w:val on a w: element...)."""
    return el.get(f"{{{_ns(el)}}}{name}")


def _split(attr: str) -> tuple[str, str]:
    if attr.startswith("{"):
        ns, local = attr[1:].split("}", 1)
        return ns, local
    return "", attr


def _drop(el: etree._Element) -> None:
    """Remove an element, keeping any text that followed it."""
    parent = el.getparent()
    if parent is None:
        return
    if el.tail and el.tail.strip():
        previous = el.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    parent.remove(el)


def _tags(namespaces: frozenset[str] | str, *names: str) -> tuple[str, ...]:
    """Clark names for ``root.iter(*tags)``: lxml then filters in C, not element by element in Python."""
    spaces = sorted(namespaces) if isinstance(namespaces, frozenset) else [namespaces]
    return tuple(f"{{{ns}}}{name}" for ns in spaces for name in names)


def _find(root: etree._Element, tags: tuple[str, ...]) -> list[etree._Element]:
    return list(root.iter(*tags))


def _any(root: etree._Element, tags: tuple[str, ...]) -> bool:
    return next(root.iter(*tags), None) is not None


_W_OBJECT = _tags(_W, "object")
_P_GRAPHIC_FRAME = _tags(_P, "graphicFrame")
_OBJECT_MARKUP = (
    *_tags(_O, "OLEObject"),
    *_tags(_W, "control", "objectEmbed", "objectLink"),
    *_tags(_P, "controls", "control", "oleObj"),
    *_tags(_S, "oleObjects", "controls"),
)
_VML_ANY = (f"{{{_V}}}*", f"{{{_O}}}*", f"{{{_X}}}*")
_O_OLE = f"{{{_O}}}ole"
_W_FIELD_EVENTS = _tags(_W, "fldChar", "instrText", "delInstrText", "fldSimple")
_W_ANY = tuple(f"{{{ns}}}*" for ns in sorted(_W))
_W_RUN = frozenset(_tags(_W, "r"))
_W_FLDCHAR = frozenset(_tags(_W, "fldChar"))
_W_INSTR = frozenset(_tags(_W, "instrText", "delInstrText"))
_W_FLDSIMPLE = frozenset(_tags(_W, "fldSimple"))
_W_TEXT = frozenset(_tags(_W, "t", "delText"))
_W_RPR = frozenset(_tags(_W, "rPr"))
_W_FLDDATA = frozenset(_tags(_W, "fldData"))
_W_MAIL_MERGE = _tags(_W, "mailMerge")
_W_UPDATE_FIELDS = _tags(_W, "updateFields")
_W_FORM_MACROS = _tags(_W, "entryMacro", "exitMacro")
_S_FORMULA = _tags(_S, "f")
_S_DEFINED_NAME = _tags(_S, "definedName")
_S_WORKBOOK_VIEW = _tags(_S, "workbookView")
_XDR_ANY = tuple(f"{{{ns}}}*" for ns in sorted(_XDR))
_X14_FORM_CONTROL = (f"{{{_X14}}}formControlPr",)
_X_FMLA_MACRO = (f"{{{_X}}}FmlaMacro",)
_ASVG_BLIP = (f"{{{_ASVG}}}svgBlip",)
_A_LINKS = _tags(_A, "hlinkClick", "hlinkHover", "hlinkMouseOver")
# Elements with an attribute that names a relationship: r:* in either namespace, or VML's o:relid.
_REFERENCING = etree.XPath(
    "//*[@*[namespace-uri() = $r1 or namespace-uri() = $r2"
    " or (namespace-uri() = $o and local-name() = 'relid')]]"
)


def _scheme(url: str) -> str | None:
    match = _URL_SCHEME.match(url.strip())
    return match.group(0)[:-1].lower() if match else None
