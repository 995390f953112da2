"""The configuration schema. Every default lives here; unknown keys are errors.

Models are frozen pydantic models with ``extra="forbid"`` so a typo in the TOML stops start-up with
an error naming the file and the key (see :mod:`detox.config.loader`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, field_validator
from pydantic_core import CoreSchema, core_schema


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnError(StrEnum):
    """What the runner does with a part when its filter raises or times out."""

    HOLD = "hold"  # remove from the mail, keep the original, name it in the notice
    DROP = "drop"  # remove from the mail and name it in the notice (original still kept)
    TEMPFAIL = "tempfail"  # leave the whole message in the spool and retry later


class StartTLS(StrEnum):
    OFF = "off"
    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class ServerConfig(Strict):
    listen: str = "127.0.0.1:2525"
    hostname: str = "detox.city.example.lg.jp"
    accepted_domains: tuple[str, ...] = ("city.example.lg.jp",)
    max_message_bytes: PositiveInt = 25 * 1024 * 1024
    max_recipients: PositiveInt = 100
    tls_cert: str = ""
    tls_key: str = ""
    require_tls: bool = False
    timeout_s: PositiveFloat = 300.0
    # Concurrent SMTP sessions, in all and from one client address; more → 421 4.7.0 at connect.
    # Behind a relay (e.g. the prefecture's security cloud) every session comes from a few
    # addresses: raise max_sessions_per_client towards max_sessions there.
    max_sessions: PositiveInt = 200
    max_sessions_per_client: PositiveInt = 50
    # SIGTERM: how long sessions in DATA, detoxifications and deliveries already under way may
    # take to finish; whatever is still running then is handed back to the spool.
    shutdown_timeout_s: PositiveFloat = 30.0

    @field_validator("accepted_domains")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one accepted domain is needed (no open relay)")
        return tuple(d.strip().lower().rstrip(".") for d in v)


DEFAULT_BOUNCE_TEXT = """\
このメールは $hostname（インターネットから届くメールを無害化して庁内へ中継するサーバ）が自動で送信しています。
お送りいただいたメールを、次の宛先にお届けできませんでした。

This is an automatic message from $hostname, the gateway that relays mail from the Internet
into our network after making it harmless. Your message could not be delivered to the
recipient(s) below.

  件名 / Subject:        $subject
  受付日時 / Received:   $received_at
  受付番号 / Queue ID:   $queue_id

$recipients

