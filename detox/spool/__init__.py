"""The durable queue. A message is ours only once it is here, fsync'd; only then do we say 250.

Layout under ``<state_dir>/spool``::

    tmp/                 files being written (same file system, so rename is atomic)
    incoming/ID.msg      accepted, not yet detoxified: a header line, the envelope (JSON), the raw bytes
    incoming/ID.tries    its detoxification attempts (absent until the first one starts)
    outgoing/ID.eml      the detoxified message (CRLF)
    outgoing/ID.json     its delivery state, per recipient (both inert while incoming/ID.msg exists)
    failed/              entries moved aside (unreadable, or failing the pipeline again and again),
                         each with ID.why.json; `detox queue retry ID` puts one back
    released/ID.eml      a release (``detox quarantine release``) written by the CLI; with its
    released/ID.json     delivery state written last, ``serve`` moves both to outgoing/ and delivers
    control/             requests from the CLI to a running serve (retry.ID, flush, reload)
    serve.pid            locked by the running serve (one serve per spool)

Every write is temp file → fsync → rename → fsync of the directory, so after a crash a file is either
complete or absent. Recovery is a directory listing: ``incoming`` still to detoxify, ``outgoing``
still to deliver.

The worker writes ``outgoing/ID.eml`` and its first ``ID.json`` while ``incoming/ID.msg`` is still
there; serve then indexes, audits and removes ``incoming/ID.msg`` (the hand-off's commit). So an
outgoing entry is live only once its incoming entry is gone (``outgoing_ids``): a crash before the
commit detoxifies the message again, and it is never delivered without its ``detoxified`` record.
The removals that finish a stage (incoming at the hand-off, outgoing after delivery) are not
fsync'd: one lost to a power failure makes a duplicate (at least once), never a loss; a delivery
attempt that records progress first makes the incoming removal durable.

Those ordering rules are kept by the spool, not by its callers: each commit point is one function
that does its steps in their order (see ``queue.py``): accept (``IncomingWriter.commit``,
``Spool.accept``), hand-off (``Spool.write_outgoing`` then ``Spool.hand_off``) and record progress
(``Spool.record_progress``).

Modules: ``records`` (the delivery state, attempts and the spool's vocabulary as enums), ``files``
(directories and the atomic write), ``incoming`` (accepting a message), ``queue`` (the ``Spool``:
the entries and the commit points), ``control`` (CLI requests, one serve per spool).
"""

from __future__ import annotations

from detox.spool.control import ServeLock
from detox.spool.incoming import MAGIC, STREAM_CHUNK, IncomingWriter, is_disk_full
from detox.spool.queue import ATTEMPT_MARK, Spool, WorkerResult
from detox.spool.records import (
    KIND_DSN,
    KIND_MESSAGE,
    KIND_RELEASE,
    DeliveryState,
    EntryKind,
    FailReason,
    PipelineTries,
    RecipientState,
    RecipientStatus,
    new_queue_id,
    valid_queue_id,
)

__all__ = [
    "ATTEMPT_MARK",
    "KIND_DSN",
    "KIND_MESSAGE",
    "KIND_RELEASE",
    "MAGIC",
    "STREAM_CHUNK",
    "DeliveryState",
    "EntryKind",
    "FailReason",
    "IncomingWriter",
    "PipelineTries",
    "RecipientState",
    "RecipientStatus",
    "ServeLock",
    "Spool",
    "WorkerResult",
    "is_disk_full",
    "new_queue_id",
    "valid_queue_id",
]
