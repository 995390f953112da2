"""What every deliverer promises: a per-recipient outcome, never a silent drop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # try again later (4xx, connection trouble)
    FAILED = "failed"  # permanent (5xx); recorded, bounced in a later release


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    code: int | None = None
    response: str = ""


class Deliverer(ABC):
    @abstractmethod
    async def deliver(self, mail_from: str, recipients: Sequence[str], data: bytes) -> dict[str, Outcome]:
        """Deliver ``data`` (CRLF) to each recipient; return an outcome for every one of them."""

    async def aclose(self) -> None:
        return None