宛先に誤りがないかご確認ください。このメールには返信しないでください。
Please check the address. Do not reply to this message.
"""


class DeliveryConfig(Strict):
    deliver_to: str = "maildir:var/maildir"
    starttls: StartTLS = StartTLS.OPPORTUNISTIC
    tls_verify: bool = True  # only used with starttls = "required"
    timeout_s: PositiveFloat = 60.0
    connections: PositiveInt = 4
    retry_base_s: PositiveFloat = 30.0
    retry_max_s: PositiveFloat = 3600.0
    helo_name: str = ""
    # A recipient still not delivered this long after the message was received is given up
    # (status 4.4.7) and the sender gets a delivery status notification, if one may be sent.
    max_age_days: PositiveFloat = 5.0
    # Where DSNs go: the Internet-side MTA ("smtp://HOST:PORT") or "maildir:PATH"; "" = none are
    # sent, each one that would have been is recorded (bounce_suppressed) for the admin.
    bounce_via: str = ""
    bounce_from: str = ""  # the DSN's From: header; default MAILER-DAEMON@server.hostname
    # No DSN for a message any part of which was held for one of these reasons: its sender is
    # most likely forged, and a DSN would be backscatter (see README).
    no_bounce_reasons: tuple[str, ...] = (
        "executable",
        "encrypted-archive",
        "archive-bomb",
        "archive-member-unsafe",
    )
    bounce_text: str = DEFAULT_BOUNCE_TEXT  # the human part, string.Template (see README)


class StorageConfig(Strict):
    state_dir: str = "var"
    retention_days: PositiveInt = 90
    fsync: bool = True


class LimitsConfig(Strict):
    max_mime_depth: PositiveInt = 20
    max_mime_parts: PositiveInt = 500
    max_text_chars: PositiveInt = 2_000_000
    message_timeout_s: PositiveFloat = 120.0
    # SMTP DATA: a longer line (LF-terminated, CRLF or bare LF) → 500 5.6.0; more header fields
    # or a larger header section → 552 5.3.4. Long lines below the cap go to the pipeline.
    max_line_length: PositiveInt = 1024 * 1024
    max_header_count: PositiveInt = 1000
    max_header_bytes: PositiveInt = 1024 * 1024
    # Back-pressure: while this many accepted messages (or bytes) wait for the pipeline,
    # MAIL, RCPT and DATA get 451 4.3.2 and the sender's MTA keeps the mail.
    max_backlog_messages: PositiveInt = 1000
    max_backlog_bytes: PositiveInt = 1024 * 1024 * 1024


class FilterSettings(Strict):
    """Settings every filter accepts; filter-specific options go in ``options``."""

    enabled: bool = True
    timeout_s: PositiveFloat = 30.0
    on_error: OnError = OnError.HOLD
    options: dict[str, Any] = Field(default_factory=dict)


# One shared instance for filters without a section: the model is frozen, and building a new one
# on every lookup cost the pipeline a pydantic validation per part.
_DEFAULT_FILTER_SETTINGS: Final = FilterSettings()


class PipelineConfig(Strict):
    # Attachment filters claim by the DETECTED type, so they go first: an image declared as
    # text/html must reach the image filter, not the HTML converter.
    order: tuple[str, ...] = (
        "image",
        "pdf",
        "office",  # before archive: an OOXML file is a zip
        "archive",
        "calendar",
        "html",
        "plain",
        "rtf",
        "enriched",
        "text-attachment",
        "signature",
    )
    unhandled: Literal["hold", "drop"] = "hold"
    workers: int = Field(default=0, ge=0)  # 0 = one per CPU core
    # A message whose detoxification crashes its worker, times out or fails this many times
    # (counted in the spool, across restarts) is moved to spool/failed/ and held for the admin.
    max_attempts: PositiveInt = 5


class BodyConfig(Strict):
    output_charset: Literal["utf-8", "iso-2022-jp"] = "utf-8"
    # multipart/alternative: keep the plain part only when it carries at least this share of the
    # HTML part's text (character bigrams, URLs aside). Many senders put a stub such as
    # "HTML メールを表示できません" or a shortened summary in the plain part.
    plain_coverage: Annotated[float, Field(ge=0, le=1)] = 0.8


class UrlConfig(Strict):
    defang: bool = True
    exempt_sender_domains: tuple[str, ...] = ()

    @field_validator("exempt_sender_domains")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(d.strip().lower().rstrip(".") for d in v)


DEFAULT_NOTICE = """\
【detox 無害化通知】
このメールはインターネットから届いたため、安全のため無害化されました（受付番号: $queue_id）。
$conversions

$delivered_section

$held_section

