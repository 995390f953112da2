"""The quarantine: held originals on the Internet side, found, shown, exported and released.

Nothing is copied at hold time: the whole original is kept, content-addressed, and the index records
every part's decision; an admin names a held part by its hold id (保管番号) ``QUEUE_ID/PART_ID``. A
release is a deliberate exception (例外措置) to the filters, recorded before it takes effect. The
modules, from the disk up:

- :mod:`detox.quarantine.store`: the originals (``originals/ab/<sha256>.eml``) and the SQLite index
  (``detox.db``) that ``serve`` writes and the admin commands read;
- :mod:`detox.quarantine.extract`: a held part's bytes found in the original by their recorded hash;
- :mod:`detox.quarantine.holds`: hold ids, the view of a message, :class:`~detox.quarantine.holds.Holds`
  (find, show, a part's bytes);
- :mod:`detox.quarantine.release`: approvals, the two-person rule, the released mail composed and queued;
- :mod:`detox.quarantine.admin`: :class:`~detox.quarantine.admin.Quarantine`, all of the above plus
  export, delete and purge: what ``detox quarantine`` drives.

Import from the modules (``from detox.quarantine.admin import Quarantine``); this file re-exports
nothing, on purpose: ``serve`` and its pipeline workers import only the store, and a package face
that re-exported the admin's workflow would load it (release, compose, the audit writer) into every
one of them.
"""
