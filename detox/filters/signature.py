"""Detached S/MIME and PGP signatures: detoxification changes the signed content, so they are dropped."""

from __future__ import annotations

from typing import ClassVar

from detox.filters.base import Filter, FilterContext, NoOptions
from detox.pipeline.model import Action, Part, Verdict

SIGNATURE_TYPES = frozenset(
    {
        "application/pkcs7-signature",
        "application/x-pkcs7-signature",
        "application/pgp-signature",
    }
)


class SignatureFilter(Filter[NoOptions]):
    """Dropped and named in the notice; the original (with its signature) is kept."""

    name: ClassVar[str] = "signature"
    reasons: ClassVar[tuple[str, ...]] = ("signature",)
    notes: ClassVar[tuple[str, ...]] = ("signature-removed",)

    def applies_to(self, part: Part) -> bool:
        return part.declared_type in SIGNATURE_TYPES

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        return Verdict(Action.DROP, reason="signature", notes=("signature-removed",))
