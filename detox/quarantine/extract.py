"""Taking a held part's bytes out of the original: found by the hash the index recorded, in the MIME
tree (also inside transfer-encoded message/rfc822, as the pipeline reads it) and in zip and tar
archives, so the bytes handed to an admin are proven to be the very bytes the record describes.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from collections.abc import Iterator
from email.message import Message

from detox.pipeline.parse import decode_encapsulated, parse_message

_MAX_MEMBER_BYTES = 512 * 1024 * 1024


def _nodes(msg: Message, depth: int = 0) -> Iterator[Message]:
    """Every node of the tree, also inside transfer-encoded message/rfc822 (as the pipeline reads it)."""
    if depth > 200:
        return
    yield msg
    payload = msg.get_payload()
    if isinstance(payload, list):
        for child in payload:
            if not isinstance(child, Message):
                continue
            if msg.get_content_type() == "message/rfc822":
                cte = str(msg.get("Content-Transfer-Encoding", "")).strip().lower()
                if cte in ("base64", "quoted-printable"):
                    try:
                        child = decode_encapsulated(child, cte)
                    except Exception:  # noqa: BLE001, S112 - undecodable: its raw form is searched instead
                        continue
            yield from _nodes(child, depth + 1)


def _candidates(node: Message) -> Iterator[tuple[bytes, bool]]:
    """The byte forms a part record may have hashed: (data, is_whole_subtree)."""
    if not node.is_multipart():
        try:
            decoded = node.get_payload(decode=True)
        except Exception:  # noqa: BLE001 - a broken payload: only its serialised form can match
            decoded = None
        if isinstance(decoded, bytes):
            yield decoded, False
    try:
        whole = node.as_bytes()
    except Exception:  # noqa: BLE001 - cannot be serialised: nothing to offer
        return
    yield whole, True


def find_bytes(raw: bytes, sha256: str) -> tuple[bytes, bool] | None:
    # Matching by hash, not by re-walking the pipeline's numbering: the bytes found are then
    # proven to be the very bytes the record describes.
    for node in _nodes(parse_message(raw)):
        for data, whole in _candidates(node):
            if hashlib.sha256(data).hexdigest() == sha256:
                return data, whole
    return None


def archive_entries(data: bytes) -> Iterator[bytes]:
    """Regular members of a zip or tar archive, size-capped (the members of a held archive)."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if not info.is_dir() and info.file_size <= _MAX_MEMBER_BYTES:
                    with zf.open(info) as fh:
                        yield fh.read(_MAX_MEMBER_BYTES + 1)
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for member in tf:
                if member.isfile() and member.size <= _MAX_MEMBER_BYTES:
                    extracted = tf.extractfile(member)
                    if extracted is not None:
                        yield extracted.read(_MAX_MEMBER_BYTES + 1)
    except (tarfile.TarError, EOFError, OSError):
        return
