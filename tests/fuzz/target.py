"""The fuzz target: raw bytes into the MIME parser, the header and file-name decoders, the charset decoder,
the body converters (HTML, RTF, text/enriched, text/richtext, URL defanging) and the whole pipeline.

``one_input(data)`` raises on a finding:

* any exception out of a function that promises never to raise (decode_body, decode_header_value,
  decode_filename, html_to_text, rtf_to_text, enriched/richtext, defang_urls, Pipeline.run);
* a converter that swallowed an internal error (``removed["parse-error"]`` from html_to_text or
  rtf_to_text: the mail still goes out, but with the text of a fallback, and the bug stays hidden);
* a decoded header value with a control character or a line break, a decoded file name with a path
  separator or a control character;
* a pipeline output that is not clean (support.invariants: parses without defects, only allowed types,
  CRLF, lines <= 998 bytes, UTF-8 text without control characters);
* more than ``INPUT_DEADLINE_S`` for one input (detox's own nested SIGALRM deadline: a hang).

Run it three ways:

* in CI, for a bounded time, as a hypothesis test (tests/fuzz/test_fuzz.py; ``make fuzz FUZZ_SECONDS=60``);
* with atheris, coverage-guided, when it is installed (it is not a dependency: ``pip install atheris``
  into a scratch venv that sees .venv's packages)::

      python tests/fuzz/target.py -max_total_time=600 -timeout=60 /tmp/fuzz-corpus fixtures/mail

* on one file, to reproduce a finding: ``python tests/fuzz/target.py CRASH_FILE``.

Every crash found becomes a fixture under fixtures/mail/ and a regression test.
"""

from __future__ import annotations

import email.message
import re
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
_ATHERIS = __name__ == "__main__" and not (len(sys.argv) == 2 and Path(sys.argv[1]).is_file())
if __name__ == "__main__":  # as a script: find support/ and detox like pytest does
    sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]
if _ATHERIS:  # coverage feedback from detox and the stdlib email package only (everything is too slow)
    import atheris  # type: ignore[import-not-found]

    _instrumenting = atheris.instrument_imports(include=["detox", "email", "support"])
    _instrumenting.__enter__()

from support.invariants import output_problems  # noqa: E402

from detox.config.schema import DetoxConfig  # noqa: E402
from detox.envelope import Envelope  # noqa: E402
from detox.pipeline import Pipeline  # noqa: E402
from detox.pipeline.deadline import deadline  # noqa: E402
from detox.pipeline.parse import parse_message  # noqa: E402
from detox.text.charset import decode_body, sniff_html_charset  # noqa: E402
from detox.text.enriched import enriched_to_text, richtext_to_text  # noqa: E402
from detox.text.headers import decode_filename, decode_header_value  # noqa: E402
from detox.text.html import html_to_text  # noqa: E402
from detox.text.rtf import rtf_to_text  # noqa: E402
from detox.text.urls import defang_urls  # noqa: E402

if _ATHERIS:
    _instrumenting.__exit__(None, None, None)

INPUT_DEADLINE_S = 20.0
ENVELOPE = Envelope("019ABCDEF0123456789A", "fuzz@example.jp", ("taro@city.example.lg.jp",))
LABELS = (None, "ISO-2022-JP", "Shift_JIS", "EUC-JP", "UTF-8", "iso-8859-1", "utf-16", "x-junk")
HEADER_JUNK = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
NAME_JUNK = re.compile(r"[\x00-\x1f\x7f/\\]")
SANDBOXED = frozenset({"image", "pdf", "office", "archive"})
MAX_CONVERT = 200_000  # converters see at most this much of an input (the pipeline sees all of it)

_pipeline: Pipeline | None = None


class Finding(AssertionError):
    """One thing the target found wrong with one input."""


def pipeline() -> Pipeline:
    """The pipeline with its in-process filters only: the sandboxed converters (image, PDF, Office,
    archive) cost a process each and are not what this target is after; their parts are held."""
    global _pipeline
    if _pipeline is None:
        order = [name for name in DetoxConfig().pipeline.order if name not in SANDBOXED]
        _pipeline = Pipeline(DetoxConfig.model_validate({"pipeline": {"order": order}}))
    return _pipeline


def _check_converters(data: bytes) -> None:
    head = data[:MAX_CONVERT]
    for label in LABELS:
        decoded = decode_body(head, label, html=label is None)
        if not isinstance(decoded.text, str):
            raise Finding(f"decode_body({label}) returned {type(decoded.text)}")
    text = decode_body(head, None, html=True).text
    sniff_html_charset(head)
    converted = html_to_text(text)
    if converted.removed.get("parse-error"):
        raise Finding("html_to_text fell back after an internal error (removed: parse-error)")
    rtf = rtf_to_text(head)
    if rtf.removed.get("parse-error"):
        raise Finding("rtf_to_text fell back after an internal error (removed: parse-error)")
    enriched_to_text(text)
    richtext_to_text(text)
    defang_urls(text)
    # one header value and one parameter list, from the first line of the input
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "surrogateescape")
    value = decode_header_value(line)
    if HEADER_JUNK.search(value):
        raise Finding(f"decode_header_value left a control character: {value!r}")
    part = parse_message(b"Content-Disposition: attachment; " + head.split(b"\n", 1)[0] + b"\r\n\r\nx")
    name = decode_filename(part)
    if name is not None and (NAME_JUNK.search(name) or name in ("", ".", "..")):
        raise Finding(f"decode_filename returned an unsafe name: {name!r}")


def _check_pipeline(data: bytes) -> None:
    msg = parse_message(data)
    for node in msg.walk():  # the parser's own view: every header and payload readable
        for _key, raw in node.raw_items():
            decode_header_value(str(raw))
        if isinstance(node, email.message.Message) and not node.is_multipart():
            node.get_payload(decode=True)
    result = pipeline().run(data, ENVELOPE)
    problems = output_problems(result.output, queue_id=ENVELOPE.queue_id)
    if problems:
        raise Finding("unclean output: " + "; ".join(problems))


def one_input(data: bytes) -> None:
    with deadline(INPUT_DEADLINE_S):
        _check_converters(data)
        _check_pipeline(data)


def _atheris_main(argv: list[str]) -> None:
    """libFuzzer owns SIGALRM/ITIMER_REAL (its watchdog, and ``-timeout``); detox's deadlines use the
    same timer, so here they are switched off and ``-timeout=N`` is the per-input bound."""
    import contextlib

    import detox.pipeline.decide as decide

    def no_deadline(seconds: float) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    global deadline
    decide.deadline = deadline = no_deadline  # type: ignore[assignment]
    pipeline()  # built once, outside any input's timing
    one_input(b"From: a@example.jp\r\nSubject: warm-up\r\n\r\nx\r\n")

    def test_one(data: bytes) -> None:
        try:
            one_input(bytes(data))
        except BaseException as exc:
            sys.stderr.write(f"FINDING {type(exc).__name__}: {exc!r}\n")
            traceback.print_exc()  # libFuzzer prints only the exception's type and message
            raise

    atheris.Setup(argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    if len(sys.argv) == 2 and Path(sys.argv[1]).is_file():
        one_input(Path(sys.argv[1]).read_bytes())
        print(f"{sys.argv[1]}: no finding")
    else:
        _atheris_main(sys.argv)
