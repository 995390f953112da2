"""Hypothesis strategies for whole mails: random MIME trees, rendered to bytes by hand.

The renderer writes every byte itself (not with the stdlib's generator) so the trees can carry what real
Japanese mail carries and the stdlib would refuse to write: ISO-2022-JP with Microsoft characters
(①㈱髙 through the ``iso-2022-jp-ms`` codec detox registers), CP932, EUC-JP, UTF-8, missing and wrong
charset labels, base64 / quoted-printable / 8bit / 7bit, RFC 2047 and RFC 2231 file names (with
continuations, in several charsets), raw 8-bit names, random attachment bytes and types, header garbage.

``mails()`` draws a :class:`GeneratedMail`: the bytes, and for every leaf the part id detox will give it
(the runner's numbering: a multipart's children ``1``, ``2`` …, nested ``2.1`` …, a forwarded message's
parts under its own id) with the Japanese words its text carries, so a test can check that the words of
each text part that became text are in the output. ``hostile_mails()`` then breaks such a mail (cuts,
flipped bytes, garbage Content-* headers, lost boundaries, NULs, bad base64): only the robustness
properties hold for those.
"""

from __future__ import annotations

import base64
import io
import quopri
from dataclasses import dataclass, field
from urllib.parse import quote

from hypothesis import strategies as st

import detox.text.charset  # noqa: F401 - registers the iso-2022-jp-ms codec
from detox.text.charset import ISO2022JP_MS

# -- words ------------------------------------------------------------------------------------------

# JIS X 0208 only: every charset here can carry them (EUC-JP included).
PLAIN_WORDS = (
    "市民課", "住民票", "申請書", "見積書", "会議資料", "防災訓練", "道路工事", "説明会", "予算要求",
    "情報政策課", "契約課", "納品書", "請求書", "お知らせ", "ご案内", "提出期限", "本庁舎", "担当者",
    "市報", "税務課", "子育て支援", "保育園", "図書館", "水道料金", "ごみ収集", "観光協会", "議事録",
    "入札", "打合せ", "資料送付", "アンケート", "システム", "ネットワーク", "メンテナンス", "サーバー",
    "ファイル", "データ", "ソフトウェア", "年度末", "窓口", "受付番号", "健康診断", "選挙管理",
)  # fmt: skip
# CP932 / ISO-2022-JP (CP50221) / UTF-8: the NEC and IBM extensions Outlook writes.
MS_WORDS = ("①日時", "②場所", "㈱髙﨑商事", "髙橋", "﨑山", "德永", "№付き", "㈲山田", "ⅰⅱⅲ", "纊德")
UTF8_WORDS = ("絵文字😀", "𠮷野家", "🏢本庁舎")
OPENING = "いつもお世話になっております。"
CLOSING = "よろしくお願いいたします。"

# charset (codec) -> the label a correct sender writes, and the words the codec can carry
CHARSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    ISO2022JP_MS: ("ISO-2022-JP", PLAIN_WORDS + MS_WORDS),
    "cp932": ("Shift_JIS", PLAIN_WORDS + MS_WORDS),
    "euc-jp": ("EUC-JP", PLAIN_WORDS),
    "utf-8": ("UTF-8", PLAIN_WORDS + MS_WORDS + UTF8_WORDS),
}
# Labels seen on mail that is really in another charset (the fixtures' mislabellings and a few more).
WRONG_LABELS = ("iso-8859-1", "us-ascii", "ISO-2022-JP", "utf-8", "windows-1252", "x-unknown", "")

ASCII_NAMES = ("report", "data", "scan", "memo", "invoice", "a", "file with spaces", "x" * 60)
JP_NAMES = ("会議資料①", "見積書（髙﨑）", "令和７年度_予算要求書_最終版①㈱", "議事録", "名簿", "ｶﾀｶﾅ名")
# A text attachment keeps a name that says text (a ".ics" name would send it to the calendar filter).
TEXT_EXTENSIONS = ("txt", "csv", "dat", "log", "")
BROKEN_WORDS = (
    "=?ISO-2022-JP?B?GyRCJUYlOSVIGyhC",  # no closing ?=
    "=?utf-8?Q?=E3=81?=",  # a cut character
    "=?x?B?@@?=",
    "=?UTF-8?B?44GC?==?UTF-8?B?44GE?=",
    "=?unknown-8bit?Q?a?=",
)
JUNK_CONTENT_TYPES = (
    b"multipart/mixed",
    b"multipart/alternative; boundary=",
    b"text/html; charset=",
    b'multipart/mixed; boundary=""',
    b"message/rfc822",
    b"x/\xff\xfe",
    b"text/plain; charset*=UTF-8''%FF%FE",
    b"multipart/encrypted",
    b"text/plain; name*0*=utf-8''%E3; name*2=x",
)
EXTENSIONS = ("txt", "csv", "bin", "dat", "pdf", "png", "jpg", "docx", "xls", "zip", "exe", "ics", "html", "")


