"""Delivery into LGWAN: an SMTP client (production) or a local Maildir (the embedded default)."""

from __future__ import annotations

from detox.config.loader import DeliverTo
from detox.config.schema import DetoxConfig
from detox.delivery.base import Deliverer, Outcome
from detox.delivery.maildir import MaildirDeliverer
from detox.delivery.smtp import SmtpDeliverer

__all__ = ["Deliverer", "Outcome", "make_deliverer"]


def make_deliverer(target: DeliverTo, config: DetoxConfig) -> Deliverer:
    if target.scheme == "maildir":
        return MaildirDeliverer(config.resolve_path(target.path), fsync=config.storage.fsync)
    return SmtpDeliverer(target.host, target.port, config.delivery, helo=config.server.hostname)
