"""Antivirus before disarm: the original message, every MIME part and every archive member are
scanned by clamd before any filter sees them (see :mod:`detox.antivirus.clamd` for the client and
:mod:`detox.antivirus.scan` for what a verdict means to the pipeline)."""
