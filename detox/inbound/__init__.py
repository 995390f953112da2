"""Sender authentication (issue 13): who really sent the message, decided before the ``250``.

The ingest side (:mod:`detox.smtp.handler`) runs :class:`~detox.inbound.check.Authenticator` at the end
of DATA, while the client's IP, HELO and MAIL FROM are known; the outcome (typed results and the
decision) travels in the spooled envelope, and the pipeline renders it (:mod:`detox.inbound.view`):
our ``Authentication-Results`` header, the notice's lines, or the whole message held.

Modules: :mod:`~detox.inbound.dns` (the one resolver and cache; any DNS failure is temperror),
:mod:`~detox.inbound.spf` (pyspf), :mod:`~detox.inbound.dkim` (DKIM and ARC, dkimpy),
:mod:`~detox.inbound.dmarc` (DMARCbis tree walk), :mod:`~detox.inbound.relays` (trusted upstream
relays), :mod:`~detox.inbound.message` (From and Reply-To from the raw header),
:mod:`~detox.inbound.results` (typed results, the header), :mod:`~detox.inbound.decide` (the policy),
:mod:`~detox.inbound.check` (one message end to end), :mod:`~detox.inbound.view` and
:mod:`~detox.inbound.offline` (the pipeline's and ``detox scan``'s side). With ``[inbound]`` off
nothing here runs: no DNS, no header, no notice line (the modules are imported all the same).
"""