# -- the model --------------------------------------------------------------------------------------


@dataclass
class Leaf:
    part_id: str
    declared_type: str
    words: tuple[str, ...] = ()  # Japanese words a text part carries (empty for binary parts)
    textual: bool = False  # a text part detox decodes: plain/html body, text/plain/csv/html attachment
    filename: str | None = None


@dataclass
class GeneratedMail:
    raw: bytes
    leaves: list[Leaf] = field(default_factory=list)
    description: list[str] = field(default_factory=list)
    subject: str | None = None  # the decoded Subject of the outer message

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        return f"GeneratedMail({len(self.raw)} bytes: {'; '.join(self.description)})\n{self.raw[:4000]!r}"


# -- rendering helpers ------------------------------------------------------------------------------

CRLF = b"\r\n"


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _b64(data: bytes) -> bytes:
    return _crlf(base64.encodebytes(data))


def _qp(data: bytes) -> bytes:
    return _crlf(quopri.encodestring(data))


def encoded_word(text: str, codec: str, label: str, mode: str) -> str:
    """RFC 2047 encoded words, several, cut every 8 characters (Outlook cuts inside characters too)."""
    words = []
    for i in range(0, len(text), 8):
        raw = text[i : i + 8].encode(codec)
        if mode == "B":
            words.append(f"=?{label}?B?{base64.b64encode(raw).decode('ascii')}?=")
        else:
            q = "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else f"={b:02X}" for b in raw)
            words.append(f"=?{label}?Q?{q}?=")
    return "\r\n ".join(words)


def _roundtrip(text: str, codec: str) -> str:
    """What a codec can carry of ``text``: ISO-2022-JP (CP50220) writes half-width katakana full-width."""
    return text.encode(codec).decode(codec)


@st.composite
def filename_params(
    draw: st.DrawFn, kind: str, extensions: tuple[str, ...] = EXTENSIONS
) -> tuple[bytes, str | None]:
    """(Content-Type/Content-Disposition parameter bytes, the name detox should decode) for a name."""
    style = draw(st.sampled_from(["none", "ascii", "rfc2231", "rfc2231-cont", "rfc2047", "raw8bit"]))
    if style == "none":
        return b"", None
    stem = draw(st.sampled_from(ASCII_NAMES if style == "ascii" else JP_NAMES))
    ext = draw(st.sampled_from(extensions))
    name = f"{stem}.{ext}" if ext else stem
    param = "name" if kind == "content-type" else "filename"
    if style == "ascii":
        return f'; {param}="{name}"'.encode(), name
    if style == "rfc2231":
        codec, label = draw(st.sampled_from([("utf-8", "UTF-8"), (ISO2022JP_MS, "ISO-2022-JP")]))
        return f"; {param}*={label}''{quote(name.encode(codec), safe='')}".encode(), _roundtrip(name, codec)
    if style == "rfc2231-cont":
        encoded = quote(name.encode("utf-8"), safe="")
        # cut every 10 characters of the percent-encoding, possibly inside a %XX or a UTF-8 sequence
        pieces = [encoded[i : i + 10] for i in range(0, len(encoded), 10)]
        out = "".join(
            f";\r\n\t{param}*{n}*={'UTF-8' + chr(39) * 2 if n == 0 else ''}{piece}"
            for n, piece in enumerate(pieces)
        )
        return out.encode(), name
    if style == "rfc2047":
        codec, label = draw(
            st.sampled_from([("utf-8", "UTF-8"), (ISO2022JP_MS, "ISO-2022-JP"), ("cp932", "Shift_JIS")])
        )
        mode = draw(st.sampled_from(["B", "Q"]))
        return f'; {param}="{encoded_word(name, codec, label, mode)}"'.encode(), _roundtrip(name, codec)
    codec = draw(st.sampled_from(["utf-8", "cp932"]))
    return f'; {param}="'.encode() + name.encode(codec) + b'"', name


@st.composite
def japanese_text(draw: st.DrawFn, codec: str) -> tuple[list[str], tuple[str, ...]]:
    """Lines of Japanese prose (an opening, sentences of random words, a closing) and its words."""
    vocabulary = CHARSETS[codec][1]
    words = tuple(draw(st.lists(st.sampled_from(vocabulary), min_size=2, max_size=8)))
    lines = [OPENING]
    for i in range(0, len(words), 3):
        lines.append("、".join(words[i : i + 3]) + "について。")
    lines.append(CLOSING)
    return lines, words


