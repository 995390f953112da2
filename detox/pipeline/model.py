"""The vocabulary of the pipeline: parts, roles, actions and verdicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

_EMPTY: Mapping[str, int] = MappingProxyType({})
# How a part's detected_type was decided (the report's "detected_by"): libmagic read the bytes (a
# part without bytes is "inode/x-empty" without asking it), or the part is a text/plain or text/html
# body whose bytes hold no NUL or control byte but TAB, LF, CR, FF and ESC, typed as declared.
DETECTED_BY_LIBMAGIC = "libmagic"
DETECTED_BY_TEXT_BYTES = "text-bytes"


class Role(StrEnum):
    """Where a leaf part sits in the mail: inline body text, or an attachment."""

    BODY = "body"
    ATTACHMENT = "attachment"


class Action(StrEnum):
    """What happened to a part. Only TEXT, REPLACE and PASS put anything in the output."""

    TEXT = "text"  # a body part became (part of) the text/plain body
    REPLACE = "replace"  # an attachment was replaced by a disarmed output
    PASS = "pass"  # noqa: S105 - an action, not a password. An attachment of a type declared inert passed unchanged
    HOLD = "hold"  # removed from the mail; the original is kept and named in the notice
    DROP = "drop"  # removed from the mail (a signature, an unused alternative)


@dataclass(frozen=True, slots=True)
class Part:
    """A leaf of the MIME tree as the filters see it. Strings from the mail are untrusted."""

    part_id: str  # position in the original tree ("1", "2.1", ...): quoted in hold ids
    role: Role
    declared_type: str  # lower-case Content-Type as the sender claimed it
    detected_type: str  # python-magic's reading of the bytes, or see detected_by
    charset_label: str | None
    untrusted_filename: str | None  # decoded (RFC 2231/2047/8-bit), directory parts removed
    payload: bytes  # transfer-decoded content
    sha256: str
    depth: int = 0
    detected_by: str = DETECTED_BY_LIBMAGIC

    @property
    def size(self) -> int:
        return len(self.payload)

    @property
    def extension(self) -> str:
        name = self.untrusted_filename or ""
        return name.rpartition(".")[2].lower() if "." in name else ""


@dataclass(frozen=True, slots=True)
class Output:
    """A disarmed replacement for an attachment."""

    content_type: str
    data: bytes
    filename: str | None = None
    charset: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A filter's decision on one part."""

    action: Action
    reason: str = ""  # a key of notice.reasons for HOLD/DROP; short, safe for audit and notices
    text: str | None = None  # for Action.TEXT
    output: Output | None = None  # for Action.REPLACE
    removed: Mapping[str, int] = field(default_factory=lambda: _EMPTY)  # e.g. {"script": 2}
    notes: tuple[str, ...] = ()  # conversion tags for X-Detox-Actions, e.g. "html-converted"
    charset: str | None = None  # the charset the text was decoded from
    # Decisions on the parts inside this one (archive members), made through the same pipeline
    # with FilterContext.decide_member; they join the report, the audit record and the notice.
    members: tuple[PartRecord, ...] = ()

    def __post_init__(self) -> None:
        if self.action is Action.TEXT and self.text is None:
            raise ValueError("a TEXT verdict needs text")
        if self.action is Action.REPLACE and self.output is None:
            raise ValueError("a REPLACE verdict needs an output")


@dataclass(slots=True)
class PartRecord:
    """What the report, the audit log and the notice say about one part."""

    part_id: str
    role: str
    declared_type: str
    detected_type: str
    filename: str | None
    size: int
    sha256: str
    filter: str
    action: str
    reason: str = ""
    removed: dict[str, int] = field(default_factory=dict)
    output_sha256: str | None = None
    charset: str | None = None
    error: str | None = None
    mismatch: str | None = None  # declared type / extension / detected type disagree (suspicious)
    # What was delivered in the part's place (REPLACE / PASS): its name, type and how it was made
    # (the filter's first note, e.g. "pdf-rasterized"), for the notice and the report.
    output_filename: str | None = None
    output_type: str | None = None
    conversion: str = ""
    detected_by: str = DETECTED_BY_LIBMAGIC
    virus: str | None = None  # the signature clamd named (reason "virus"); in as_dict only when set

    def as_dict(self) -> dict[str, object]:
        return part_as_dict(self)


# The JSON of a part, in this order, for PartRecord and the report's frozen PartReport alike (the
# report, the audit's ``parts`` and the index read the same keys); ``virus`` only when clamd named one.
PART_FIELDS = (
    "part_id",
    "role",
    "filename",
    "declared_type",
    "detected_type",
    "size",
    "sha256",
    "filter",
    "action",
    "reason",
    "removed",
    "output_sha256",
    "charset",
    "error",
    "mismatch",
    "output_filename",
    "output_type",
    "conversion",
    "detected_by",
)


def part_as_dict(part: object) -> dict[str, object]:
    out: dict[str, object] = {
        name: dict(getattr(part, name)) if name == "removed" else getattr(part, name) for name in PART_FIELDS
    }
    virus = getattr(part, "virus", None)
    if virus is not None:
        out["virus"] = virus
    return out
