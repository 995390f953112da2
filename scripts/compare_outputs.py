#!/usr/bin/env python3
"""Compare what two checkouts of detox make of the same mails: output bytes and report JSON.

A restructure must change no behaviour. This runs the pipeline of each checkout, in that
checkout's own virtualenv, over the same inputs with the same envelope (fixed queue id and time),
writes the outputs and reports to a directory per checkout, and lists every mail whose output or
report differs:

* ``fixtures/mail/*.eml`` of the repository;
* every mail of the third-party corpus (``../shared/corpus`` or ``$DETOX_CORPUS``), read in place;
* the benchmark loads (``bench/loadgen.py`` and ``bench/throughput.py``'s Japanese HTML mails).

Usage::

    scripts/compare_outputs.py dump DIR OUT        # run checkout DIR, write OUT/<id>.eml|.json
    scripts/compare_outputs.py diff OUT_A OUT_B    # compare two dumps (exit 1 if any differs)
    scripts/compare_outputs.py REV [DIR]           # dump REV (a git worktree of it, made and removed
                                                   # here) and DIR (default: this checkout), then diff

The values that differ from run to run are normalised before comparing: MIME boundaries that the
``email`` generator draws at random. A checkout must have ``.venv/`` (``make setup``); for a
revision the script makes one with ``make setup`` inside the temporary worktree.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUEUE_ID = "0123456789ABCDEF0123"
RECEIVED_AT = "2026-12-01T09:00:00.000Z"

# Runs inside the checkout being measured, with its own interpreter: only names that every
# version of detox has are used, each with the places it has lived.
_DUMP = r"""
import dataclasses, json, os, sys, hashlib
from pathlib import Path

def _first(*paths):
    import importlib
    for mod, name in paths:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(paths)

load_config = _first(("detox.config.loader", "load_config"), ("detox.config", "load_config"))
Pipeline = _first(("detox.pipeline", "Pipeline"), ("detox.pipeline.runner", "Pipeline"))
scan_envelope = _first(("detox.dryrun", "scan_envelope"), ("detox.scan", "scan_envelope"),
                       ("detox.cli.scan", "scan_envelope"))

inputs = json.loads(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2])
config = load_config(str(Path("config/detox.toml").resolve()))
pipeline = Pipeline(config)
for ident, path, inline in inputs:
    raw = Path(path).read_bytes() if path else bytes.fromhex(inline)
    env = dataclasses.replace(scan_envelope(raw), queue_id=QUEUE_ID, received_at=RECEIVED_AT)
    name = hashlib.sha256(ident.encode()).hexdigest()[:16]
    try:
        result = pipeline.run(raw, env)
    except Exception as exc:  # a crash is a result to compare too
        (out / (name + ".json")).write_text(json.dumps({"id": ident, "crash": repr(exc)}))
        continue
    report = result.report
    to_json = getattr(report, "to_json", None)
    text = to_json() if to_json else json.dumps(report, ensure_ascii=False, indent=2)
    (out / (name + ".eml")).write_bytes(result.output)
    (out / (name + ".json")).write_text(json.dumps({"id": ident, "report": json.loads(text)},
                                                   ensure_ascii=False, indent=1))
