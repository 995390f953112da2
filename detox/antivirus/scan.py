"""What clamd's verdicts mean to the pipeline: one :class:`MessageScan` per message.

The pipeline asks twice, both before any filter: :meth:`MessageScan.original` with the message as
received (clamd's own mail parser looks at it whole), then :meth:`MessageScan.check` for every leaf
MIME part and every archive member — the walk's one place where every part and member passes
(:meth:`detox.pipeline.walk.Walk.decide`), so nothing is scanned twice or skipped; identical bytes
(the same file attached twice, an archive inside itself) are scanned once per message.

* **Found** in a part: the part is held, reason ``virus``, the signature on its record. With
  ``on_virus = "hold-message"`` the whole message is held instead (``held_message``). Found in the
  original but in none of the parts (clamd saw it where the walk held without scanning, or in the
  MIME structure itself): the whole message is held — a detection is never ignored.
* **Too large** to scan (over ``max_stream_bytes`` or clamd's ``StreamMaxLength``): the part is held
  (``limit-exceeded``), never passed unscanned; retrying would not help.
* **clamd down, timing out, answering an error**: ``on_error = "tempfail"`` raises
  :class:`AntivirusUnavailable` (a :class:`~detox.errors.PipelineTempFail`): the message stays in the
  spool and is tried again; ``"hold"`` holds the whole message (``antivirus-unavailable``).

Once the whole message is to be held, later parts are neither scanned nor converted: they are
recorded held and the runner replaces the result with the one held original.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from detox.antivirus.clamd import (
    ClamdClient,
    ClamdError,
    ClamdTooLarge,
    ClamdUnavailable,
    ScanResult,
    parse_address,
)
from detox.config.schema import AntivirusConfig, AntivirusOnError, OnVirus
from detox.errors import PipelineTempFail
from detox.pipeline.decide import Decided
from detox.pipeline.model import Action, Part, Verdict
from detox.pipeline.report import AntivirusReport
from detox.pipeline.vocabulary import ANTIVIRUS_UNAVAILABLE, LIMIT_EXCEEDED, VIRUS
from detox.untrusted import for_log

log = logging.getLogger(__name__)

BY = "antivirus"  # the record's ``filter`` for a part the antivirus decided
WHOLE_MESSAGE = "0"  # the part id of the original message (as the quarantine names it)
# clamd with AlertExceedsMax reports a file past its MaxFileSize/MaxScanSize/MaxRecursion... as
# "Heuristics.Limits.Exceeded.*": not scanned whole, so held — but as a limit, not as a virus.
LIMITS_EXCEEDED = "Heuristics.Limits.Exceeded"


class AntivirusUnavailable(PipelineTempFail):
    """clamd could not give a verdict and ``on_error = "tempfail"``: the message waits in the spool."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"antivirus unavailable: {detail}")
        self.detail = detail

    def __reduce__(self) -> tuple[object, ...]:  # crosses the worker's process pipe
        return AntivirusUnavailable, (self.detail,)


def make_client(config: AntivirusConfig, resolve: Callable[[str], Path]) -> ClamdClient:
    """The client for ``antivirus.clamd``; a relative unix path is relative to the working directory."""
    address = parse_address(config.clamd)
    if address.family == "unix":
        address = parse_address(f"unix:{resolve(address.path)}")
    return ClamdClient(address, timeout_s=config.timeout_s, max_stream_bytes=config.max_stream_bytes)


