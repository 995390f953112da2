"""Attachment policy: TOML rules on the detected type, the extension, the sender and the hash.

Rules are checked in order and the first that matches decides (``[[policy.rules]]`` in the
config). A rule's action is ``hold`` or ``drop`` (no filter runs), ``default`` (the filters in
``pipeline.order`` decide), or a filter name, optionally with a mode: ``pdf:sanitize`` runs only
the pdf filter, with ``mode = "sanitize"``. A part whose declared type, extension and detected type
disagree is *suspicious*; rules can match on that to choose a stricter action.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from detox.config.schema import DetoxConfig, PolicyActionKind, PolicyRule
from detox.errors import ConfigError
from detox.filters.base import Filter
from detox.pipeline.model import Part

# What the bytes may be detected as for a file that claims an extension (prefixes). Only
# extensions listed here can be judged; libmagic's answers for Office zips vary, hence the zip.
_OOXML = ("application/vnd.openxmlformats-officedocument.", "application/vnd.ms-", "application/zip")
_OLE = ("application/msword", "application/vnd.ms-", "application/x-ole-storage", "application/cdfv2")
EXTENSION_TYPES: Mapping[str, tuple[str, ...]] = {
    "pdf": ("application/pdf",),
    "jpg": ("image/jpeg",),
    "jpeg": ("image/jpeg",),
    "png": ("image/png",),
    "gif": ("image/gif",),
    "bmp": ("image/bmp", "image/x-ms-bmp"),
    "tif": ("image/tiff",),
    "tiff": ("image/tiff",),
    "webp": ("image/webp",),
    "svg": ("image/svg+xml", "text/"),
    "txt": ("text/", "inode/x-empty", "application/octet-stream"),  # CP932 text reads as anything
    "csv": ("text/", "application/csv", "inode/x-empty", "application/octet-stream"),
    "zip": ("application/zip",),
    "docx": _OOXML,
    "xlsx": _OOXML,
    "pptx": _OOXML,
    "docm": _OOXML,
    "xlsm": _OOXML,
    "pptm": _OOXML,
    "doc": _OLE,
    "xls": _OLE,
    "ppt": _OLE,
}
_NEUTRAL_DECLARED = frozenset({"application/octet-stream", "application/unknown", "application/x-unknown"})


def type_mismatch(part: Part) -> str | None:
    """Why the part's declared type, extension and detected type disagree, or None."""
    detected = part.detected_type.lower()
    expected = EXTENSION_TYPES.get(part.extension)
    if expected is not None and not detected.startswith(expected):
        return f"extension .{part.extension} but detected {detected}"
    declared = part.declared_type.lower()
    if declared in _NEUTRAL_DECLARED or detected in ("application/octet-stream", "inode/x-empty"):
        return None
    if declared.split("/")[0] != detected.split("/")[0] and not (
        declared.startswith("application/") and detected.startswith("text/")
    ):
        return f"declared {declared} but detected {detected}"
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the first matching rule says: an action, and for filter actions the filter to run."""

    rule: str
    action: PolicyActionKind
    reason: str
    filter: Filter | None = None


def _matches(rule: PolicyRule, part: Part, sender_domain: str, mismatch: str | None) -> bool:
    if rule.detected and not any(fnmatch.fnmatchcase(part.detected_type.lower(), p) for p in rule.detected):
        return False
    if rule.extensions and part.extension not in rule.extensions:
        return False
    if rule.sender_domains and sender_domain not in rule.sender_domains:
        return False
    if rule.sha256 and part.sha256 not in rule.sha256:
        return False
    return rule.suspicious is None or rule.suspicious == (mismatch is not None)


class Policy:
    """The rules, with each filter action's filter built once (with its mode) at start-up."""

    def __init__(self, config: DetoxConfig, known: Mapping[str, type[Filter]]) -> None:
        self.rules = config.policy.rules
        self._filters: dict[int, Filter] = {}
        for i, rule in enumerate(self.rules):
            action = rule.action
            if action.kind is not PolicyActionKind.FILTER:
                continue
            key = f"policy.rules[{i}].action"
            if action.filter not in known:
                raise ConfigError(
                    "<config>", key, f"unknown filter {action.filter!r} (known: {sorted(known)})"
                )
            cls = known[action.filter]
            options = dict(config.filter_settings(action.filter).options)
            if action.mode:
                options["mode"] = action.mode
            try:
                self._filters[i] = cls(cls.Options.model_validate(options))
            except ValidationError as exc:
                problem = exc.errors()[0]["msg"]
                raise ConfigError("<config>", key, f"{str(action)!r}: {problem}") from None

    def decide(self, part: Part, sender_domain: str) -> tuple[Decision | None, str | None]:
        """The first matching rule's decision (None: no rule matched) and the part's mismatch."""
        mismatch = type_mismatch(part)
        for i, rule in enumerate(self.rules):
            if _matches(rule, part, sender_domain, mismatch):
                label = rule.name or f"rule {i + 1}"
                if i in self._filters:
                    return Decision(label, PolicyActionKind.FILTER, rule.reason, self._filters[i]), mismatch
                return Decision(label, rule.action.kind, rule.reason), mismatch
        return None, mismatch
