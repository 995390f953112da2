"""Bounded-time fuzzing of the parser and body converters (tests/fuzz/target.py), hypothesis-driven.

Inputs are the fixture mails (fixtures/mail/*.eml) and a few converter seeds (RTF, HTML, enriched),
mutated: bytes flipped, inserted, deleted and duplicated, chunks of other seeds spliced in, MIME and
charset tokens planted (boundaries, ``=?``, ``ESC $ B``, ``{\\rtf``, ``<script``), plus raw random bytes.
Batches of examples run until ``FUZZ_SECONDS`` (default 30) have passed; every batch has its own seed, so
the run explores and is still reproducible from the printed seed. A finding is shrunk by hypothesis and
printed with the bytes to put in a fixture.

    make fuzz FUZZ_SECONDS=300                       # longer, the same test
    FUZZ_SEED=7 .venv/bin/python -m pytest tests/fuzz -m fuzz   # another sequence of batches
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from target import one_input

REPO = Path(__file__).resolve().parents[2]
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "30"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20251125"))
BATCH = 60

CONVERTER_SEEDS = (
    (
        b"{\\rtf1\\ansi\\ansicpg932{\\fonttbl{\\f0\\fnil\\fcharset128 \\'82\\'6c\\'82\\'72;}}"
        b"{\\*\\generator x;}\\f0 \\'93\\'fa\\'96\\'7b\\u-25895?{\\field{\\*\\fldinst HYPERLINK \"http://a\"}"
        b"{\\fldrslt link}}\\par{\\object{\\*\\objdata 0102}}\\bin3 abc}"
    ),
    "<html><head><meta charset=utf-8><style>p{}</style></head><body><table><tr><td>①㈱</td>"
    "<td><a href='javascript:x'>髙</a></td></tr></table><ul><li>a<ol><li>b</ol></ul><pre> x </pre>"
    "<script>1</script><img alt=画像 src=x><blockquote>q</blockquote></body></html>".encode(),
    b"<bold>Hello</bold><<nl><param>x</param>\n\n<nl>world</nl>",
    b"Content-Type: text/plain; charset=ISO-2022-JP\r\n\r\n\x1b$B$3$s$K$A$O\x1b(B\r\n",
)
TOKENS = (
    b"\r\n",
    b"\r\n\r\n",
    b"--",
    b'Content-Type: multipart/mixed; boundary="b"\r\n',
    b"\r\n--b\r\n",
    b"\r\n--b--\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Content-Type: text/html; charset=shift_jis\r\n",
    b"Content-Disposition: attachment; filename*0*=utf-8''%E3%81; filename*1*=%82\r\n",
    b"=?ISO-2022-JP?B?GyRCJEIbKEI=?=",
    b"=?utf-8?q?=E3=81=82?=",
    b"\x1b$B",
    b"\x1b(B",
    b"\x1b(I",
    b"{\\rtf1",
    b"\\'82",
    b"\\u-25895?",
    b"<script>",
    b"<table><tr><td>",
    b"&#x1F600;",
    b"\x00",
    b"\xff\xfe",
    b"=\r\n",
    b"hxxp://",
    b"https://evil.example/",
)


def _seeds() -> list[bytes]:
    mails = sorted((REPO / "fixtures" / "mail").glob("*.eml"))
    return [p.read_bytes() for p in mails] + list(CONVERTER_SEEDS)


SEEDS = _seeds()


@st.composite
def fuzz_inputs(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup", "splice", "token", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 256))]
        elif op == "dup":
            chunk = data[pos : pos + draw(st.integers(1, 512))]
            data[pos:pos] = chunk * draw(st.integers(1, 20))
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            start = draw(st.integers(0, len(other)))
            data[pos:pos] = other[start : start + draw(st.integers(1, 2048))]
        elif op == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def _check(data: bytes) -> None:
    one_input(data)


@pytest.mark.fuzz
@pytest.mark.slow
@pytest.mark.timeout(FUZZ_SECONDS + 300, method="thread")
def test_fuzz_parser_and_converters() -> None:
    began = time.monotonic()
    batches = 0
    while time.monotonic() - began < FUZZ_SECONDS:
        batch_seed = FUZZ_SEED + batches
        run = seed(batch_seed)(
            settings(
                max_examples=BATCH,
                database=None,
                deadline=None,
                derandomize=False,
                print_blob=True,
                suppress_health_check=list(HealthCheck),
            )(given(fuzz_inputs())(_check))
        )
        try:
            run()
        except Exception as exc:
            raise AssertionError(f"fuzz finding in batch seed {batch_seed} (FUZZ_SEED={FUZZ_SEED})") from exc
        batches += 1
    print(f"\nfuzz: {batches} batches x {BATCH} inputs in {time.monotonic() - began:.0f}s (seed {FUZZ_SEED})")