class MessageScan:
    """clamd's verdicts on one message; see the module docstring for what each one means."""

    def __init__(self, config: AntivirusConfig, client: ClamdClient, queue_id: str) -> None:
        self.config = config
        self.client = client
        self.queue_id = queue_id
        self.streams = 0
        self.bytes = 0
        self.found: list[tuple[str, str]] = []  # (part_id, signature)
        # VIRUS, ANTIVIRUS_UNAVAILABLE or LIMIT_EXCEEDED (the original too large): hold the whole message
        self.held_message: str | None = None
        self.message_signature: str | None = None  # what clamd found in the original, if anything
        self._seen: dict[str, ScanResult | ClamdTooLarge] = {}  # by the part's SHA-256

    # -- the original ---------------------------------------------------------------------------

    def original(self, raw: bytes) -> None:
        """Scan the message as received (before the walk)."""
        try:
            result = self._scan(raw)
            if result is None:
                return
        except ClamdTooLarge as exc:
            # antivirus.max_stream_bytes >= server.max_message_bytes (the loader checks): only a
            # smaller StreamMaxLength in clamd gets here, and waiting would not change it. Not
            # scanned whole = not scanned: the whole message is held (limit-exceeded).
            log.error("%s: antivirus: the original is too large for clamd: %s", self.queue_id, exc)
            self.held_message = LIMIT_EXCEEDED
            return
        if result.infected and result.signature is not None:
            if result.signature.startswith(LIMITS_EXCEEDED):
                # clamd stopped short inside the original: the parts are scanned one by one anyway
                log.info("%s: clamd: %s in the original", self.queue_id, result.signature)
                return
            self.message_signature = result.signature
            log.warning("%s: clamd found %s in the original message", self.queue_id, result.signature)
            if self.config.on_virus is OnVirus.HOLD_MESSAGE:
                self.found.append((WHOLE_MESSAGE, result.signature))
                self.held_message = VIRUS

    # -- every part and member ------------------------------------------------------------------

    def check(self, part: Part) -> Decided | None:
        """None when clean (the filters decide next); else the part's decision."""
        if self.held_message is not None:
            return Decided(Verdict(Action.HOLD, reason=self.held_message), BY, "the whole message is held")
        try:
            result = self._scan(part.payload, part.sha256)
        except ClamdTooLarge as exc:
            return Decided(Verdict(Action.HOLD, reason=LIMIT_EXCEEDED), BY, f"not scanned: {exc}")
        if result is None:  # clamd failed just now and on_error = "hold"
            return Decided(Verdict(Action.HOLD, reason=ANTIVIRUS_UNAVAILABLE), BY, "not scanned")
        if not result.infected or result.signature is None:
            return None
        if result.signature.startswith(LIMITS_EXCEEDED):
            error = f"not scanned whole: clamd said {result.signature}"
            return Decided(Verdict(Action.HOLD, reason=LIMIT_EXCEEDED), BY, error)
        log.warning("%s: clamd found %s in part %s", self.queue_id, result.signature, part.part_id)
        self.found.append((part.part_id, result.signature))
        if self.config.on_virus is OnVirus.HOLD_MESSAGE:
            self.held_message = VIRUS
        return Decided(Verdict(Action.HOLD, reason=VIRUS), BY, virus=result.signature)

    # -- after the walk -------------------------------------------------------------------------

    def whole_message_reason(self) -> str | None:
        """Why the whole message must be held (None: the parts' own decisions stand)."""
        if self.held_message is not None:
            return self.held_message
        if self.message_signature is not None and not self.found:
            # clamd saw it in the original, no part scan located it: hold everything.
            self.found.append((WHOLE_MESSAGE, self.message_signature))
            self.held_message = VIRUS
        return self.held_message

    def whole_message_signature(self) -> str | None:
        return self.message_signature or next((s for _, s in self.found), None)

    def report(self) -> AntivirusReport:
        return AntivirusReport(
            streams=self.streams, bytes=self.bytes, found=tuple(self.found), held_message=self.held_message
        )

    # -- plumbing -------------------------------------------------------------------------------

    def _scan(self, data: bytes, key: str | None = None) -> ScanResult | None:
        """clamd's verdict; None when it failed and on_error = "hold" (the message is held whole)."""
        if key is not None and key in self._seen:
            seen = self._seen[key]
            if isinstance(seen, ClamdTooLarge):
                raise seen
            return seen
        try:
            self.streams += 1
            self.bytes += len(data)
            result = self.client.scan(data)
        except ClamdTooLarge as exc:
            if key is not None:
                self._seen[key] = exc
            raise
        except ClamdError as exc:
            self._unavailable(str(exc))
            return None
        if key is not None:
            self._seen[key] = result
        return result

    def _unavailable(self, detail: str) -> None:
        log.error("%s: antivirus: %s", self.queue_id, for_log(detail))
        if self.config.on_error is AntivirusOnError.TEMPFAIL:
            raise AntivirusUnavailable(detail)
        self.held_message = ANTIVIRUS_UNAVAILABLE


__all__ = [
    "BY",
    "WHOLE_MESSAGE",
    "AntivirusUnavailable",
    "ClamdUnavailable",
    "MessageScan",
    "make_client",
]
