"""The XML of each kept part, disarmed element by element (the transforms common to Word, Excel, PowerPoint).

OLE objects and ActiveX controls leave the markup, replaced by their preview picture where the format
has one in place; macros bound to shapes and controls, program actions, SVG pictures and VML links to
fetch go; references to removed relationships lose the reference or the element; a kept web link is for
hyperlink elements only. Word fields and Excel workbooks have their own modules
(:mod:`~detox.sandbox.inside.converters.office.word`, :mod:`~detox.sandbox.inside.converters.office.excel`).
"""

from __future__ import annotations

import copy
from collections import Counter

from lxml import etree

from detox.sandbox.inside.converters.office.ooxml import (
    _A,
    _A_LINKS,
    _ASVG_BLIP,
    _DANGEROUS_ACTIONS,
    _O,
    _O_OLE,
    _OBJECT_MARKUP,
    _OLE_GRAPHIC_URIS,
    _P,
    _P_GRAPHIC_FRAME,
    _R,
    _REFERENCING,
    _S,
    _URL_SCHEME,
    _V,
    _VML_ANY,
    _W,
    _W_FORM_MACROS,
    _W_MAIL_MERGE,
    _W_OBJECT,
    _W_UPDATE_FIELDS,
    _X14_FORM_CONTROL,
    _X_FMLA_MACRO,
    _XDR_ANY,
    _attr,
    _drop,
    _find,
    _is,
    _local,
    _ns,
    _split,
)
from detox.sandbox.inside.converters.office.package import _Rel
from detox.sandbox.inside.converters.office.word import LinkVerdict

_HYPERLINK_ELEMENTS = frozenset({"hyperlink", "hlinkClick", "hlinkHover", "hlinkMouseOver"})

# Elements that stay when the relationship they name is removed (the reference alone goes);
# media elements whose r:link is removed go whole (the attribute is required there).
_KEEP_WITHOUT_REFERENCE = frozenset(
    {"hyperlink", "hlinkClick", "hlinkHover", "hlinkMouseOver", "blip", "imagedata", "fill", "stroke"}
)
_LINKED_MEDIA = frozenset({"videoFile", "audioFile", "quickTimeFile", "wavAudioFile", "media"})


def disarm_objects(root: etree._Element) -> None:
    """OLE objects and ActiveX controls out of the markup, their preview pictures kept."""
    for el in _find(root, _W_OBJECT):
        _word_object_to_picture(el)
    for el in _find(root, _P_GRAPHIC_FRAME):
        _ppt_ole_frame_to_picture(el)
    for el in _find(root, _OBJECT_MARKUP):
        _drop(el)
    for el in root.iter(f"{{{_V}}}*"):
        if _O_OLE in el.attrib:
            del el.attrib[_O_OLE]


def word_settings(root: etree._Element, counts: Counter[str]) -> None:
    """Mail merge (data source queries), update-fields-on-open and form-field macros go."""
    for el in _find(root, _W_MAIL_MERGE):
        counts["mail-merge"] += 1
        _drop(el)
    for el in _find(root, _W_UPDATE_FIELDS):
        _drop(el)
    for el in _find(root, _W_FORM_MACROS):
        if (_attr(el, "val") or "").strip():
            counts["macro-binding"] += 1
        _drop(el)


def drawing_and_vml(root: etree._Element, counts: Counter[str], link_verdict: LinkVerdict) -> None:
    """Macros bound to shapes and form controls, SVG pictures, program actions, VML links to fetch."""
    for el in root.iter(*_XDR_ANY):
        if "macro" in el.attrib:
            if el.attrib["macro"].strip():
                counts["macro-binding"] += 1
            del el.attrib["macro"]
    for el in root.iter(*_X14_FORM_CONTROL):
        if "fmlaMacro" in el.attrib:
            if el.attrib["fmlaMacro"].strip():
                counts["macro-binding"] += 1
            del el.attrib["fmlaMacro"]
    for el in _find(root, _X_FMLA_MACRO):
        if (el.text or "").strip():
            counts["macro-binding"] += 1
        _drop(el)
    for el in _find(root, _ASVG_BLIP):
        parent = el.getparent()
        _drop(parent if parent is not None and _local(parent) == "ext" else el)
    for el in _find(root, _A_LINKS):
        if (el.get("action") or "").strip().lower().startswith(_DANGEROUS_ACTIONS):
            counts["action"] += 1
            _drop(el)
    for el in root.iter(*_VML_ANY):
        for attr in list(el.attrib):
            if _split(attr)[1] not in ("src", "href"):
                continue
            value = el.attrib[attr].strip()
            if not (_URL_SCHEME.match(value) or value.startswith(("\\\\", "//"))):
                continue
            # A plain href is a shape's hyperlink; src and o:href name a picture to fetch.
            verdict = link_verdict(value) if attr == "href" else "external-link"
            if verdict is not None:
                counts[verdict] += 1
                del el.attrib[attr]