"""


def corpus_dir() -> Path | None:
    configured = os.environ.get("DETOX_CORPUS")
    candidate = Path(configured) if configured else ROOT.parent / "shared" / "corpus"
    return candidate if (candidate / "MANIFEST.tsv").is_file() else None


def inputs() -> list[tuple[str, str, str]]:
    """(id, path, hex bytes) for every input; generated mails are carried inline."""
    found = [
        (f"fixtures/{path.name}", str(path), "")
        for path in sorted((ROOT / "fixtures" / "mail").glob("*.eml"))
    ]
    corpus = corpus_dir()
    if corpus is not None:
        for line in (corpus / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()[1:]:
            cols = line.split("\t")
            if len(cols) > 1 and cols[1] == "mail":
                found.append((f"corpus/{cols[0]}", str(corpus / cols[0]), ""))
    else:
        print(
            "compare_outputs: no corpus (../shared/corpus or $DETOX_CORPUS): fixtures and bench only",
            file=sys.stderr,
        )
    sys.path.insert(0, str(ROOT / "bench"))
    import loadgen  # bench/ is not a package: found through sys.path
    import throughput

    # Pillow dates the PDFs it writes: the bench mails are made at one fixed time instead.
    real_gmtime = time.gmtime
    time.gmtime = lambda secs=None: real_gmtime(0 if secs is None else secs)  # type: ignore[assignment]
    try:
        for kind in ("text5k", "pdf", "docx", "jpeg", "mix"):
            for seq in range(2):
                data = loadgen.KINDS[kind](seq, 5120 if kind == "text5k" else 0)
                found.append((f"bench/{kind}-{seq}", "", data.hex()))
    finally:
        time.gmtime = real_gmtime
    for i, data in enumerate(throughput.jp_templates(5120)):
        found.append((f"bench/jp-html-{i}", "", data.hex()))
    return found


def dump(checkout: Path, out: Path) -> None:
    python = checkout / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"compare_outputs: {checkout} has no .venv (run make setup there)")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(inputs(), fh)
    code = f"QUEUE_ID = {QUEUE_ID!r}\nRECEIVED_AT = {RECEIVED_AT!r}\n" + _DUMP
    env = dict(os.environ, PYTHONPATH=str(checkout), PYTHONHASHSEED="0")
    try:
        argv = [str(python), "-c", code, fh.name, str(out.resolve())]
        subprocess.run(argv, cwd=checkout, env=env, check=True)
    finally:
        os.unlink(fh.name)


_BOUNDARY = re.compile(rb"={15}\d+==(?:_\d+)?")
# Our Received header, and the Date we add when a message has none, carry the time of the run.
_NOW = re.compile(
    rb"((?:ESMTP id [0-9A-F]+[^;]*;|\nDate:)\s+)"
    rb"([A-Z][a-z]{2},\s+\d{2}\s+[A-Z][a-z]{2}\s+\d{4}\s+\d{2}:\d{2}:\d{2}\s+[+-]\d{4})"
)


def normalise(data: bytes) -> bytes:
    seen: dict[bytes, bytes] = {}

    def sub(match: re.Match[bytes]) -> bytes:
        return seen.setdefault(match.group(0), b"=BOUNDARY%d=" % len(seen))

    def now(match: re.Match[bytes]) -> bytes:  # same shape (the fold depends on it), no value
        return match.group(1) + re.sub(rb"[0-9]", b"0", re.sub(rb"[A-Za-z]", b"X", match.group(2)))

    return _NOW.sub(now, _BOUNDARY.sub(sub, data))


# A PDF detox writes gets a fresh random /ID (so that a re-sanitized copy never equals its input).
_PDF_ID = re.compile(rb"/ID\s*\[\s*<[0-9A-Fa-f]+>\s*<[0-9A-Fa-f]+>\s*\]")


def _payload(data: bytes) -> object:
    if data.startswith(b"%PDF"):
        return _PDF_ID.sub(b"/ID[]", data)
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                return [(i.filename, i.date_time, _payload(zf.read(i))) for i in zf.infolist()]
        except (zipfile.BadZipFile, OSError, ValueError):
            return data
    # The notice names the output's hash ("SHA-256 後: ..."), which follows that /ID too.
    return re.sub("後: [0-9a-f]{64}".encode(), "後: -".encode(), data)


def canonical(data: bytes) -> list[object]:
    """The message's header block (normalised) and each leaf's decoded, normalised payload."""
    data = normalise(data)
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    head = data.split(b"\r\n\r\n", 1)[0]
    leaves: list[object] = [head]
    for part in msg.walk():
        if part.is_multipart():
            continue
        body = part.get_payload(decode=True)
        leaves.append((str(part.get("Content-Type")), _payload(body if isinstance(body, bytes) else b"")))
    return leaves


def _without_hashes(value: object) -> object:
    """Output hashes follow the random PDF /ID; the outputs themselves are compared instead."""
    if isinstance(value, dict):
        return {k: _without_hashes(v) for k, v in value.items() if k not in ("output_sha256", "sha256_after")}
    if isinstance(value, list):
        return [_without_hashes(v) for v in value]
    return value


def diff(a: Path, b: Path) -> int:
    names = sorted({p.stem for p in a.glob("*.json")} | {p.stem for p in b.glob("*.json")})
    differ = 0
    for name in names:
        problems = []
        ja, jb = a / f"{name}.json", b / f"{name}.json"
        if not ja.exists() or not jb.exists():
            problems.append("missing on one side")
        else:
            ra, rb = json.loads(ja.read_text()), json.loads(jb.read_text())
            ra, rb = _without_hashes(ra), _without_hashes(rb)
            if ra != rb:
                problems.append("report differs")
            ea, eb = a / f"{name}.eml", b / f"{name}.eml"
            oa = canonical(ea.read_bytes()) if ea.exists() else []
            ob = canonical(eb.read_bytes()) if eb.exists() else []
            if oa != ob:
                problems.append("output differs")
        if problems:
            differ += 1
            ident = json.loads(ja.read_text()).get("id", name) if ja.exists() else name
            print(f"DIFFERS {ident}: {', '.join(problems)} ({name})")
    print(f"compare_outputs: {len(names)} mails, {differ} differ")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("args", nargs="+")
    ns = ap.parse_args()
    cmd, *rest = ns.args
    if cmd == "dump" and len(rest) == 2:
        dump(Path(rest[0]).resolve(), Path(rest[1]))
        return 0
    if cmd == "diff" and len(rest) == 2:
        return diff(Path(rest[0]), Path(rest[1]))
    if cmd in ("dump", "diff") or len(rest) > 1:
        ap.error("see the usage above")
    rev, head = cmd, Path(rest[0]).resolve() if rest else ROOT
    work = Path(tempfile.mkdtemp(prefix="detox-compare-"))
    tree = work / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True)
    try:
        subprocess.run(["make", "-C", str(tree), "setup"], check=True, stdout=subprocess.DEVNULL)
        dump(tree, work / "a")
        dump(head, work / "b")
        rc = diff(work / "a", work / "b")
        print(f"compare_outputs: dumps kept in {work}/a and {work}/b")
        return rc
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
