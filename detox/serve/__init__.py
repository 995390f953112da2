"""``detox serve``: the listener, the pipeline workers and the delivery queue, around the spool.

Flow (each arrow is a durable hand-off on disk)::

    SMTP DATA → spool/incoming (fsync, then 250) → worker process: pipeline → spool/outgoing (inert)
              → index + audit → incoming released (the commit) → delivery (per recipient, retried
              with backoff) → done
                                          └→ given up (5xx, or delivery.max_age_days) → DSN → bounce_via

On start every spooled entry is picked up again, so ``kill -9`` loses nothing that was acknowledged.
SIGTERM drains: no new sessions, sessions in DATA and work under way get ``server.shutdown_timeout_s``
to finish, the rest is handed back to the spool. SIGHUP (or ``detox reload``) reloads the config.

The shape is Postfix's and Mailman's: runners around a spool, each doing one stage and talking to
the others only through the spool's commit points (``detox.spool``), which keep the on-disk ordering
rules themselves.

* ``app`` — the composition root: builds the spool, store, audit log, the ingest side and the
  runners; start, run, drain and stop (``Service``, what ``detox serve`` runs).
* ``ingest`` — the SMTP listener (``detox.smtp``) wired to the spool's accept commit point and the
  audit log, nothing else.
* ``detoxify`` — the detox runner: attempts, timeouts, poison messages, the hand-off;
  ``pool`` — its process pools (and the one-worker pool that isolates suspected crashers);
  ``worker`` — what runs inside a worker process; ``report`` — every read of the pipeline's report.
* ``delivery`` — the delivery runner: per-recipient state, backoff, expiry, DSNs, delivery audit.
* ``control`` — requests from the CLI (release, retry, flush) and the reload.
* ``housekeeping`` — retention purge, stale ``tmp/`` files, summarised refusal records.
* ``stage`` — what the runners share: the timed queue of work and moving an entry aside.

This ``__init__`` imports nothing: the worker processes import ``detox.serve.worker`` by name and
must not pull in the listener or delivery.

Several ingest processes on one spool (SO_REUSEPORT), for when the main process is the bottleneck —
what would change (not built):

* ``ingest.start_listener`` binds with ``reuse_port=True`` in N processes; each needs only a
  ``Spool`` (``open_incoming``, the accept commit point), the audit log and its own ``SessionGate``.
  Queue ids already carry 36 random bits, so N processes never clash.
* The audit log is appended by several processes: ``AuditLog`` would need an exclusive ``flock``
  around each append, re-reading the chain's last hash under it (today it is kept in memory).
* The two in-memory links the ingest side has to the runners go through the spool instead:
  ``on_accepted`` (today ``Stage.now`` of the detox runner) becomes a wake-up of the runner process
  (inotify on ``incoming/``, or a datagram on a Unix socket, with the directory scan as the fallback
  that ``recover`` already is), and the back-pressure ``Backlog`` becomes the runner's published
  count (a small file it rewrites, or a shared-memory counter) read by every listener.
* The runners (this process, minus the listener) keep the spool's ``serve.pid`` lock; ingest
  processes take a shared lock instead, so ``detox queue`` still sees one serve.
"""
