"""Reasons and notes: registries the built-in names fill and other packages' filters extend."""

from __future__ import annotations

import pytest

from detox.config.schema import DeliveryConfig, NoticeConfig
from detox.pipeline.vocabulary import NOTES, REASONS, Vocabulary


def test_built_in_reasons_are_the_notice_s_and_the_drop_only_ones() -> None:
    in_notice = {name for name, entry in REASONS.entries().items() if entry.in_notice}
    assert in_notice == set(NoticeConfig().reasons)
    assert set(DeliveryConfig().no_bounce_reasons) <= in_notice
    assert {"alternative-unused", "archive-os-metadata"} <= set(REASONS)


def test_built_in_notes_with_a_notice_text_are_registered() -> None:
    assert set(NoticeConfig().conversions) <= set(NOTES)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Upper",
        "two  words",
        "semi;colon",
        "a=1",
        "line\nbreak",
        "-lead",
        "trail-",
        "a--b",
        "x" * 65,
        "日本",
    ],
)
def test_a_name_that_would_break_a_header_or_a_key_is_refused(bad: str) -> None:
    registry = Vocabulary("note")
    with pytest.raises(ValueError, match="not a valid name"):
        registry.register(bad, owner="mypkg-png")
    assert bad not in registry


def test_a_plugin_adds_names_and_shares_the_built_in_ones() -> None:
    registry = Vocabulary("reason")
    registry.register("limit-exceeded", "a cap")
    assert registry.register("png-too-wide", "wider than allowed", owner="png") == "png-too-wide"
    registry.register("limit-exceeded", owner="png")  # a shared name keeps its first meaning
    entry = registry.entry("limit-exceeded")
    assert (entry.owner, entry.doc, entry.users) == ("detox", "a cap", {"detox", "png"})
    assert list(registry) == ["limit-exceeded", "png-too-wide"] and len(registry) == 2


def test_the_loader_registers_what_every_installed_filter_declares() -> None:
    from detox.pipeline.registry import available_filters

    filters = available_filters()
    assert filters, "no filter installed"
    for name, cls in filters.items():
        for reason in cls.reasons:
            assert name in REASONS.entry(reason).users, (name, reason)
        for note in cls.notes:
            assert name in NOTES.entry(note).users, (name, note)


def test_the_readme_lists_every_x_detox_actions_item() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    paragraph = readme.split("`X-Detox-Actions` is `text-converted`", 1)[1].split("```", 1)[0]
    missing = [name for name in NOTES if f"`{name}=N`" not in paragraph and name != "text-converted"]
    assert not missing, f"README's X-Detox-Actions paragraph does not list {missing}"
