"""The third-party mail corpus (../shared/corpus, or $DETOX_CORPUS): where it is, which mails it has.

Tests in this directory take one of these arguments, parametrized here with readable ids (the mail's
path under ``mail/``, e.g. ``mime4j/testmsgs/basic-plain.msg``):

* ``corpus_mail``   — every row of MANIFEST.tsv with kind ``mail`` (531 when complete);
* ``oracle_mail``   — the mails for which the corpus carries expected decoded text (see expected.py);
* ``japanese_mail`` — the mails whose text parts, decoded with their declared charset, contain Japanese.

When the corpus is absent every test here is skipped with the reason. The files are read in place:
nothing from the corpus is ever copied into this repository.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import expected
import pytest

ENV_VAR = "DETOX_CORPUS"
# CHECKOUT/tests/corpus/conftest.py -> parents[3] = the checkout's parent -> ../shared/corpus
DEFAULT_CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"


def find_corpus() -> Path | None:
    """$DETOX_CORPUS if set, else ../shared/corpus next to the checkout; None without a MANIFEST.tsv."""
    configured = os.environ.get(ENV_VAR)
    candidate = Path(configured).expanduser() if configured else DEFAULT_CORPUS
    return candidate if (candidate / "MANIFEST.tsv").is_file() else None


CORPUS = find_corpus()
ABSENT_REASON = (
    f"third-party corpus not found: set {ENV_VAR} or provide {DEFAULT_CORPUS} (with MANIFEST.tsv); "
    "see the corpus README.md (shared/corpus/ next to the checkout)"
)


@dataclass(frozen=True)
class CorpusMail:
    """One mail of the corpus (a MANIFEST.tsv row of kind ``mail``)."""

    path: Path  # absolute
    rel: str  # as in MANIFEST.tsv: mail/<source>/...
    source_repo: str
    exercises: str
    sha256: str

    @property
    def id(self) -> str:
        return self.rel.removeprefix("mail/")

    def read(self) -> bytes:
        return self.path.read_bytes()


def manifest_rows(corpus: Path) -> Iterator[dict[str, str]]:
    with (corpus / "MANIFEST.tsv").open(encoding="utf-8", newline="") as fh:
        # Notes contain quotes: read the TSV literally.
        yield from csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)


def corpus_mails(corpus: Path) -> list[CorpusMail]:
    """Every mail listed in MANIFEST.tsv, in manifest order."""
    return [
        CorpusMail(corpus / row["path"], row["path"], row["source_repo"], row["exercises"], row["sha256"])
        for row in manifest_rows(corpus)
        if row["kind"] == "mail"
    ]


_MAILS: list[CorpusMail] | None = None


def all_mails() -> list[CorpusMail]:
    global _MAILS
    if _MAILS is None:
        _MAILS = corpus_mails(CORPUS) if CORPUS is not None else []
    return _MAILS


def _params(mails: list[CorpusMail]) -> list[object]:
    if CORPUS is None:
        return [pytest.param(None, id="corpus-absent", marks=pytest.mark.skip(reason=ABSENT_REASON))]
    return [pytest.param(mail, id=mail.id) for mail in mails]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "corpus_mail" in metafunc.fixturenames:
        metafunc.parametrize("corpus_mail", _params(all_mails()))
    if "oracle_mail" in metafunc.fixturenames:
        metafunc.parametrize("oracle_mail", _params([m for m in all_mails() if expected.has_oracle(m.path)]))
    if "japanese_mail" in metafunc.fixturenames:
        japanese = [m for m in all_mails() if expected.load_stdlib_japanese(m.path) is not None]
        metafunc.parametrize("japanese_mail", _params(japanese))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if CORPUS is None:
        pytest.skip(ABSENT_REASON)
    return CORPUS


@pytest.fixture(autouse=True)
def _skip_without_corpus() -> None:
    if CORPUS is None:
        pytest.skip(ABSENT_REASON)


# -- timing -----------------------------------------------------------------------------------------


class Timings:
    """Pipeline.run times per mail, printed at the end of the session (measured, never asserted)."""

    def __init__(self) -> None:
        self.by_label: dict[str, dict[str, float]] = {}

    @contextmanager
    def measure(self, label: str, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.by_label.setdefault(label, {})[key] = time.perf_counter() - start


TIMINGS = Timings()


@pytest.fixture(scope="session")
def pipeline_timings() -> Timings:
    return TIMINGS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for label, times in TIMINGS.by_label.items():
        if not times:
            continue
        total = sum(times.values())
        terminalreporter.write_sep("-", f"corpus: Pipeline.run timings ({label})")
        terminalreporter.write_line(
            f"{len(times)} mails, total {total:.2f}s, mean {total / len(times) * 1000:.1f}ms; slowest:"
        )
        for key, seconds in sorted(times.items(), key=lambda item: item[1], reverse=True)[:5]:
            terminalreporter.write_line(f"  {seconds:7.3f}s  {key}")
