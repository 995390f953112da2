"""Every SMTP reply detox sends, by name. Our own failures are generic 4xx: details go to our log."""

from __future__ import annotations

QUEUED = "250 2.0.0 OK queued as {queue_id}"
RCPT_OK = "250 2.1.5 OK"
RELAY_DENIED = "550 5.7.1 Relaying denied: we do not accept mail for that domain"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
NO_RECIPIENTS = "503 5.5.1 Error: need RCPT command"
LOCAL_ERROR = "451 4.3.0 Local error in processing, please try again later"
SPOOL_FULL = "452 4.3.1 Insufficient system storage, please try again later"
