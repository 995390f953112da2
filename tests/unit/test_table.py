"""Terminal tables: Japanese (East Asian Wide) text takes two columns, and columns still line up."""

from __future__ import annotations

import pytest

from detox.table import render, text_width, truncate


def test_widths() -> None:
    assert text_width("abc") == 3
    assert text_width("見積書") == 6  # Wide
    assert text_width("ｱｲｳ") == 3  # half-width katakana: Narrow
    assert text_width("ＡＢ") == 4  # Fullwidth
    assert text_width("か\u3099") == 2  # a combining mark takes no column
    assert text_width("①", ambiguous=1) == 1 and text_width("①", ambiguous=2) == 2


def test_truncate_never_splits_a_wide_character() -> None:
    assert truncate("見積書の送付", 7) == "見積書…"  # 6 columns + the ellipsis
    assert text_width(truncate("見積書の送付", 7)) <= 7
    assert truncate("short", 10) == "short"


def test_columns_line_up_in_terminal_columns() -> None:
    out = render(
        ["ID", "SUBJECT", "FROM"],
        [("A1", "①見積書の送付（㈱髙橋商事）", "hanako@vendor.example.com"), ("B22", "hello", "x@y")],
    )
    lines = out.splitlines()
    # The FROM column starts at the same terminal column on every line.
    starts = {
        text_width(line[: line.index(marker)])
        for line, marker in zip(lines, ("FROM", "hanako", "x@y"), strict=True)
    }
    assert len(starts) == 1


def test_cells_cannot_drive_the_terminal() -> None:
    out = render(["SUBJECT"], [("\x1b[2J\x1b]0;pwned\x07件名\u202e",)])
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "件名" in out


def test_the_shrink_column_is_cut_to_fit() -> None:
    rows = [("1A2142AA7ED8478F55C1", "長い件名" * 20)]
    out = render(["ID", "SUBJECT"], rows, total_width=60, shrink=1)
    assert all(text_width(line) <= 60 for line in out.splitlines())


@pytest.mark.parametrize("ambiguous", ["1", "2"])
def test_ambiguous_width_follows_the_environment(monkeypatch: pytest.MonkeyPatch, ambiguous: str) -> None:
    monkeypatch.setenv("DETOX_AMBIGUOUS_WIDTH", ambiguous)
    assert text_width("①②") == 2 * int(ambiguous)