----------------------------------------------------------------
"""

DEFAULT_HELD_SECTION = """\
次の添付ファイルは安全のため取り除かれ、インターネット側で保管されています。
必要な場合は受付番号と保管番号を添えて情報政策課へお問い合わせください。
$held_items"""

DEFAULT_HELD_ITEM = """\
  ・$name（$size、保管番号: $hold_id）
      理由: $reason
      種類: $type　SHA-256: $sha256"""

DEFAULT_DELIVERED_SECTION = """\
次の添付ファイルは無害化した形でお届けします。
$delivered_items"""

DEFAULT_DELIVERED_ITEM = """\
  ・$name（$size、$type）→ $output_name（$conversion）$removed
      SHA-256 元: $sha256
      SHA-256 後: $output_sha256"""


class NoticeConfig(Strict):
    enabled: bool = True
    template: str = DEFAULT_NOTICE
    held_section: str = DEFAULT_HELD_SECTION
    held_item: str = DEFAULT_HELD_ITEM
    # Every attachment that crosses in a converted form, with what was done and removed; "" turns
    # the section off. At most max_listed items per section; the rest are counted.
    delivered_section: str = DEFAULT_DELIVERED_SECTION
    delivered_item: str = DEFAULT_DELIVERED_ITEM
    max_listed: int = Field(default=50, gt=0)
    conversions: dict[str, str] = Field(
        default_factory=lambda: {
            "pdf-rasterized": "PDF を画像にして作り直し",
            "pdf-sanitized": "PDF からスクリプト等を除去",
            "image-reencoded": "画像を作り直し、メタデータを削除",
            "office-disarmed": "マクロ・埋め込み・外部リンクを除去",
            "office-rasterized": "旧形式の文書を LibreOffice で PDF にし、画像にして作り直し",
            "archive-repacked": "展開して中身を無害化し、ZIP で作り直し",
            "calendar-converted": "予定表をテキストに変換",
            "html-attachment-converted": "HTML をテキストに変換",
            "text-reencoded": "テキストを UTF-8 で作り直し",
        }
    )
    converted_html: str = "・HTML 形式の本文をテキストに変換しました。"
    converted_rtf: str = "・リッチテキスト形式の本文をテキストに変換しました。"
    urls_defanged: str = "・本文中の URL $count 件をクリックできない形式に変えました（hxxp, [.]）。"
    signature_removed: str = "・電子署名は無害化により無効になるため取り除きました。"
    attachments_converted: str = (
        "・添付ファイル $count 件を安全な形式に作り直しました（PDF の画像化・無害化、画像の再エンコードと"
        "位置情報などのメタデータ削除、Office 文書のマクロ・埋め込みオブジェクト・外部リンクの削除、"
        "旧形式の Office 文書・RTF の画像化）。"
    )
    calendar_converted: str = (
        "・予定表ファイル（.ics）$count 件を読める文字だけのテキストに変換しました"
        "（予定表には取り込めません）。"
    )
    archives_repacked: str = (
        "・圧縮ファイル $count 件を展開し、中のファイルを無害化して ZIP 形式で作り直しました。"
    )
    reasons: dict[str, str] = Field(
        default_factory=lambda: {
            "unsupported-type": "この形式はまだ無害化できないため",
            "filter-error": "無害化処理で問題が起きたため",
            "filter-timeout": "無害化処理が時間内に終わらなかったため",
            "limit-exceeded": "大きさや入れ子の上限を超えたため",
            "encrypted": "暗号化されていて中身を確認できないため",
            "not-text": "テキストと表示されていますが中身がテキストではないため",
            "unparsable": "メールの構造を解釈できなかったため",
            "svg": "SVG 画像は安全に変換できないため",
            "signature": "電子署名は無害化により無効になるため",
            "policy": "この種類のファイルは受け取らない設定になっているため",
            "executable": "実行ファイルやスクリプトは受け取らない設定になっているため",
            "encrypted-archive": (
                "パスワード付き（暗号化された）圧縮ファイルは中身を確認できないため。パスワード付き ZIP と"
                "パスワードを別々に送る方式（いわゆる PPAP）は受け付けていません。送信者に、パスワード付き"
                " ZIP 以外の方法で送り直すよう依頼してください"
            ),
            "archive-bomb": "展開すると極端に大きくなる圧縮ファイル（圧縮爆弾の疑い）のため",
            "archive-corrupt": "圧縮ファイルが壊れていて正しく展開できないため",
            "archive-unsupported": "この圧縮形式はまだ安全に展開できないため",
            "archive-is-document": "圧縮ファイルに見えますが中身が文書ファイルの形式で、安全に扱えないため",
            "archive-empty": "圧縮ファイルの中にファイルが見つからなかったため",
            "archive-empty-after-detox": "圧縮ファイルの中のファイルがすべて取り除かれたため",
            "archive-member-unsafe": "圧縮ファイルの中の危険な項目（リンク・絶対パスなど）のため",
            "legacy-office": "旧形式の Office 文書・RTF はこのサーバーでは変換できない設定になっているため",
            "virus": "ウイルス（$signature）が検出されたため",
            "antivirus-unavailable": "ウイルス検査ができなかったため",
            # [inbound]: the whole message held by sender authentication (part 0)
            "dmarc-quarantine": (
                "差出人のドメインが DMARC で隔離（quarantine）を求めていて、送信元の認証に失敗したため"
            ),
            "dmarc-reject": (
                "差出人のドメインが DMARC で拒否（reject）を求めていて、送信元の認証に失敗したため"
            ),
            "spoofed-protected-domain": (
                "当庁または関係団体のドメインを名乗っていますが、送信元として認証されなかったため"
                "（なりすましの疑い）"
            ),
            "from-invalid": "差出人（From）の形式が正しくないため",
        }
    )


class SandboxConfig(Strict):
    """Where converters of hostile bytes run (see detox.sandbox)."""

    provider: Literal["bwrap", "subprocess"] = "bwrap"
    # The subprocess provider has no isolation: it refuses to run unless this is true.
    allow_unsandboxed: bool = False
    memory_mb: PositiveInt = 2048
    cpu_s: PositiveInt = 60
    # One resident sandbox per worker that forks a fresh child per document (detox.sandbox.zygote);
    # false: one bubblewrap sandbox started per document.
    resident_converters: bool = True


class PolicyActionKind(StrEnum):
    """What a policy rule does with the parts it matches."""

    HOLD = "hold"  # no filter runs: held
    DROP = "drop"  # no filter runs: dropped
    DEFAULT = "default"  # the filters in pipeline.order decide, as if no rule had matched
    FILTER = "filter"  # one named filter decides, optionally with a mode


@dataclass(frozen=True, slots=True)
class PolicyAction:
    """A rule's ``action``, parsed once when the config loads: ``hold``, ``drop``, ``default``, or a
    filter name with an optional mode (``pdf``, ``pdf:sanitize``).

    Any string parses: whether a filter of that name exists, and takes that mode, is the
    pipeline's to say (the config imports nothing of it), with the key ``policy.rules[N].action``.
    """

    kind: PolicyActionKind
    filter: str = ""  # FILTER: the filter's name
    mode: str = ""  # FILTER: the mode given after the colon ("" = the filter's configured one)
    text: str = ""  # as written in the config: shown in errors, written back by model_dump

    def __post_init__(self) -> None:
        if not self.text:  # built in code rather than parsed: the text it would have been written as
            text = self.filter + (f":{self.mode}" if self.mode else "")
            object.__setattr__(
                self, "text", text if self.kind is PolicyActionKind.FILTER else self.kind.value
            )

    @classmethod
    def parse(cls, text: str) -> PolicyAction:
        if text in _BUILT_IN_ACTIONS:
            return cls(PolicyActionKind(text), text=text)
        name, _, mode = text.partition(":")
        return cls(PolicyActionKind.FILTER, name, mode, text)

    def __str__(self) -> str:
        return self.text

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # An instance is taken as it is; anything else is validated as pydantic validates a str
        # (the same errors as before the action was parsed), then parsed. The config dumps it as
        # the string it was written as.
        def validate(value: Any, as_str: core_schema.ValidatorFunctionWrapHandler) -> PolicyAction:
            return value if isinstance(value, cls) else cls.parse(as_str(value))

        return core_schema.no_info_wrap_validator_function(
            validate,
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )


_BUILT_IN_ACTIONS = frozenset(k.value for k in PolicyActionKind if k is not PolicyActionKind.FILTER)


class PolicyRule(Strict):
    """One attachment rule; every criterion given must match (an empty one matches anything)."""

    name: str = ""
    detected: tuple[str, ...] = ()  # patterns over the detected type, e.g. "image/*"
    extensions: tuple[str, ...] = ()  # without the dot
    sender_domains: tuple[str, ...] = ()  # envelope sender's domain (unauthenticated)
    sha256: tuple[str, ...] = ()  # exact files, e.g. an approved form a partner sends every month
    suspicious: bool | None = None  # declared type / extension / detected type disagree
    action: PolicyAction  # hold | drop | default | FILTER | FILTER:MODE
    reason: str = "policy"  # a key of notice.reasons (or text shown as is)

    @field_validator("detected", "extensions", "sender_domains", "sha256")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(x.strip().lower().lstrip(".").rstrip(".") for x in v)


class PolicyConfig(Strict):
    rules: tuple[PolicyRule, ...] = ()


DEFAULT_RELEASE_NOTE = """\
【detox 例外措置による解除のお知らせ】
このメールは、無害化のためインターネット側で保管していた添付ファイルを、管理者の承認を得た
例外措置として解除し、無害化せずに元のままお届けするものです。

  保管番号: $hold_ids
  承認者: $approvers
  理由: $reason
  解除番号: $release_id（$released_at）

