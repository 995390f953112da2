"""A tiny SMTP sink that writes down when each benchmark message arrived (its own process).

    .venv/bin/python bench/stampsink.py --listen 127.0.0.1:PORT --out stamps.txt

aiosmtpd on uvloop; every message is accepted with 250 and dropped. When the whole DATA has been read
(``handle_DATA``), one line ``SEQ UNIX_TIME BYTES`` is appended to ``--out`` (line-buffered), where SEQ
comes from the ``Message-ID: <bench.SEQ.…@…>`` that bench/loadgen.py puts in every message: detox keeps
Message-ID (it drops unknown X- headers), the bare relay forwards the bytes unchanged. A message without
one is written with SEQ ``-1``. The latency and attachment benchmarks start it as the downstream of both
detox and the relay and read the file after each run (:func:`read_stamps`).

It stops on SIGTERM/SIGINT. Only 127.0.0.1 is meant: the benchmarks never pass anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

SEQ_RE = re.compile(rb"^Message-ID:[ \t]*<bench\.(\d+)\.", re.IGNORECASE | re.MULTILINE)


class StampHandler:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        data: bytes = envelope.original_content or envelope.content or b""
        head = data[: data.find(b"\r\n\r\n") + 2] if b"\r\n\r\n" in data else data[:65536]
        match = SEQ_RE.search(head)
        seq = int(match.group(1)) if match else -1
        self.out.write(f"{seq} {now:.6f} {len(data)}\n")
        return "250 2.0.0 OK stamped"


async def serve(listen: str, out_path: Path) -> None:
    from aiosmtpd.smtp import SMTP

    host, port = listen.rsplit(":", 1)
    with open(out_path, "a", buffering=1, encoding="ascii") as out:
        handler = StampHandler(out)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(
                handler,
                hostname="stampsink.test",
                ident="bench-stampsink",
                decode_data=False,
                data_size_limit=64 * 1024 * 1024,
            ),
            host=host,
            port=int(port),
            backlog=1024,
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()


def read_stamps(path: Path) -> list[tuple[int, float, int]]:
    """Every line written so far: (seq, arrival unix time, bytes). A half-written last line is skipped."""
    out: list[tuple[int, float, int]] = []
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            try:
                out.append((int(parts[0]), float(parts[1]), int(parts[2])))
            except ValueError:
                continue
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="HOST:PORT (127.0.0.1 only)")
    ap.add_argument("--out", required=True, help="file the stamps are appended to")
    args = ap.parse_args()
    import uvloop

    uvloop.run(serve(args.listen, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
