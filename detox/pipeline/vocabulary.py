"""The names the pipeline labels parts and messages with: hold/drop reasons and X-Detox-Actions notes.

Both are open sets, so they are registries rather than enums: the names of detox's own filters and of
the runner are registered here, and a filter shipped in another package declares its own (the filter
loader registers them when it loads the filter). A closed enum would need an edit to detox for every
new filter. What a registry adds over bare strings:

* one list of every name, which the README's reason table is checked against (tests);
* a spelling check when a name is registered: a reason is a key of ``notice.reasons`` and is written
  to the report, the index and the audit log; a note becomes ``NAME=COUNT`` in a mail header, so a
  ``;``, ``=`` or line break in one would corrupt it;
* who uses a name, for the docs and for error messages.

A name registered twice keeps its first meaning: a plugin's filter that holds a part as
``limit-exceeded`` means what detox means by it, and may say so by declaring it.

The values stay ``str``: reasons and notes are compared and written as the strings they always were,
and the constants below are there so that code inside detox names them once (a typo is a NameError).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_MAX_NAME = 64
BUILT_IN = "detox"


@dataclass(slots=True)
class Entry:
    """One registered name: what it is for and who may emit it."""

    name: str
    doc: str
    owner: str  # who registered it first: "detox" or a filter's name
    users: set[str] = field(default_factory=set)  # every owner that declared it, the first included
    in_notice: bool = True  # reasons: named in the notice (a held part), or only in the records


class Vocabulary:
    """A registry of names of one kind (``reason``, ``note``). Safe to use from several threads."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def register(self, name: str, doc: str = "", *, owner: str = BUILT_IN, in_notice: bool = True) -> str:
        """Add ``name`` (or note one more user of it); return it. Raises ValueError for a bad spelling."""
        if not isinstance(name, str) or len(name) > _MAX_NAME or not _NAME.fullmatch(name):
            raise ValueError(
                f"{self.kind} {name!r} (from {owner}): not a valid name: lower-case ASCII letters and "
                f"digits in words joined by single hyphens, at most {_MAX_NAME} characters"
            )
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                entry = self._entries[name] = Entry(name, doc, owner, in_notice=in_notice)
            entry.users.add(owner)
        return name

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; KeyError if it was never registered."""
        return self._entries[name]

    def entries(self) -> Mapping[str, Entry]:
        """A read-only view of every entry, in registration order."""
        return MappingProxyType(self._entries)


REASONS: Final = Vocabulary("reason")
NOTES: Final = Vocabulary("note")


def _reason(name: str, doc: str, *, owner: str = BUILT_IN, in_notice: bool = True) -> str:
    return REASONS.register(name, doc, owner=owner, in_notice=in_notice)


def _note(name: str, doc: str, *, owner: str = BUILT_IN) -> str:
    return NOTES.register(name, doc, owner=owner)


# -- reasons: why a part was held or dropped (keys of notice.reasons) ------------------------------
# The runner's own, then those of the built-in filters (owner: the filter that emits it first; a
# reason any filter may use is the runner's). The order is the README's.
UNSUPPORTED_TYPE: Final = _reason("unsupported-type", "no filter claims the part (or can read it)")
FILTER_ERROR: Final = _reason("filter-error", "the filter or its sandboxed converter failed")
FILTER_TIMEOUT: Final = _reason("filter-timeout", "the filter exceeded its timeout_s")
LIMIT_EXCEEDED: Final = _reason("limit-exceeded", "a size, count or nesting cap")
ENCRYPTED: Final = _reason("encrypted", "multipart/encrypted, or a document that needs a password")
NOT_TEXT: Final = _reason("not-text", "declared text whose bytes are not text")
UNPARSABLE: Final = _reason("unparsable", "the MIME structure (or the file's) could not be read")
SVG: Final = _reason("svg", "an SVG image that is not rasterized", owner="image")
SIGNATURE: Final = _reason("signature", "a detached signature (dropped)", owner="signature")
POLICY: Final = _reason("policy", "a [[policy.rules]] hold/drop without its own reason")
EXECUTABLE: Final = _reason("executable", "the shipped executable rules; a ZIP that is a program")
ENCRYPTED_ARCHIVE: Final = _reason("encrypted-archive", "an encrypted archive entry (PPAP)", owner="archive")
ARCHIVE_BOMB: Final = _reason("archive-bomb", "compression ratio above max_ratio", owner="archive")
ARCHIVE_CORRUPT: Final = _reason("archive-corrupt", "an unreadable archive", owner="archive")
ARCHIVE_UNSUPPORTED: Final = _reason("archive-unsupported", "an archive format not opened", owner="archive")
ARCHIVE_IS_DOCUMENT: Final = _reason("archive-is-document", "a zip that is a document", owner="archive")
ARCHIVE_EMPTY: Final = _reason("archive-empty", "no file in the archive", owner="archive")
ARCHIVE_EMPTY_AFTER_DETOX: Final = _reason(
    "archive-empty-after-detox", "no member survived detoxification", owner="archive"
)
ARCHIVE_MEMBER_UNSAFE: Final = _reason(
    "archive-member-unsafe", "a link, device or unsafe path in an archive", owner="archive"
)
LEGACY_OFFICE: Final = _reason("legacy-office", "a legacy Office file or RTF not converted", owner="office")
# [antivirus]: clamd found a signature (the part, or "0" the whole message, is held; its release
# needs --force and a second admin), or could not scan and antivirus.on_error = "hold".
VIRUS: Final = _reason("virus", "clamd found a signature in the part (or the original message)")
ANTIVIRUS_UNAVAILABLE: Final = _reason(
    "antivirus-unavailable", "clamd could not scan the message (antivirus.on_error = hold)"
)
# The whole message held by sender authentication (detox.inbound.decide; part "0").
DMARC_QUARANTINE: Final = _reason(
    "dmarc-quarantine", "DMARC fail with p=quarantine (inbound.dmarc_quarantine)"
)
DMARC_REJECT: Final = _reason("dmarc-reject", "DMARC fail with p=reject, held (inbound.dmarc_reject)")
SPOOFED_PROTECTED_DOMAIN: Final = _reason(
    "spoofed-protected-domain", "a From of our own or a protected domain, not authenticated (inbound.spoof)"
)
FROM_INVALID: Final = _reason("from-invalid", "no From, several From, or one without a domain")
# Drops that are never listed in the notice (no notice.reasons text needed).
ALTERNATIVE_UNUSED: Final = _reason(
    "alternative-unused", "the alternative of a multipart/alternative not chosen", in_notice=False
)
ARCHIVE_OS_METADATA: Final = _reason(
    "archive-os-metadata", "__MACOSX/, .DS_Store and the like in an archive", owner="archive", in_notice=False
)

# -- notes: X-Detox-Actions items -----------------------------------------------------------------
# Filters' notes (Verdict.notes, counted per message), then the items the runner adds itself.
HTML_CONVERTED: Final = _note("html-converted", "an HTML body became text", owner="html")
RTF_CONVERTED: Final = _note("rtf-converted", "an RTF body became text", owner="rtf")
ENRICHED_CONVERTED: Final = _note("enriched-converted", "a text/enriched body became text", owner="enriched")
SIGNATURE_REMOVED: Final = _note("signature-removed", "a detached signature was dropped", owner="signature")
IMAGE_REENCODED: Final = _note("image-reencoded", "an image was re-encoded", owner="image")
SVG_RASTERIZED: Final = _note("svg-rasterized", "an SVG image was rasterized", owner="image")
PDF_SANITIZED: Final = _note("pdf-sanitized", "a PDF was sanitized", owner="pdf")
PDF_RASTERIZED: Final = _note("pdf-rasterized", "a PDF was rasterized", owner="pdf")
OFFICE_DISARMED: Final = _note("office-disarmed", "an Office file was disarmed", owner="office")
OFFICE_RASTERIZED: Final = _note("office-rasterized", "a legacy Office file was rasterized", owner="office")
ARCHIVE_REPACKED: Final = _note("archive-repacked", "an archive was repacked", owner="archive")
CALENDAR_CONVERTED: Final = _note("calendar-converted", "a calendar file became text", owner="calendar")
HTML_ATTACHMENT_CONVERTED: Final = _note(
    "html-attachment-converted", "an HTML attachment became text", owner="html"
)
TEXT_REENCODED: Final = _note("text-reencoded", "a text attachment was re-encoded", owner="text-attachment")
URLS_DEFANGED: Final = _note("urls-defanged", "one URL defanged (outside the body text)")
FORWARDED_DETOXIFIED: Final = _note("forwarded-detoxified", "a forwarded message was detoxified")
# Items the runner writes from the records, never a filter's note.
TEXT_CONVERTED: Final = _note("text-converted", "always first: the body is text")
ATTACHMENTS_CONVERTED: Final = _note("attachments-converted", "attachments replaced")
ATTACHMENTS_PASSED: Final = _note("attachments-passed", "attachments passed unchanged")
ATTACHMENTS_HELD: Final = _note("attachments-held", "parts held")
PARTS_DROPPED: Final = _note("parts-dropped", "parts dropped (unused alternatives aside)")