元のメール
  差出人: $from
  件名: $subject
  受信日時: $received_at（受付番号: $queue_id）

添付したファイル（無害化されていません）:
$parts

送信者と内容に心当たりがあることを確かめてから開いてください。
不明な点は情報政策課へお問い合わせください。
"""


class QuarantineConfig(Strict):
    """``detox quarantine``: releasing held originals as recorded exceptions (例外措置)."""

    # A release then needs `detox quarantine approve` by a second, different admin first.
    two_person_rule: bool = False
    release_subject_prefix: str = "【例外措置】"
    # The Japanese cover note of a released mail (string.Template, see README for placeholders).
    release_note: str = DEFAULT_RELEASE_NOTE


class AuditConfig(Strict):
    """The hash-chained audit log under ``<state_dir>/audit/``."""

    # Start a new file when audit.jsonl reaches this size; the chain continues across files.
    # 0 = never rotate.
    rotate_bytes: int = Field(default=100 * 1024 * 1024, ge=0)


class LoggingConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


# -- [antivirus]: clamd before disarm (issue 13) ----------------------------------------------------

_CLAMD_ADDRESS = re.compile(r"unix:[^\x00]+|tcp:(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-]*):[0-9]{1,5}")


class OnVirus(StrEnum):
    """What a detection holds: the part (or archive member) it was found in, or the whole message."""

    HOLD_PART = "hold-part"
    HOLD_MESSAGE = "hold-message"


class AntivirusOnError(StrEnum):
    """clamd down, timing out or answering an error: never deliver unscanned."""

    TEMPFAIL = "tempfail"  # the message waits in the spool and is tried again (queue list: antivirus)
    HOLD = "hold"  # the whole message is held (reason antivirus-unavailable)


class AntivirusConfig(Strict):
    """``[antivirus]``: the original, every MIME part and every archive member scanned by clamd's
    INSTREAM before any filter (see :mod:`detox.antivirus`)."""

    clamd: str = ""  # "" = off; "unix:/run/clamav/clamd.ctl" or "tcp:HOST:PORT"
    on_virus: OnVirus = OnVirus.HOLD_PART
    on_error: AntivirusOnError = AntivirusOnError.TEMPFAIL
    timeout_s: PositiveFloat = 30.0  # one stream: connect, send, clamd's answer
    # Larger streams are never sent; such a part is held (limit-exceeded). Keep it at or below
    # clamd's StreamMaxLength (and MaxFileSize/MaxScanSize); the original message must fit, so it
    # may not be below server.max_message_bytes.
    max_stream_bytes: PositiveInt = 26214400
    max_signature_age_h: PositiveFloat = 24.0  # check-config warns when clamd's database is older
    # While clamd cannot be reached, a waiting message is tried again after delivery.retry_base_s,
    # doubling up to this; the waits do not count against pipeline.max_attempts.
    retry_max_s: PositiveFloat = 300.0

    @field_validator("clamd")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v and not _CLAMD_ADDRESS.fullmatch(v):
            raise ValueError(f'expected unix:PATH or tcp:HOST:PORT (or "" for off), got {v!r}')
        if v.startswith("tcp:") and not 0 < int(v.rpartition(":")[2]) < 65536:
            raise ValueError(f"port out of range in {v!r}")
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.clamd)


# ---- [inbound]: sender authentication (issue 13; detox.inbound) ----------------------------------


def _domains(v: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(d.strip().lower().rstrip(".") for d in v if d.strip())


def parse_nameserver(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address → (ip, port). ValueError if not."""
    import ipaddress

    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, 53
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return host, port


