"""Attachment policy rules: detected type, extension, sender, hash; suspicious mismatches."""

from __future__ import annotations

import email
import email.policy
import io
from email.message import EmailMessage
from pathlib import Path

import pikepdf
import pytest
from support.pipelines import pipeline_runner

from detox.config import load_config
from detox.config.schema import DetoxConfig, PolicyAction, PolicyActionKind
from detox.envelope import Envelope
from detox.errors import ConfigError
from detox.pipeline import DetoxResult
from detox.pipeline.model import Part, Role
from detox.pipeline.policy import type_mismatch
from detox.pipeline.registry import load_validated_config

REPO = Path(__file__).resolve().parents[2]


def pdf_bytes() -> bytes:
    pdf = pikepdf.new()
    pdf.add_blank_page()
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


def mail(filename: str, data: bytes, maintype: str = "application", subtype: str = "pdf") -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@partner.example.jp"
    msg["Subject"] = "添付"
    msg.set_content("本文")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


run = pipeline_runner(Envelope("0123456789ABCDEF0123", "a@partner.example.jp", ("taro@city.example.lg.jp",)))


def attachment_record(result: DetoxResult) -> dict[str, object]:
    return next(p for p in result.report.parts_json() if p["role"] == "attachment")


def part(name: str, declared: str, detected: str) -> Part:
    return Part("2", Role.ATTACHMENT, declared, detected, None, name, b"x", "0" * 64)


@pytest.mark.parametrize(
    ("name", "declared", "detected", "suspicious"),
    [
        ("a.pdf", "application/pdf", "application/pdf", False),
        ("a.pdf", "application/octet-stream", "application/pdf", False),
        ("invoice.pdf", "application/pdf", "application/x-dosexec", True),
        ("photo.jpg", "image/jpeg", "application/pdf", True),
        ("a.bin", "image/png", "application/pdf", True),
        ("名簿.csv", "text/csv", "application/octet-stream", False),  # CP932 text reads as anything
        ("a.docx", "application/octet-stream", "application/zip", False),
        ("noext", "application/octet-stream", "application/zip", False),
    ],
)
def test_type_mismatch(name: str, declared: str, detected: str, suspicious: bool) -> None:
    assert (type_mismatch(part(name, declared, detected)) is not None) is suspicious


def test_shipped_rules_hold_executables_by_extension_and_by_content() -> None:
    config = load_config(REPO / "config" / "detox.toml")
    by_name = run(mail("更新.exe", b"harmless bytes", "application", "octet-stream"), config)
    record = attachment_record(by_name)
    assert (record["action"], record["reason"], record["filter"]) == (
        "hold",
        "executable",
        "policy:executables-and-scripts",
    )
    disguised = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 48 + b"PE\x00\x00"
    by_content = attachment_record(run(mail("readme.txt", disguised, "text", "plain"), config))
    assert by_content["action"] == "hold"
    assert by_content["mismatch"]


def test_sender_domain_exception_sanitizes_instead_of_rasterizing() -> None:
    config = DetoxConfig.model_validate(
        {
            "policy": {
                "rules": [
                    {
                        "name": "partner-pdfs",
                        "sender_domains": ["partner.example.jp"],
                        "detected": ["application/pdf"],
                        "action": "pdf:sanitize",
                    }
                ]
            }
        }
    )
    raw = mail("報告書.pdf", pdf_bytes())
    partner = run(raw, config)
    assert attachment_record(partner)["filter"] == "policy:partner-pdfs"
    assert "pdf-sanitized=1" in partner.actions
    other = run(raw, config, sender="x@elsewhere.example")
    assert attachment_record(other)["filter"] == "pdf"
    assert "pdf-rasterized=1" in other.actions


def test_sha256_exception_and_first_match_wins() -> None:
    data = pdf_bytes()
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    config = DetoxConfig.model_validate(
        {
            "policy": {
                "rules": [
                    {"name": "approved-form", "sha256": [digest.upper()], "action": "default"},
                    {"name": "no-pdfs", "detected": ["application/*"], "action": "drop"},
                ]
            }
        }
    )
    approved = attachment_record(run(mail("様式.pdf", data), config))
    assert approved["action"] == "replace" and approved["filter"] == "pdf"
    dropped = attachment_record(run(mail("other.pdf", pdf_bytes() + b"\n%x"), config))
    assert (dropped["action"], dropped["filter"]) == ("drop", "policy:no-pdfs")


def test_rule_naming_a_filter_for_the_wrong_type_holds() -> None:
    config = DetoxConfig.model_validate({"policy": {"rules": [{"extensions": ["txt"], "action": "pdf"}]}})
    record = attachment_record(run(mail("a.txt", "テキスト".encode(), "text", "plain"), config))
    assert (record["action"], record["reason"]) == ("hold", "unsupported-type")