def misused_hyperlinks(
    root: etree._Element, kept: list[tuple[_Rel, str | None]], counts: Counter[str]
) -> None:
    """A kept web link is for hyperlink elements only: anything else naming it (an attachedTemplate,
    a picture, a subdocument pointing at a relationship typed "hyperlink") goes."""
    links = {rel.rid for rel, _ in kept if rel.external}
    if not links:
        return
    r1, r2 = sorted(_R)
    found = _REFERENCING(root, r1=r1, r2=r2, o=_O)
    assert isinstance(found, list)
    for el in found:
        if not isinstance(el, etree._Element) or _local(el) in _HYPERLINK_ELEMENTS:
            continue
        if any(value in links for attr, value in el.attrib.items() if _split(attr)[0] in _R):
            counts["external-link"] += 1
            _drop(el)


def dangling_references(root: etree._Element, gone: set[str]) -> None:
    """Elements that refer to a removed relationship lose the reference, or go."""
    if not gone:
        return
    r1, r2 = sorted(_R)
    found = _REFERENCING(root, r1=r1, r2=r2, o=_O)
    assert isinstance(found, list)
    for el in found:
        if not isinstance(el, etree._Element):
            continue
        for attr, value in list(el.attrib.items()):
            ns, local = _split(attr)
            if not ((ns in _R) or (ns == _O and local == "relid")) or value not in gone:
                continue
            el_local = _local(el)
            if local == "link" and el_local not in _LINKED_MEDIA:
                del el.attrib[attr]
            elif el_local in _KEEP_WITHOUT_REFERENCE:
                del el.attrib[attr]
                if _is(el, _S, "hyperlink") and el.get("location") is None:
                    _drop(el)
                    break
            else:
                _drop(el)
                break


def _word_object_to_picture(obj: etree._Element) -> None:
    """w:object (an OLE object or ActiveX control in Word) -> its preview picture, or nothing."""
    parent = obj.getparent()
    if parent is None:
        return
    for child in list(obj):
        if _is(child, _O, "OLEObject") or _is(child, _W, "control", "objectEmbed", "objectLink", "movie"):
            obj.remove(child)
    drawing = next((c for c in obj if _is(c, _W, "drawing")), None)
    if drawing is not None:
        parent.replace(obj, drawing)
    elif any(_ns(c) == _V for c in obj):
        obj.tag = f"{{{_ns(obj)}}}pict"
        obj.attrib.clear()
    else:
        _drop(obj)


def _ppt_ole_frame_to_picture(frame: etree._Element) -> None:
    """An OLE p:graphicFrame -> the p:pic its fallback holds, where the frame was; else removed."""
    data = next((e for e in frame.iter() if _is(e, _A, "graphicData")), None)
    if data is None or data.get("uri") not in _OLE_GRAPHIC_URIS:
        return
    parent = frame.getparent()
    if parent is None:
        return
    picture = next((e for e in data.iter() if _is(e, _P, "pic")), None)
    if picture is None:
        _drop(frame)
        return
    pic = copy.deepcopy(picture)
    ns = _ns(frame)
    frame_props = next((e for e in frame.iter() if _is(e, _P, "cNvPr")), None)
    pic_props = next((e for e in pic.iter() if _is(e, _P, "cNvPr")), None)
    if frame_props is not None and pic_props is not None:
        for attr in ("id", "name"):
            value = frame_props.get(attr)
            if value is not None:
                pic_props.set(attr, value)
        for child in list(pic_props):
            pic_props.remove(child)  # hlinkClick and friends of the OLE frame: not carried over
    xfrm = next((c for c in frame if _is(c, _P, "xfrm")), None)
    sp_pr = next((c for c in pic if _is(c, _P, "spPr")), None)
    if sp_pr is None:
        sp_pr = etree.SubElement(pic, f"{{{ns}}}spPr")
    if xfrm is not None:
        a_ns = _ns(xfrm[0]) if len(xfrm) else "http://schemas.openxmlformats.org/drawingml/2006/main"
        for child in list(sp_pr):
            if _is(child, _A, "xfrm"):
                sp_pr.remove(child)
        new_xfrm = etree.Element(f"{{{a_ns}}}xfrm")
        for child in xfrm:
            new_xfrm.append(copy.deepcopy(child))
        sp_pr.insert(0, new_xfrm)
    parent.replace(frame, pic)


# Containers the schemas require to have children: removed once their last child is gone.
_CONTAINER_TAGS = tuple(
    "{*}" + name
    for name in ("externalReferences", "oleObjects", "controls", "customProperties", "definedNames", "extLst")
)


def _empty_containers(root: etree._Element) -> None:
    candidates = [el for el in root.iter(*_CONTAINER_TAGS) if el is not root]
    for el in reversed(candidates):  # innermost first: an emptied parent is seen after its children
        if len(el) == 0 and not (el.text or "").strip():
            _drop(el)
