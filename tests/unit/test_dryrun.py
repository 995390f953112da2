"""``detox scan --summary``: the policy dry-run over a directory, an mbox or a Maildir."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest
from support.mails import EXE, mail, ppap_mail

from detox.config.schema import DetoxConfig
from detox.scan import Inputs, is_multi, render_summary, summarize


@pytest.fixture
def mails() -> list[bytes]:
    return [
        ppap_mail()[0],
        mail([("setup.exe", EXE, "application/octet-stream")], subject="実行ファイル"),
        mail([("メモ.txt", "こんにちは\n".encode(), "text/plain")], subject="テキスト"),
    ]


def test_inputs_directory_mbox_and_maildir(tmp_path: Path, mails: list[bytes]) -> None:
    folder = tmp_path / "dir"
    (folder / "sub").mkdir(parents=True)
    for i, raw in enumerate(mails):
        (folder / "sub" / f"{i}.eml").write_bytes(raw)
    (folder / "expected.json").write_text('{"not": "mail"}')
    (folder / "notes.txt").write_text("just notes\n")
    inputs = Inputs()
    found = list(inputs.messages(folder))
    assert [label for label, _ in found] == ["sub/0.eml", "sub/1.eml", "sub/2.eml"]
    assert inputs.skipped == 2

    box_path = tmp_path / "mbox"
    box = mailbox.mbox(box_path)
    for raw in mails:
        box.add(raw)
    box.close()
    assert is_multi(box_path) and is_multi(folder)
    assert [label for label, _ in Inputs().messages(box_path)] == ["mbox#1", "mbox#2", "mbox#3"]

    maildir = mailbox.Maildir(tmp_path / "Maildir")
    for raw in mails:
        maildir.add(raw)
    labels = [label for label, _ in Inputs().messages(tmp_path / "Maildir")]
    assert len(labels) == 3 and all(label.startswith("new/") for label in labels)

    single = folder / "sub" / "0.eml"
    assert not is_multi(single)
    assert [raw for _, raw in Inputs().messages(single)] == [mails[0]]


def test_summary_counts_and_examples(tmp_path: Path, mails: list[bytes]) -> None:
    for i, raw in enumerate(mails):
        (tmp_path / f"{i}.eml").write_bytes(raw)
    summary = summarize(DetoxConfig(), tmp_path)
    assert summary.messages == 3 and not summary.errors
    assert summary.with_held == 2 and summary.with_converted == 1
    assert summary.attachments[("hold", "encrypted-archive")] == 1
    assert summary.attachments[("replace", "-")] == 1
    assert summary.examples[("hold", "encrypted-archive")] == ["0.eml  part 2  見積書.zip  (application/zip)"]
    text = render_summary(summary)
    assert "encrypted-archive" in text and "nothing was delivered" in text and "見積書.zip" in text
    assert summary.as_json()["attachments"][0]["count"] == 1
