"""text/enriched (RFC 1896) and text/richtext (RFC 1341) bodies to plain text."""

from __future__ import annotations

from detox.text.enriched import enriched_to_text, richtext_to_text


def test_enriched_commands_dropped_and_newlines_follow_rfc1896() -> None:
    # one newline is a space, n newlines are n-1 line breaks
    src = "<bold>重要</bold>なお知らせ\n続き\n\n新しい段落 <<タグではない>\n<param>Times</param>"
    assert enriched_to_text(src) == "重要なお知らせ 続き\n新しい段落 <タグではない> "


def test_richtext_nl_and_lt() -> None:
    src = "<bold>①㈱髙橋</bold><nl>二行目 <lt>x><comment>見せない</comment>\nの続き"
    assert richtext_to_text(src) == "①㈱髙橋\n二行目 <x> の続き"


def test_unbalanced_and_hostile_input_is_bounded() -> None:
    src = "<" * 100_000 + "</param>" * 1000 + "text"
    assert enriched_to_text(src).endswith("text")
    assert richtext_to_text(src).endswith("text")
