"""Office converter: rebuilds an OOXML package without anything that can run, fetch or embed.

Runs INSIDE the sandbox (``detox.sandbox``): ``main(data, args)`` gets the attachment's bytes and
returns a result in the wire format below. Anything it cannot do safely raises; the sandbox turns
that into a SandboxError and the runner holds the part.

Inputs
    * An OOXML package (docx/xlsx/pptx, the macro-enabled docm/xlsm/pptm/ppsm/xlam/ppam, the templates
      dotx/dotm/xltx/xltm/potx/potm): rebuilt, see below.
    * An OLE compound file: never converted here. An Office file encrypted with a password (an OOXML
      package wrapped in an OLE container with ``EncryptionInfo``/``EncryptedPackage`` streams, or a
      .doc/.xls/.ppt with its encryption flag or record) is answered "held: encrypted"; any other
      OLE file "held: legacy-office", with ``application`` naming what it is ("word", "excel",
      "powerpoint", or "" for an OLE file that is none of them or cannot be read): the office filter
      converts the first three with LibreOffice (:mod:`detox.sandbox.libreoffice`), restricted to
      that application's import filters.
    * An Excel binary workbook (xlsb) or any other OPC package whose main part is not one of the types
      above: "held: unsupported-type" (their parts are binary records this converter cannot rebuild).
    * Anything else raises (not an Office file).

How the package is read
    Zip caps before and while decompressing: ``max_members`` entries, ``max_total_bytes`` of
    decompressed data (counted on the bytes actually inflated, not the sizes the directory claims),
    ``max_ratio`` for members over 1 MiB, ``max_xml_bytes`` for one XML part; over a cap → "held:
    limit-exceeded". Refused outright: overlapping members (the "better zip bomb"), duplicate part
    names (OPC names are case-insensitive: two members differing only in case are two readings of one
    part), names that are absolute, contain ``..``, backslashes or control characters, encrypted
    members, compression methods other than stored/deflate.

    Every XML part is parsed with lxml (libxml2) configured for hostile input: no DTD loading, no
    entity substitution, no network, libxml2's default limits on depth and text size (no
    ``huge_tree``), comments and processing instructions dropped. A part that declares a DTD or an
    entity, uses an encoding other than UTF-8/UTF-16 (ECMA-376 allows only those), or contains an
    entity reference is refused: OOXML never has them, so there is nothing to keep. lxml rather than
    defusedxml because it is already a dependency, the parse happens inside the sandbox (no network,
    rlimits) and the DTD refusal above makes entity handling moot; defusedxml's lxml support is
    deprecated anyway. Every XML part is re-serialized from the tree as UTF-8: what leaves is what
    the parser understood, not the sender's bytes.

What is removed (the ``removed`` counts name the kinds)
    * ``vba-project``: vbaProject.bin (by relationship type, content type, name, wherever it is), its
      signature, Word's vbaData.xml, and their relationships and content-type entries.
      ``macro-customization``: Word's keyMapCustomizations and attachedToolbars (macro bindings).
    * ``xlm-macrosheet`` / ``dialog-sheet``: Excel 4 macro sheets (xl/macrosheets/*, international
      ones too) and Excel 5 dialog sheets, with their ``<sheet>`` entries in workbook.xml, defined
      names that point into them and ``localSheetId``/``activeTab`` indices renumbered.
      ``auto-macro``: defined names that make Excel run a macro on open/close (``Auto_Open``...).
      ``very-hidden-sheet``: sheets marked ``veryHidden`` (visible only to macros) are kept but made
      ordinary hidden sheets, so the reader can unhide and see them.
    * ``activex``: ActiveX controls (*/activeX/*: the XML and the binary persistence), with the
      ``w:control``, ``<controls>`` and ``p:controls`` elements that place them.
    * ``ole-embedding`` / ``embedded-package``: every part under */embeddings/* or reached by an
      oleObject/package relationship, and any other part whose bytes are an OLE file or a zip. In the
      documents the object is replaced by its preview picture where the format has one in place: Word's
      ``w:object`` becomes a ``w:pict`` (its VML shape and preview image stay) or its ``w:drawing``;
      PowerPoint's OLE ``p:graphicFrame`` becomes the ``p:pic`` its fallback carries, placed where
      the frame was. Otherwise the element is removed: Excel's ``<oleObjects>`` (the VML shape with
      the preview stays in the legacy drawing), PowerPoint 2007 frames without a fallback picture.
      A chart's embedded workbook goes too (``c:externalData``: the chart keeps its cached values).
    * ``dde``: Word fields DDE/DDEAUTO (complex fields, also when the keyword is split over several
      ``w:instrText`` runs or produced by a nested ``QUOTE`` field; ``w:fldSimple``) and Excel
      externalLink parts holding a ``ddeLink``. A removed field loses its code and keeps its result,
      so the text the reader saw stays. Formulas that point into a removed external workbook lose
      their formula and keep their cached value.
    * ``external-link``: every relationship with ``TargetMode="External"`` other than a hyperlink:
      attachedTemplate (template injection), oleObject links, frames (webSettings), subDocument,
      images/media linked by ``r:link``, externalLink parts of workbooks (linked workbooks), a
      hyperlink whose target is not http(s)/mailto (file:, UNC, ms-*:, relative paths...); Word
      fields that fetch content (INCLUDETEXT, INCLUDEPICTURE, LINK, IMPORT, RD, DATABASE); VML
      ``src``/``href`` attributes that name a URL.
    * ``hyperlink``: http(s)/mailto hyperlinks when ``args["hyperlinks"] == "unlink"`` (the filter's
      default follows the URL defanging of the mail body): the relationship and the click go, the
      text the reader sees stays. With ``"keep"`` they stay clickable.
    * ``custom-ui``: ribbon customizations (customUI/customUI14, their images): their callbacks
      name macros and ``onLoad`` handlers.
    * ``action``: PowerPoint click/hover actions that run a program, a macro or an OLE verb
      (``ppaction://program``, ``macro``, ``ole``). ``macro-binding``: macros assigned to shapes,
      form controls and form fields (``macro``, ``fmlaMacro``, ``x:FmlaMacro``, ``w:entryMacro``,
      ``w:exitMacro``, MACROBUTTON fields). ``obfuscated-field``: a Word field whose keyword is
      computed by a nested field. ``mail-merge``: Word mail-merge settings (data source queries).
    * ``web-extension``: Office web add-ins (webextensions/*, loaded from a store or URL).
      ``data-connection``: Excel data connections and query tables (connection strings, web queries).
      ``alt-chunk``: Word altChunk parts (foreign HTML/RTF/MHT imported on open).
    * ``svg-image``: SVG pictures (Office keeps a PNG fallback, which stays). ``printer-settings``:
      binary printer DEVMODE blobs. ``signature``: digital signatures (a rebuilt package would not
      verify). ``vml-drawing``: VML drawings that are not well-formed XML. ``unknown-part``: parts
      with no content type, or binary parts that are not images, fonts, audio or video.
    * Not counted: parts no relationship reaches any more, Word's ``w:updateFields``, comments and
      processing instructions in XML.

    Content types are rebuilt from the parts that remain; the macro-enabled main types become the
    plain ones (``application/vnd.ms-word.document.macroEnabled.main+xml`` →
    ``...wordprocessingml.document.main+xml``, xlsm → xlsx, pptm → pptx, dotm → dotx, xltm → xltx,
    potm → potx, ppsm → ppsx, xlam → xlsx, ppam → pptx). The output is checked once more
    (:func:`verify`) before it is returned; anything left over is an error.

    Kept as they are: text, styles, images (other than SVG), fonts, audio/video, charts, custom XML
    data, document properties. Images and fonts are copied unchanged: a memory-safety bug in the
    recipient's image or font decoder is the residual risk of this conversion (as in PDF sanitize).

Wire format of the result: :mod:`detox.sandbox.inside.wire`, the payload the new package (empty when the
status is "held").

Header keys: ``status`` ("ok" or "held"); when ok: ``content_type`` (the output's
MIME type, one of :data:`OUTPUT_TYPES`), ``extension`` (``docx``...), ``kind`` (word/excel/
powerpoint), ``source_type`` (the input's main content type), ``parts`` (members written) and
``removed`` ({kind: count}); when held: ``reason`` (one of :data:`HELD_REASONS`) and ``detail``, and for
an OLE file ``application`` and ``removed`` (:func:`probe_ole`).
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

from detox.sandbox.contract import OFFICE_HELD_REASONS as HELD_REASONS
from detox.sandbox.contract import OFFICE_OUTPUT_TYPES as OUTPUT_TYPES
from detox.sandbox.inside.converters.office.disarm import Disarm
from detox.sandbox.inside.converters.office.model import (
    MACRO_MAIN_TYPES,
    MAIN_TYPES,
    OLE_MAGIC,
    Caps,
    HeldError,
    NotInertError,
    PackageRejected,
    Result,
)
from detox.sandbox.inside.converters.office.ole import OleProbe, probe_ole
from detox.sandbox.inside.converters.office.ooxml import parse_xml, serialize
from detox.sandbox.inside.converters.office.verify import verify
from detox.sandbox.inside.wire import pack_result as pack_result
from detox.sandbox.inside.wire import unpack_result as unpack_result

__all__ = [
    "HELD_REASONS",
    "MACRO_MAIN_TYPES",
    "MAIN_TYPES",
    "OUTPUT_TYPES",
    "Caps",
    "Disarm",
    "HeldError",
    "NotInertError",
    "OleProbe",
    "PackageRejected",
    "Result",
    "main",
    "pack_result",
    "parse_xml",
    "probe_ole",
    "serialize",
    "unpack_result",
    "verify",
]


# -- entry point -------------------------------------------------------------------------------


def main(data: bytes, args: dict[str, Any]) -> bytes:
    caps = Caps.from_args(args)
    hyperlinks = args.get("hyperlinks", "unlink")
    if hyperlinks not in ("keep", "unlink"):
        raise ValueError("bad argument hyperlinks")
    try:
        if data.startswith(OLE_MAGIC):
            probe = probe_ole(data)
            raise HeldError(probe.reason, probe.detail, probe.application, probe.removed)
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise PackageRejected("neither an OOXML package nor an OLE file")
        result = Disarm(data, caps, keep_hyperlinks=hyperlinks == "keep").run()
    except HeldError as held:
        held_header: dict[str, Any] = {"status": "held", "reason": held.reason, "detail": held.detail[:500]}
        if held.application is not None:
            held_header["application"] = held.application
            held_header["removed"] = held.removed
        return pack_result(held_header)
    header = {
        "status": "ok",
        "content_type": result.content_type,
        "extension": result.extension,
        "kind": result.kind,
        "source_type": result.source_type,
        "parts": result.parts,
        "removed": dict(sorted((k, v) for k, v in result.removed.items() if v)),
    }
    return pack_result(header, result.data)
