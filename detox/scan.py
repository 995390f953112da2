"""``detox scan --summary``: what the current policy would do to a pile of mail, delivering nothing.

Input is one message, a directory (searched recursively; files that do not look like mail are
skipped and counted), an mbox file or a Maildir. Every message runs through the same Pipeline as the
relay; only the decisions are kept: counts by action and reason, by deciding filter or policy rule,
and a few examples of each — for admins tuning the TOML before they deploy it.

:func:`scan_envelope` is the envelope every offline run assumes (``detox scan``, this dry-run and
scripts/compare_outputs.py): it lives here, not in the CLI, which nothing else may import.
"""

from __future__ import annotations

import email.policy
import email.utils
import logging
import mailbox
import multiprocessing
import re
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from detox.audit import now_rfc3339
from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.table import render
from detox.untrusted import for_log

log = logging.getLogger(__name__)

# A header field name at the very start: "Received:", "From:", "Return-Path:" ...
_HEADER_START = re.compile(rb"^[A-Za-z][A-Za-z0-9_.-]{0,75}:")
EXAMPLES = 3


def scan_envelope(raw: bytes, mail_from: str | None = None, rcpts: Sequence[str] = ()) -> Envelope:
    """The envelope an offline scan assumes: given, else from Return-Path/From and To/Cc."""
    from detox.spool import new_queue_id

    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)

    def addresses(name: str) -> list[str]:
        values = [str(v) for v in headers.get_all(name, [])]
        return [a for _, a in email.utils.getaddresses(values) if a]

    sender = (
        mail_from if mail_from is not None else next(iter(addresses("Return-Path") + addresses("From")), "")
    )
    recipients = tuple(rcpts) or tuple(addresses("To") + addresses("Cc"))
    return Envelope(
        queue_id=new_queue_id(),
        mail_from=sender,
        rcpt_tos=recipients,
        client_address="",
        helo="detox-scan",
        received_at=now_rfc3339(),
    )


# -- inputs -----------------------------------------------------------------------------------


def looks_like_mail(head: bytes) -> bool:
    return bool(_HEADER_START.match(head)) or head.startswith(b"From ")


def is_multi(path: Path) -> bool:
    """True for a directory or an mbox: inputs that need ``--summary``."""
    if path.is_dir():
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(5) == b"From "
    except OSError:
        return False


@dataclass(slots=True)
class Inputs:
    skipped: int = 0  # files that are not mail

    def messages(self, path: Path) -> Iterator[tuple[str, bytes]]:
        """(label, raw bytes) for every message under ``path``."""
        if path.is_dir():
            if any((path / sub).is_dir() for sub in ("cur", "new")) and (path / "tmp").is_dir():
                for sub in ("new", "cur"):
                    for file in sorted((path / sub).iterdir()) if (path / sub).is_dir() else ():
                        if file.is_file():
                            yield f"{sub}/{file.name}", file.read_bytes()
                return
            for file in sorted(path.rglob("*")):
                if file.is_file():
                    yield from self._file(file, str(file.relative_to(path)))
            return
        yield from self._file(path, path.name, force=True)

    def _file(self, file: Path, label: str, force: bool = False) -> Iterator[tuple[str, bytes]]:
        with open(file, "rb") as fh:
            head = fh.read(1024)
        if head.startswith(b"From "):
            box = mailbox.mbox(file, create=False)
            try:
                for number, key in enumerate(box.iterkeys(), 1):
                    yield f"{label}#{number}", box.get_bytes(key)
            finally:
                box.close()
        elif force or looks_like_mail(head):
            yield label, file.read_bytes()
        else:
            self.skipped += 1


# -- running ----------------------------------------------------------------------------------

_pipeline: Any = None


def _init(config: DetoxConfig) -> None:
    global _pipeline
    from detox.pipeline import Pipeline

    logging.getLogger().setLevel(logging.ERROR)  # filter warnings would drown the summary
    _pipeline = Pipeline(config)


