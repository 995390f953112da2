"""The audit log: what detox did with every message and what every admin did, one JSON line per event,
hash-chained so that an edited, removed, inserted or reordered line is found (``detox audit verify``).

Four modules divide it:

- :mod:`detox.audit.events`: one typed event per kind of record (the fields each record carries);
- :mod:`detox.audit.log`: :class:`AuditLog`, the writer: chaining, the group commit, rotation;
- :mod:`detox.audit.read`: the files that make one chain, its records, ``tail`` and ``follow``;
- :mod:`detox.audit.check`: the chain check, and what most likely happened at a broken link.

The writer, reading and verification were one module, ``detox.audit``; its names are still here
(``from detox.audit import AuditLog, verify``), so callers need not know how it is divided. The events
were always a module of their own: import them from :mod:`detox.audit.events`. A test that patches
a name patches it in the module that uses it (``detox.audit.log``), not here.
"""

from __future__ import annotations

from detox.audit.check import VerifyResult, verify, verify_files
from detox.audit.log import AuditLog, now_rfc3339, to_rfc3339
from detox.audit.read import (
    GENESIS,
    ROTATED,
    Entry,
    chain_files,
    follow,
    iter_entries,
    line_hash,
    read_records,
    segment_paths,
    tail,
)

__all__ = [
    "GENESIS",
    "ROTATED",
    "AuditLog",
    "Entry",
    "VerifyResult",
    "chain_files",
    "follow",
    "iter_entries",
    "line_hash",
    "now_rfc3339",
    "read_records",
    "segment_paths",
    "tail",
    "to_rfc3339",
    "verify",
    "verify_files",
]
