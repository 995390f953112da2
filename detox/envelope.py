"""The SMTP envelope of one accepted message, as spooled and as passed to the pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope as spooled. ``helo`` and ``mail_from`` are untrusted."""

    queue_id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    client_address: str = ""
    helo: str = ""
    received_at: str = ""  # RFC 3339 UTC
    # Sender authentication done before the 250 (detox.inbound.check.Outcome.to_json()); None when
    # [inbound] is off, and then absent from the spooled JSON (entries written before it read as None).
    auth: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "queue_id": self.queue_id,
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "client_address": self.client_address,
            "helo": self.helo,
            "received_at": self.received_at,
        }
        if self.auth is not None:
            data["auth"] = dict(self.auth)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Envelope:
        return cls(
            queue_id=str(data["queue_id"]),
            mail_from=str(data.get("mail_from", "")),
            rcpt_tos=tuple(str(r) for r in data.get("rcpt_tos", ())),
            client_address=str(data.get("client_address", "")),
            helo=str(data.get("helo", "")),
            received_at=str(data.get("received_at", "")),
            auth=data["auth"] if isinstance(data.get("auth"), dict) else None,
        )