@st.composite
def text_leaf(
    draw: st.DrawFn, part_id: str, *, attachment: bool, html: bool | None = None
) -> tuple[bytes, Leaf]:
    """A text/plain or text/html part (body, or a text attachment) in a random charset and encoding."""
    codec = draw(st.sampled_from(list(CHARSETS)))
    right_label = CHARSETS[codec][0]
    lines, words = draw(japanese_text(codec))
    if html is None:
        html = draw(st.booleans())
    subtype = "html" if html else ("csv" if attachment and draw(st.integers(0, 4)) == 0 else "plain")
    label_kind = draw(st.sampled_from(["right", "right", "right", "missing", "wrong"]))
    label = right_label if label_kind == "right" else ("" if label_kind == "missing" else None)
    if label is None:
        label = draw(st.sampled_from([w for w in WRONG_LABELS if w.lower() != right_label.lower()]))
    if html:
        meta = draw(st.sampled_from(["none", "right", "wrong"]))
        head = ""
        if meta == "right":
            head = f'<meta charset="{right_label}">'
        elif meta == "wrong":
            head = '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">'
        items = "".join(f"<li>{w}</li>" for w in words[:2])
        cells = "".join(f"<td>{w}</td>" for w in words[2:4])
        body = (
            f"<html><head>{head}<title>件名</title><style>p {{ color: red }}</style></head><body>\n"
            f"<p>{lines[0]}</p>\n<ul>{items}</ul>\n<table><tr>{cells}</tr></table>\n"
            + "".join(f"<div>{line}</div>\n" for line in lines[1:])
            + "<script>alert('スクリプト')</script><!-- コメント -->\n</body></html>\n"
        )
        text = body
    else:
        text = "\n".join(lines) + "\n"
    data = text.encode(codec).replace(b"\n", b"\r\n")
    if codec == ISO2022JP_MS:
        cte = draw(st.sampled_from(["7bit", "7bit", "base64", "none"]))
    else:
        cte = draw(st.sampled_from(["8bit", "base64", "quoted-printable", "none"]))
    payload = {"base64": _b64, "quoted-printable": _qp}.get(cte, lambda d: d)(data)
    ctype = f"text/{subtype}"
    header = f"Content-Type: {ctype}".encode()
    if label:
        header += f'; charset="{label}"'.encode()
    filename = None
    disposition = b""
    if attachment:
        name_param, filename = draw(filename_params("content-disposition", TEXT_EXTENSIONS))
        if filename is None:
            filename = "memo.txt"
            name_param = b'; filename="memo.txt"'
        disposition = b"Content-Disposition: attachment" + name_param + CRLF
    elif draw(st.integers(0, 5)) == 0:
        disposition = b"Content-Disposition: inline" + CRLF
    headers = header + CRLF + disposition
    if cte != "none":
        headers += f"Content-Transfer-Encoding: {cte}".encode() + CRLF
    leaf = Leaf(part_id, ctype, words, textual=True, filename=filename)
    return headers + CRLF + payload, leaf


def _png(seed: int) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (8 + seed % 5, 6), (seed * 40 % 256, 80, 160))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


_MINI_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R/OpenAction<</S/JavaScript/JS(app.alert(1))>>>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 100 100]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


@st.composite
def binary_leaf(draw: st.DrawFn, part_id: str) -> tuple[bytes, Leaf]:
    """An attachment that is no text: random bytes under a random type, or (rarely) a real image/PDF."""
    kind = draw(st.sampled_from(["random"] * 9 + ["exe", "png", "pdf"]))
    if kind == "png":
        data, ctype = (
            _png(draw(st.integers(0, 20))),
            draw(st.sampled_from(["image/png", "application/octet-stream"])),
        )
    elif kind == "pdf":
        data, ctype = _MINI_PDF, "application/pdf"
    elif kind == "exe":
        data, ctype = (
            b"MZ\x90\x00" + b"\x00" * 60 + b"PE\x00\x00" + draw(st.binary(max_size=64)),
            "application/x-msdownload",
        )
    else:
        data = draw(st.binary(max_size=600))
        ctype = draw(
            st.sampled_from(
                ["application/octet-stream", "application/x-foo", "application/vnd.ms-excel", "image/gif",
                 "application/zip", "video/mp4", "application/x-unknown-junk"]
            )
        )  # fmt: skip
    name_param, filename = draw(
        filename_params(draw(st.sampled_from(["content-type", "content-disposition"])))
    )
    headers = f"Content-Type: {ctype}".encode()
    disposition = b"Content-Disposition: attachment"
    if name_param and b"filename" in name_param:
        disposition += name_param
    elif name_param:
        headers += name_param
    cte = draw(st.sampled_from(["base64", "base64", "base64", "quoted-printable"]))
    body = _b64(data) if cte == "base64" else _qp(data)
    raw = (
        headers
        + CRLF
        + disposition
        + CRLF
        + f"Content-Transfer-Encoding: {cte}".encode()
        + CRLF
        + CRLF
        + body
    )
    return raw, Leaf(part_id, ctype, filename=filename)