def _decide(item: tuple[str, bytes]) -> dict[str, Any]:
    label, raw = item
    try:
        result = _pipeline.run(raw, scan_envelope(raw))
    except Exception as exc:  # noqa: BLE001 - the serve would defer it; here it is one count
        return {"label": label, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "label": label,
        "parts": [
            {
                "part_id": p.part_id,
                "role": p.role,
                "filename": p.filename,
                "detected_type": p.detected_type,
                "filter": p.filter,
                "action": p.action,
                "reason": p.reason,
            }
            for p in result.report.parts
        ],
    }


@dataclass(slots=True)
class Summary:
    source: str
    messages: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    with_held: int = 0
    with_converted: int = 0
    attachments: Counter[tuple[str, str]] = field(default_factory=Counter)
    bodies: Counter[tuple[str, str]] = field(default_factory=Counter)
    deciders: Counter[str] = field(default_factory=Counter)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def add(self, outcome: dict[str, Any]) -> None:
        self.messages += 1
        if "error" in outcome:
            self.errors.append((outcome["label"], outcome["error"]))
            return
        parts = outcome["parts"]
        self.with_held += any(p["action"] == "hold" for p in parts)
        self.with_converted += any(p["action"] == "replace" for p in parts)
        for p in parts:
            key = (p["action"], p["reason"] or "-")
            if p["role"] != "attachment":
                self.bodies[key] += 1
                continue
            self.attachments[key] += 1
            self.deciders[p["filter"]] += 1
            examples = self.examples.setdefault(key, [])
            if len(examples) < EXAMPLES:
                name = p["filename"] or "(no name)"
                examples.append(f"{outcome['label']}  part {p['part_id']}  {name}  ({p['detected_type']})")

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "messages": self.messages,
            "skipped_files": self.skipped,
            "errors": [{"message": label, "error": error} for label, error in self.errors],
            "messages_with_held": self.with_held,
            "messages_with_converted": self.with_converted,
            "attachments": [
                {"action": a, "reason": r, "count": n, "examples": self.examples.get((a, r), [])}
                for (a, r), n in self.attachments.most_common()
            ],
            "bodies": [{"action": a, "reason": r, "count": n} for (a, r), n in self.bodies.most_common()],
            "deciders": dict(self.deciders.most_common()),
        }


def summarize(config: DetoxConfig, path: Path, jobs: int = 1) -> Summary:
    inputs = Inputs()
    summary = Summary(str(path))
    if jobs <= 1:
        _init(config)
        for item in inputs.messages(path):
            summary.add(_decide(item))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init, initargs=(config,)) as pool:
            # Bounded and in order: Executor.map would read every message of a large mbox up front.
            pending: deque[Future[dict[str, Any]]] = deque()
            for item in inputs.messages(path):
                pending.append(pool.submit(_decide, item))
                if len(pending) >= jobs * 4:
                    summary.add(pending.popleft().result())
            while pending:
                summary.add(pending.popleft().result())
    summary.skipped = inputs.skipped
    return summary


def render_summary(summary: Summary) -> str:
    out = [
        f"Policy dry-run over {for_log(summary.source)} — nothing was delivered or stored.",
        (
            f"Messages: {summary.messages} ({len(summary.errors)} failed in the pipeline; "
            f"{summary.skipped} files skipped: not mail)"
        ),
        f"  with held attachments: {summary.with_held}; with converted attachments: {summary.with_converted}",
        "",
        "Attachments by action and reason:",
        render(["action", "reason", "count"], [(a, r, n) for (a, r), n in summary.attachments.most_common()]),
        "",
        "Attachments by deciding filter or policy rule:",
        render(["decided by", "count"], summary.deciders.most_common()),
        "",
        "Body parts by action and reason:",
        render(["action", "reason", "count"], [(a, r, n) for (a, r), n in summary.bodies.most_common()]),
        "",
        "Examples:",
    ]
    for (action, reason), _ in summary.attachments.most_common():
        out.append(f"  {action} / {reason}:")
        out += [f"    {for_log(e)}" for e in summary.examples.get((action, reason), [])]
    if summary.errors:
        out += ["", "Failed in the pipeline (serve would retry these, then move them aside):"]
        out += [f"  {for_log(label)}: {for_log(error, 200)}" for label, error in summary.errors[:20]]
    return "\n".join(out) + "\n"
