"""Every SMTP reply detox sends, by name. Our own failures are generic 4xx: details go to our log."""

from __future__ import annotations

QUEUED = "250 2.0.0 OK queued as {queue_id}"
MAIL_OK = "250 2.1.0 OK"
RCPT_OK = "250 2.1.5 OK"
DATA_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
RELAY_DENIED = "550 5.7.1 Relaying denied: we do not accept mail for that domain"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
NO_RECIPIENTS = "503 5.5.1 Error: need RCPT command"
LOCAL_ERROR = "451 4.3.0 Local error in processing, please try again later"
SPOOL_FULL = "452 4.3.1 Insufficient system storage, please try again later"

# Limits (each also gives a `refused` audit record).
TOO_MANY_SESSIONS = "421 4.7.0 Too many connections, please try again later"
TOO_MANY_SESSIONS_CLIENT = "421 4.7.0 Too many connections from your address, please try again later"
BUSY = "451 4.3.2 System busy, please try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, please try again later"
MESSAGE_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
LINE_TOO_LONG = "500 5.6.0 Line too long (limit {limit} bytes)"
TOO_MANY_HEADERS = "552 5.3.4 Too many header fields (limit {limit})"
HEADERS_TOO_BIG = "552 5.3.4 Message header section too large (limit {limit} bytes)"