# -- trees ------------------------------------------------------------------------------------------


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def boundary(self) -> str:
        self.n += 1
        return f"=_detox_prop_{self.n}_b"


def _join(prefix: str, index: int) -> str:
    return f"{prefix}.{index}" if prefix else str(index)


@st.composite
def entity(
    draw: st.DrawFn, part_id: str, depth: int, counter: _Counter, leaves: list[Leaf], desc: list[str],
    *, top: bool,
) -> bytes:  # fmt: skip
    """One MIME entity (Content-* headers, blank line, body), numbered as the runner numbers it.

    ``top``: the entity is a message's body (the whole mail, or a forwarded one) and ``part_id`` is the
    message's prefix: a single part is ``prefix.1``, a multipart's children ``prefix.N``, an encapsulated
    message's parts ``prefix.1.N``. Otherwise the entity is a multipart's child at ``part_id``: a leaf is
    ``part_id``, a multipart's children ``part_id.N``, a forwarded message's parts ``part_id.N``.
    """
    choices = ["text-body", "text-body", "text-attachment", "binary"]
    if depth < 3:
        choices += ["mixed", "alternative", "related", "rfc822"]
    if depth == 0:  # most real mail is a multipart at the top: bias towards trees with several parts
        choices = [
            "mixed",
            "mixed",
            "mixed",
            "alternative",
            "related",
            "rfc822",
            "text-body",
            "text-attachment",
        ]
    kind = draw(st.sampled_from(choices))
    own = _join(part_id, 1) if top else part_id  # where a leaf or an encapsulated message sits
    desc.append(f"{own}:{kind}")
    if kind == "text-body":
        raw, leaf = draw(text_leaf(own, attachment=False))
    elif kind == "text-attachment":
        raw, leaf = draw(text_leaf(own, attachment=True))
    elif kind == "binary":
        raw, leaf = draw(binary_leaf(own))
    elif kind == "rfc822":
        inner = draw(message(own, depth + 1, counter, leaves, desc))
        disposition = draw(st.sampled_from([b"", b'Content-Disposition: attachment; filename="fwd.eml"\r\n']))
        return b"Content-Type: message/rfc822\r\n" + disposition + CRLF + inner
    else:
        boundary = counter.boundary()
        children = []
        for i in range(1, draw(st.integers(2 if depth == 0 else 1, 5 if depth == 0 else 3)) + 1):
            sub_id = _join(part_id, i)
            if kind == "alternative":
                desc.append(f"{sub_id}:alt-{'html' if i > 1 else 'plain'}")
                child, leaf = draw(text_leaf(sub_id, attachment=False, html=i > 1))
                leaves.append(leaf)
                children.append(child)
            else:
                children.append(draw(entity(sub_id, depth + 1, counter, leaves, desc, top=False)))
        body = b"This is a multi-part message in MIME format.\r\n"
        for child in children:
            body += f"\r\n--{boundary}\r\n".encode() + child
        body += f"\r\n--{boundary}--\r\n".encode()
        return f'Content-Type: multipart/{kind};\r\n\tboundary="{boundary}"\r\n\r\n'.encode() + body
    leaves.append(leaf)
    return raw


@st.composite
def header_garbage(draw: st.DrawFn) -> bytes:
    """Non-structural header noise: broken encoded words, raw 8-bit, long and folded values."""
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["broken-ew", "raw8bit", "long", "folded", "random", "empty"]))
        if kind == "broken-ew":
            value = draw(st.sampled_from(BROKEN_WORDS))
            lines.append(b"X-Broken: " + value.encode())
        elif kind == "raw8bit":
            codec = draw(st.sampled_from(["utf-8", "cp932", "euc-jp"]))
            lines.append(b"X-Raw: " + draw(st.sampled_from(PLAIN_WORDS)).encode(codec))
        elif kind == "long":
            lines.append(b"X-Long: " + b"a" * draw(st.integers(900, 3000)))
        elif kind == "folded":
            lines.append(b"X-Folded: one\r\n two\r\n\tthree")
        elif kind == "random":
            raw = draw(st.binary(max_size=80)).replace(b"\r", b"").replace(b"\n", b"")
            lines.append(b"X-Random: " + raw)
        else:
            lines.append(b"X-Empty:")
    return b"".join(line + CRLF for line in lines)


