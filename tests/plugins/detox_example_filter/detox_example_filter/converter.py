"""The sandboxed half: parse a Netpbm image (hostile bytes) and write a new PNG of its pixels.

It runs inside detox's sandbox (bubblewrap: no network, read-only system, its own /tmp, limits on
memory, CPU time and output), started by ``ctx.sandbox.run("example_netpbm", data, args, limits)``.
It imports only the standard library and detox's answer framing, so the child starts fast and a bug
in a decoder library cannot be reached. It trusts nothing it reads: every number is bounded before
it is used, and what is not understood raises (the filter's part is then held as filter-error).

Formats: PGM and PPM, binary (P5, P6) and plain (P2, P3), maxval 1..65535 (scaled to 8 bits). The
answer is detox's ``DXR1`` framing: a JSON header (``status``, ``content_type``, ``width``,
``height``, ``removed``) and the PNG; an image over ``max_pixels`` is answered
``{"status": "held", "reason": "limit-exceeded"}`` with no bytes.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

from detox.sandbox.contract import pack_result

MAX_SIDE = 65_535
_TOKEN = re.compile(rb"\s*(?:#[^\n\r]*[\r\n]\s*)*")  # whitespace and comments between header fields
_CHANNELS = {b"P2": 1, b"P5": 1, b"P3": 3, b"P6": 3}


class TooLarge(Exception):
    """Over max_pixels: answered as held, not raised."""


def main(data: bytes, args: dict[str, Any]) -> bytes:
    max_pixels = args.get("max_pixels")
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels <= 0:
        raise ValueError("bad argument max_pixels")
    try:
        width, height, channels, pixels, comments, trailing = parse(data, max_pixels)
    except TooLarge as exc:
        return pack_result({"status": "held", "reason": "limit-exceeded", "detail": str(exc)[:200]})
    png = encode_png(width, height, channels, pixels)
    removed = {"comment": comments, "trailing-data": 1 if trailing else 0}
    header = {"status": "ok", "content_type": "image/png", "width": width, "height": height}
    return pack_result({**header, "removed": removed}, png)


def parse(data: bytes, max_pixels: int) -> tuple[int, int, int, bytes, int, bool]:
    """(width, height, channels, 8-bit samples row by row, comments seen, trailing bytes?)."""
    magic = data[:2]
    if magic not in _CHANNELS:
        raise ValueError("not a PGM or PPM file")
    channels = _CHANNELS[magic]
    pos, fields, comments = 2, [], 0
    for _ in range(3):
        skipped = _TOKEN.match(data, pos)
        assert skipped is not None  # the pattern matches the empty string
        comments += data.count(b"#", pos, skipped.end())
        pos = skipped.end()
        digits = re.compile(rb"[0-9]{1,6}").match(data, pos)
        if digits is None:
            raise ValueError("malformed header")
        fields.append(int(digits.group()))
        pos = digits.end()
    width, height, maxval = fields
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and 0 < maxval <= 65_535):
        raise ValueError("dimensions or maxval out of range")
    if width * height > max_pixels:
        raise TooLarge(f"{width}x{height} is more than {max_pixels} pixels")
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        if pos >= len(data) or data[pos : pos + 1] not in (b" ", b"\t", b"\n", b"\r"):
            raise ValueError("no whitespace after the header")
        pos += 1
        size = 2 if maxval > 255 else 1
        raster = data[pos : pos + count * size]
        if len(raster) != count * size:
            raise ValueError("raster shorter than the header says")
        samples: list[int] | bytes = list(struct.unpack(f">{count}H", raster)) if size == 2 else raster
        trailing = len(data) > pos + count * size
    else:
        words = data[pos:].split()
        if len(words) < count or not all(w.isdigit() for w in words[:count]):
            raise ValueError("plain raster shorter than the header says, or not numbers")
        samples = [int(w) for w in words[:count]]
        trailing = len(words) > count
    if maxval == 255 and isinstance(samples, bytes):
        return width, height, channels, samples, comments, trailing
    if any(s > maxval for s in samples):
        raise ValueError("a sample is over maxval")
    scaled = bytes((s * 255 + maxval // 2) // maxval for s in samples)
    return width, height, channels, scaled, comments, trailing


def encode_png(width: int, height: int, channels: int, pixels: bytes) -> bytes:
    """A new PNG of the pixels: IHDR, one IDAT, IEND; nothing of the source but the samples."""
    stride = width * channels
    rows = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    colour = 0 if channels == 1 else 2

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    idat = zlib.compress(rows, 6)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
