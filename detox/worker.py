"""The pipeline's worker processes: CPU work off the SMTP event loop, one Pipeline per process.

A worker reads the spooled message itself, keeps the original, writes the detoxified output and its
first delivery state to the spool and returns only the (small) report and that state, so large
messages never cross the process pipe and the hand-off in serve creates no file.
"""

from __future__ import annotations

import ctypes
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.pipeline.report import MessageReport, PartReport
from detox.pipeline.runner import Pipeline
from detox.spool import DeliveryState, RecipientState, Spool
from detox.store import Store

# Detected types that make a held part count as "executable" whatever rule (or none) held it, so a
# message carrying one never gets a DSN even with a policy that does not name executables.
EXECUTABLE_TYPES = frozenset(
    {
        "application/x-dosexec",
        "application/vnd.microsoft.portable-executable",
        "application/x-executable",
        "application/x-sharedlib",
        "application/x-pie-executable",
        "application/x-mach-binary",
        "application/x-msi",
        "application/x-ms-shortcut",
        "application/java-archive",
    }
)


def held_reasons(parts: Sequence[PartReport]) -> set[str]:
    """Reasons of the held parts (archive members included), for the DSN decision."""
    reasons = set()
    for part in parts:
        if part.action != "hold":
            continue
        reasons.add(part.reason)
        if part.detected_type in EXECUTABLE_TYPES:
            reasons.add("executable")
    return reasons


def _received_at(envelope: Envelope) -> float:
    try:
        return datetime.fromisoformat(envelope.received_at).timestamp()
    except ValueError:
        return time.time()


def initial_state(queue_id: str, report: MessageReport) -> DeliveryState:
    """The delivery state of a freshly detoxified message: every recipient pending."""
    env = report.envelope
    return DeliveryState(
        queue_id=queue_id,
        mail_from=env.mail_from,
        recipients={r: RecipientState() for r in env.rcpt_tos},
        received_at=_received_at(env),
        original_sha256=report.message.sha256,
        held_reasons=tuple(sorted(held_reasons(report.parts))),
    )


@dataclass(slots=True)
class _WorkerState:
    pipeline: Pipeline
    spool: Spool
    store: Store


_state: _WorkerState | None = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when its parent goes (e.g. after ``kill -9`` of serve)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pool notices the broken pipe instead
        pass


def init_worker(config: DetoxConfig) -> None:
    global _state
    _die_with_parent()
    # The parent decides when to stop; a Ctrl-C in the terminal must not kill workers mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _state = _WorkerState(
        pipeline=Pipeline(config),
        spool=Spool(config.state_path("spool"), fsync=config.storage.fsync),
        store=Store(config.state_path(), fsync=config.storage.fsync),
    )


def ready() -> bool:
    """A no-op job: once it returns, the worker has started and run init_worker."""
    return _state is not None


def detoxify_spooled(queue_id: str) -> tuple[MessageReport, DeliveryState]:
    """Detoxify one spooled message; return its report and first delivery state. Raises to let the
    parent retry.

    The output and state are written here but stay inert until serve releases the incoming entry
    (after the index and the ``detoxified`` audit record): see ``Spool.outgoing_ids``.
    """
    assert _state is not None, "init_worker was not called"
    envelope, raw = _state.spool.read_incoming(queue_id)
    result = _state.pipeline.run(raw, envelope)
    _state.store.put_original(result.report.message.sha256, raw)
    state = initial_state(queue_id, result.report)
    _state.spool.write_outgoing(state, result.output)
    return result.report, state