class InboundConfig(Strict):
    """SPF, DKIM, DMARC, ARC before the 250, and what is done with the result (see detox.inbound)."""

    enabled: bool = False
    # DNS: "IP" or "IP:PORT" ("[v6]:PORT"); empty = the system resolver (/etc/resolv.conf).
    nameservers: tuple[str, ...] = ()
    dns_timeout_s: PositiveFloat = 2.0  # one query
    timeout_s: PositiveFloat = 10.0  # all of one message's authentication; past it → temperror
    dns_cache_size: PositiveInt = 10_000
    max_dns_lookups: PositiveInt = 60  # per message (SPF's own limit is 10 terms + 2 void)
    authserv_id: str = ""  # our id in Authentication-Results; "" = server.hostname
    # Partner domains (the prefecture, neighbouring 自治体); server.accepted_domains are always protected.
    protected_domains: tuple[str, ...] = ()
    trusted_relays: tuple[str, ...] = ()  # CIDRs of upstream relays (judge the first untrusted hop)
    trusted_authserv_ids: tuple[str, ...] = ()  # take a trusted relay's Authentication-Results
    trusted_arc_sealers: tuple[str, ...] = ()  # their valid ARC chain with dmarc=pass overrides a fail
    dmarc_reject: Literal["reject", "hold", "mark"] = "reject"  # DMARC fail with p=reject
    dmarc_quarantine: Literal["hold", "mark"] = "hold"  # DMARC fail with p=quarantine
    spoof: Literal["hold", "reject", "mark"] = "hold"  # protected From not aligned-authenticated
    lookalike: Literal["warn", "off"] = "warn"
    lookalike_distance: int = Field(default=2, ge=0, le=3)
    reject_message: str = "5.7.1 Message rejected: sender authentication failed (DMARC)"
    held_subject_prefix: str = "【隔離】"  # the Subject of the notice sent in place of a held message
    # Notice lines (the [notice] templates get them at $sender_section, or after the first line).
    notice_verified: str = "・差出人のドメイン $domain は送信元の認証（DMARC/DKIM/SPF）に成功しています。"
    notice_unverified: str = (
        "・【注意】送信元を確認できませんでした（差出人: $address、$results）。"
        "差出人を装ったメールの可能性があります。"
    )
    notice_lookalike: str = (
        "・【なりすましの疑い】$what 振込・支払・パスワード・添付の開封などの依頼は、"
        "メール以外の方法（電話など）で相手に確認してください。"
    )
    notice_policy: str = "・【注意】$what このメールは設定により隔離されずに届けられています。"
    texts: dict[str, str] = Field(
        default_factory=lambda: {
            "edit-distance": "差出人のドメイン $domain は $protected によく似た別のドメインです。",
            "homograph": (
                "差出人のドメイン $domain（$unicode）は $protected に"
                "見た目の似た文字を使った別のドメインです。"
            ),
            "display-name": "差出人の表示名に $address が含まれていますが、実際の差出人は $from です。",
            "reply-to": "返信先（Reply-To）が差出人 $from と別のドメイン $reply_domain になっています。",
            "dmarc-reject": "差出人のドメイン $domain の DMARC ポリシー（reject）に反するメールです。",
            "dmarc-quarantine": (
                "差出人のドメイン $domain の DMARC ポリシー（quarantine）に反するメールです。"
            ),
            "spoofed-protected-domain": (
                "差出人が $domain を名乗っていますが、その送信元として認証されていません。"
            ),
            "from-invalid": "差出人（From）の形式が正しくありません（$problem）。",
        }
    )

    @field_validator("protected_domains", "trusted_authserv_ids", "trusted_arc_sealers")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _domains(v)

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            try:
                parse_nameserver(item)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not IP or IP:PORT ({exc})") from exc
        return v

    @field_validator("trusted_relays")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for item in v:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a CIDR ({exc})") from exc
        return v