@pytest.mark.parametrize(
    ("rule", "key", "problem"),
    [
        ("action = 'pdff'", "policy.rules[0].action", "unknown filter"),
        ("action = 'pdf:shred'", "policy.rules[0].action", "pdf:shred"),
        ("action = 'hold'\nextension = ['exe']", "policy.rules.0.extension", "unknown key"),
    ],
)
def test_policy_config_errors_name_file_and_key(tmp_path: Path, rule: str, key: str, problem: str) -> None:
    path = tmp_path / "detox.toml"
    path.write_text(f"[[policy.rules]]\n{rule}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_validated_config(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert problem in str(err.value)


def test_output_mail_of_policy_hold_names_the_reason() -> None:
    config = load_config(REPO / "config" / "detox.toml")
    result = run(mail("setup.msi", b"\xd0\xcf\x11\xe0 whatever", "application", "octet-stream"), config)
    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    body = out.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "setup.msi" in text and "実行ファイルやスクリプトは受け取らない設定になっているため" in text


# -- "everything else": what has no safe form is held, by name and by content -----------------------

EXECUTABLE_NAMES = [
    "請求書.exe", "invoice.scr", "ショートカット.lnk", "disk.iso", "disk.img", "disk.vhd", "disk.vhdx",
    "notes.one", "help.chm", "app.hta", "run.js", "run.jse", "run.vbs", "run.vbe", "run.wsf", "run.ps1",
    "run.bat", "run.cmd", "tool.jar", "setup.msi", "settings.reg", "link.url", "lib.dll", "panel.cpl",
]  # fmt: skip


@pytest.mark.parametrize("name", EXECUTABLE_NAMES)
def test_shipped_rules_hold_everything_executable_by_name(name: str) -> None:
    config = load_config(REPO / "config" / "detox.toml")
    record = attachment_record(run(mail(name, b"harmless bytes", "application", "octet-stream"), config))
    assert (record["action"], record["reason"]) == ("hold", "executable"), record


def _iso9660() -> bytes:
    image = bytearray(0x8800)
    image[0x8000:0x8006] = b"\x01CD001"
    return bytes(image)


def _jar() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nMain-Class: Evil\r\n")
        zf.writestr("Evil.class", b"\xca\xfe\xba\xbe" + b"\x00" * 60)
    return buf.getvalue()


SHORTCUT = bytes.fromhex("4c0000000114020000000000c000000000000046") + b"\x00" * 56
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00\x3e\x00" + b"\x00" * 44


@pytest.mark.parametrize(
    ("label", "data"),
    [("shortcut", SHORTCUT), ("iso9660", _iso9660()), ("elf", ELF), ("jar", _jar())],
)
def test_executable_content_under_an_innocent_name_never_crosses(label: str, data: bytes) -> None:
    config = load_config(REPO / "config" / "detox.toml")
    result = run(mail("資料.txt", data, "text", "plain"), config)
    records = [r for r in result.records if r.role == "attachment"]
    assert [(r.action, r.reason) for r in records] == [("hold", "executable")], label
    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    assert not list(out.iter_attachments())


@pytest.mark.parametrize(
    ("name", "crosses_as"),
    [("run.vbs", "run.vbs.txt"), ("setup.bat", "setup.bat.txt"), ("a.hta", "a.hta.txt"), ("a.js", "a.js.txt"),
     ("noext", "noext.txt"), ("メモ.txt", "メモ.txt"), ("log.log", "log.log")],
)  # fmt: skip
def test_a_script_declared_as_text_never_keeps_a_runnable_name(name: str, crosses_as: str) -> None:
    """Without the shipped policy rules (built-in defaults only), text is re-encoded, renamed safely."""
    result = run(mail(name, b'WScript.Echo "hi"\r\n', "text", "plain"), DetoxConfig())
    (record,) = [r for r in result.records if r.role == "attachment"]
    assert (record.action, record.output_filename) == ("replace", crosses_as)
    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    assert [a.get_filename() for a in out.iter_attachments()] == [crosses_as]


@pytest.mark.parametrize(
    ("text", "kind", "name", "mode"),
    [
        ("hold", PolicyActionKind.HOLD, "", ""),
        ("drop", PolicyActionKind.DROP, "", ""),
        ("default", PolicyActionKind.DEFAULT, "", ""),
        ("pdf", PolicyActionKind.FILTER, "pdf", ""),
        ("pdf:sanitize", PolicyActionKind.FILTER, "pdf", "sanitize"),
        ("hold:x", PolicyActionKind.FILTER, "hold", "x"),  # not a built-in: an (unknown) filter
    ],
)
def test_policy_action_is_parsed_when_the_config_loads(
    text: str, kind: PolicyActionKind, name: str, mode: str
) -> None:
    config = DetoxConfig.model_validate({"policy": {"rules": [{"action": text}]}})
    action = config.policy.rules[0].action
    assert (action.kind, action.filter, action.mode, str(action)) == (kind, name, mode, text)
    assert config.model_dump()["policy"]["rules"][0]["action"] == text  # dumped as written
    assert action == PolicyAction.parse(text)