@st.composite
def message(
    draw: st.DrawFn, prefix: str, depth: int, counter: _Counter, leaves: list[Leaf], desc: list[str]
) -> bytes:
    """A whole message: top-level headers, then its body entity, numbered under ``prefix``."""
    subject_codec = draw(st.sampled_from([ISO2022JP_MS, "utf-8", "cp932"]))
    label = CHARSETS[subject_codec][0]
    subject = "".join(draw(st.lists(st.sampled_from(CHARSETS[subject_codec][1]), min_size=1, max_size=4)))
    if not prefix:  # the outer message: mails() takes it back out of the description
        desc.append(f"subject:{subject}")
    headers = [
        "From: " + encoded_word("髙﨑 德太郎", ISO2022JP_MS, "ISO-2022-JP", "B") + " <sender@example.jp>",
        "To: taro@city.example.lg.jp",
        "Subject: " + encoded_word(subject, subject_codec, label, draw(st.sampled_from(["B", "Q"]))),
        "Date: Tue, 25 Nov 2025 10:11:00 +0900",
        f"Message-ID: <prop.{counter.n}.{depth}@example.jp>",
        "MIME-Version: 1.0",
    ]
    head = "".join(h + "\r\n" for h in headers).encode("ascii") + draw(header_garbage())
    return head + draw(entity(prefix, depth, counter, leaves, desc, top=True))


@st.composite
def mails(draw: st.DrawFn) -> GeneratedMail:
    counter = _Counter()
    leaves: list[Leaf] = []
    desc: list[str] = []
    raw = draw(message("", 0, counter, leaves, desc))
    subject = desc.pop(0).removeprefix("subject:")
    return GeneratedMail(raw, leaves, desc, subject)


# -- breaking them -----------------------------------------------------------------------------------


@st.composite
def hostile_mails(draw: st.DrawFn) -> GeneratedMail:
    """A generated mail, then broken in one to three ways; the leaf list no longer applies."""
    mail = draw(mails())
    raw = mail.raw
    done = []
    for _ in range(draw(st.integers(1, 3))):
        how = draw(
            st.sampled_from(
                ["cut", "flip", "nul", "ctype", "boundary", "bad-b64", "cte", "deep", "bare-lf", "insert"]
            )
        )
        done.append(how)
        if how == "cut" and raw:
            raw = raw[: draw(st.integers(0, len(raw)))]
        elif how == "flip" and raw:
            data = bytearray(raw)
            for _ in range(draw(st.integers(1, 20))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            raw = bytes(data)
        elif how == "nul":
            pos = draw(st.integers(0, len(raw)))
            raw = raw[:pos] + b"\x00" * draw(st.integers(1, 50)) + raw[pos:]
        elif how == "ctype":
            junk = draw(st.sampled_from(JUNK_CONTENT_TYPES))
            raw = raw.replace(b"Content-Type: ", b"Content-Type: " + junk + b"; x=", draw(st.integers(1, 3)))
        elif how == "boundary":
            raw = raw.replace(b"--=_detox_prop_1_b", b"--=_lost", draw(st.integers(1, 3)))
        elif how == "bad-b64":
            raw = raw.replace(b"base64\r\n\r\n", b"base64\r\n\r\n!!@@##$$%%==\r\nQUJD=RE\r\n", 2)
        elif how == "cte":
            raw = raw.replace(b"Content-Transfer-Encoding: ", b"Content-Transfer-Encoding: x-uue", 1)
        elif how == "deep":
            n = draw(st.integers(20, 120))
            wrap = b"".join(
                f'Content-Type: multipart/mixed; boundary="d{i}"\r\n\r\n--d{i}\r\n'.encode() for i in range(n)
            )
            raw = (
                raw.split(b"\r\n\r\n", 1)[0]
                + b"\r\n"
                + wrap
                + "Content-Type: text/plain\r\n\r\n奥\r\n".encode()
            )
        elif how == "bare-lf":
            raw = raw.replace(b"\r\n", b"\n")
        elif how == "insert":
            pos = draw(st.integers(0, len(raw)))
            raw = raw[:pos] + draw(st.binary(max_size=200)) + raw[pos:]
    return GeneratedMail(raw, [], [*mail.description, f"broken: {', '.join(done)}"])
