"""The worked check of docs/writing-filters.md: an out-of-tree filter package, installed the way a
user would (pip, into a directory on PYTHONPATH), found and run by an unmodified detox.

The package is tests/plugins/detox_example_filter: a sandboxed filter for Netpbm images (PGM, PPM)
with its converter registered in the ``detox.converters`` entry-point group. detox must list it,
validate its options and its declared order, and convert a mail with it end to end: the converter
runs in the real sandbox.
"""

from __future__ import annotations

import email
import email.policy
import io
import json
import os
import shutil
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "tests" / "plugins" / "detox_example_filter"
ORDER = [
    "image", "pdf", "office", "archive", "calendar", "netpbm", "html", "plain", "rtf", "enriched",
    "text-attachment", "signature",
]  # fmt: skip
PGM = b"P5\n# scanner output\n4 2\n255\n" + bytes([0, 40, 80, 120, 160, 200, 240, 255])
# Until the sandbox reads the "detox.converters" entry-point group (issue 12, item 3), the child
# looks for a plugin's converter among detox's own modules and does not find it.
NO_PLUGIN_CONVERTERS = "detox.converters.example_netpbm"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --no-deps --target DIR`` of a copy of the plugin (the build writes into its tree)."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN, work / "src")
    target = work / "site"
    # As a user would: pip fetches the build backend (setuptools) from the configured index.
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    result = subprocess.run(
        [*pip, "--target", str(target), str(source)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert (target / "detox_example_filter" / "filter.py").is_file()
    return target


def detox(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "detox", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def config(tmp_path: Path, order: list[str] = ORDER, extra: str = "") -> Path:
    path = tmp_path / "detox.toml"
    path.write_text(f"[pipeline]\norder = {json.dumps(order)}\n{extra}", encoding="utf-8")
    return path


def test_detox_lists_the_installed_filter(site: Path, tmp_path: Path) -> None:
    unused = detox(site, tmp_path, "filters")
    assert unused.returncode == 0, unused.stderr
    line = next(x for x in unused.stdout.splitlines() if x.startswith("netpbm "))
    assert "unused" in line and "Netpbm images (PGM, PPM): re-encoded as PNG in the sandbox" in line
    listed = detox(site, tmp_path, "filters", "--config", str(config(tmp_path)))
    assert listed.returncode == 0, listed.stderr
    assert any(x.startswith("netpbm ") and "#6" in x for x in listed.stdout.splitlines())


def test_the_loader_checks_the_plugins_options_and_order(site: Path, tmp_path: Path) -> None:
    ok = detox(site, tmp_path, "check-config", "--no-sandbox", str(config(tmp_path)))
    assert ok.returncode == 0, ok.stderr
    bad_option = config(tmp_path, extra="[filters.netpbm]\noptions = { max_pixel = 3 }\n")
    result = detox(site, tmp_path, "check-config", "--no-sandbox", str(bad_option))
    assert result.returncode == 2
    assert f"{bad_option}: filters.netpbm.options.max_pixel: unknown key" in result.stderr
    late = [n for n in ORDER if n != "netpbm"] + ["netpbm"]  # after text-attachment
    bad_order = config(tmp_path, late)
    result = detox(site, tmp_path, "check-config", "--no-sandbox", str(bad_order))
    assert result.returncode == 2
    assert "pipeline.order[11]: filter 'netpbm' must come before 'text-attachment'" in result.stderr


# The plugin's two halves together, its converter called in-process by a stand-in sandbox: what the
# end-to-end test below checks in bubblewrap, here also while the sandbox cannot load it yet.
IN_PROCESS = """
import sys
from detox.config.schema import DetoxConfig
from detox.filters.base import FilterContext
from detox.filters.contract import verdict_problems
from detox.pipeline.model import Part, Role
from detox.sandbox.base import Sandbox
from detox_example_filter import converter
from detox_example_filter.filter import NetpbmFilter, NetpbmOptions

class InProcess(Sandbox):
    name = "in-process"
    def run(self, module, data, args, limits):
        assert module == "example_netpbm" and limits.timeout_s > 0
        return converter.main(data, dict(args))

ctx = FilterContext("Q", "example.jp", DetoxConfig(), sandbox=InProcess())
data = sys.stdin.buffer.read()
part = Part("2", Role.ATTACHMENT, "image/x-portable-graymap", "image/x-portable-greymap", None, "scan.pgm",
            data, "0" * 64)
for options, expected in ((NetpbmOptions(), "replace"), (NetpbmOptions(max_pixels=4), "hold")):
    verdict = NetpbmFilter(options).process(part, ctx)
    assert verdict.action == expected, verdict
    assert verdict_problems(NetpbmFilter, part, verdict) == [], verdict
print(verdict.reason)
"""


def test_the_plugins_filter_and_converter_keep_the_contract(site: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", IN_PROCESS], input=PGM, env=env, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "limit-exceeded"


def _records(report: Any) -> list[dict[str, Any]]:
    if isinstance(report, dict):
        found = [report] if "filter" in report and "action" in report else []
        return found + [r for v in report.values() for r in _records(v)]
    if isinstance(report, list):
        return [r for v in report for r in _records(v)]
    return []


def test_a_mail_is_converted_end_to_end(site: Path, tmp_path: Path) -> None:
    msg = EmailMessage()
    msg["From"] = "scanner@example.jp"
    msg["To"] = "taro@city.example.lg.jp"
    msg["Subject"] = "スキャン"
    msg.set_content("添付を確認してください。")
    msg.add_attachment(PGM, maintype="image", subtype="x-portable-graymap", filename="scan.pgm")
    mail = tmp_path / "in.eml"
    mail.write_bytes(msg.as_bytes())
    out, report = tmp_path / "out.eml", tmp_path / "report.json"
    result = detox(site, tmp_path, "scan", "--config", str(config(tmp_path)), str(mail),
                   "--output", str(out), "--report", str(report))  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = next(r for r in _records(json.loads(report.read_text())) if r.get("filename") == "scan.pgm")
    assert record["filter"] == "netpbm"
    if record["action"] == "hold" and NO_PLUGIN_CONVERTERS in (record.get("error") or ""):
        pytest.skip(
            "the sandbox cannot load a plugin's converter yet: detox has no 'detox.converters' "
            f"entry-point group (issue 12, item 3); the child said: {record['error']}"
        )
    assert (record["action"], record["reason"], record["error"]) == ("replace", "", None), json.dumps(record)
    assert record["output_type"] == "image/png" and record["output_filename"] == "scan.png"
    assert record["removed"] == {"comment": 1}
    parsed = email.message_from_bytes(out.read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    [png] = [p for p in parsed.iter_attachments() if p.get_content_type() == "image/png"]
    image = Image.open(io.BytesIO(png.get_content()))
    assert (image.mode, image.size) == ("L", (4, 2))
    assert image.tobytes() == PGM[-8:]
    assert "netpbm-reencoded" in parsed["X-Detox-Actions"]
