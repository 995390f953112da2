"""The pipeline's worker processes: CPU work off the SMTP event loop, one Pipeline per process.

A worker reads the spooled message itself, keeps the original, writes the detoxified output and its
first delivery state to the spool and returns only the (small) report and that result, so large
messages never cross the process pipe and the hand-off in serve creates no file.

This module is what a worker imports (by name, under the ``spawn`` start method): it and the package
``__init__`` must stay free of the listener, the runners and delivery.
"""

from __future__ import annotations

import ctypes
import signal
from dataclasses import dataclass

from detox.config.schema import DetoxConfig
from detox.pipeline.report import MessageReport
from detox.pipeline.runner import Pipeline
from detox.quarantine.store import Store
from detox.serve.report import initial_state, original_sha256
from detox.spool import Spool, WorkerResult


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


def detoxify_spooled(queue_id: str) -> tuple[MessageReport, WorkerResult]:
    """Detoxify one spooled message; return its report and the result in the spool (its first
    delivery state). Raises to let the parent retry.

    The output and state are written here but stay inert until serve's hand-off (``Spool.hand_off``)
    releases the incoming entry, after the index and the ``detoxified`` audit record.
    """
    assert _state is not None, "init_worker was not called"
    envelope, raw = _state.spool.read_incoming(queue_id)
    result = _state.pipeline.run(raw, envelope)
    _state.store.put_original(original_sha256(result.report), raw)
    state = initial_state(queue_id, result.report)
    return result.report, _state.spool.write_outgoing(state, result.output)