# ---- end of [inbound] ----------------------------------------------------------------------------


class DetoxConfig(Strict):
    server: ServerConfig = ServerConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    storage: StorageConfig = StorageConfig()
    limits: LimitsConfig = LimitsConfig()
    pipeline: PipelineConfig = PipelineConfig()
    filters: dict[str, FilterSettings] = Field(default_factory=dict)
    body: BodyConfig = BodyConfig()
    urls: UrlConfig = UrlConfig()
    notice: NoticeConfig = NoticeConfig()
    sandbox: SandboxConfig = SandboxConfig()
    policy: PolicyConfig = PolicyConfig()
    logging: LoggingConfig = LoggingConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    audit: AuditConfig = AuditConfig()
    antivirus: AntivirusConfig = AntivirusConfig()
    inbound: InboundConfig = InboundConfig()

    # Set by the loader: where relative paths are resolved from (the working directory).
    base_dir: str = "."

    def filter_settings(self, name: str) -> FilterSettings:
        return self.filters.get(name, _DEFAULT_FILTER_SETTINGS)

    def resolve_path(self, value: str) -> Path:
        """Paths in the config are relative to the working directory unless absolute."""
        path = Path(value)
        return path if path.is_absolute() else Path(self.base_dir) / path

    def state_path(self, *parts: str) -> Path:
        return self.resolve_path(self.storage.state_dir).joinpath(*parts)
