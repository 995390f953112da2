"""A real, private Postfix instance for tests (the LGWAN-side mail server detox delivers to).

It never touches the default instance in /etc/postfix: everything lives under one temporary directory::

    ROOT/etc/main.cf, master.cf, *.regexp   config_directory   (postfix -c ROOT/etc ...)
    ROOT/spool/                              queue_directory    (created by `postfix start` -> post-install)
    ROOT/data/                               data_directory     (owned by the postfix user)
    ROOT/mail/Maildir/{new,cur,tmp}          the one Maildir every accepted recipient lands in (virtual(8))
    ROOT/maillog                             maillog_file (postlogd; no syslog needed)
    ROOT/owner.pid                           pid of the process that started it (used to reap stale instances)

How it works:

* ``postfix -c ROOT/etc start`` runs ``post-install create-missing``, which creates the queue directories
  with the right owners (``postfix``, group ``postdrop``) from /etc/postfix/postfix-files; the Debian package
  has already created that user and group. No ``alternate_config_directories`` entry is needed because we
  run as root and never use the set-gid ``postdrop``/``postqueue`` paths as another user. Neither
  ``/etc/postfix/main.cf`` (absent with the "No configuration" debconf choice) nor the default queue is read
  or written.
* ``master.cf`` has a single ``smtpd`` on ``127.0.0.1:PORT`` and every service runs without chroot.
* Any recipient in ``domains`` (default ``city.example.lg.jp``) is accepted and delivered by ``virtual(8)``
  into the single Maildir ``ROOT/mail/Maildir/`` as the ``nobody`` user, one file per recipient (Postfix
  prepends ``Return-Path:``, ``X-Original-To:`` and ``Delivered-To:``; line endings in the Maildir are LF).
  ``messages(user)`` filters on ``Delivered-To:``. (One Maildir per local part would need ``$1``
  substitution in ``virtual_mailbox_maps``, which Postfix refuses for security reasons.) Local parts
  starting with ``reject-`` get ``550 5.1.1`` and ``defer-`` get ``450 4.2.0`` at RCPT time, so relays can be
  tested against real refusals.
  Other domains get ``554 5.7.1 Relay access denied``; nothing ever leaves the machine (no DNS, no outbound
  transport).

Requirements: the ``postfix`` Debian package and root (Postfix's master must start as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from . import free_port, in_ci

__all__ = [
    "DEFAULT_DOMAINS",
    "PostfixError",
    "PostfixInstance",
    "find_postfix",
    "reap_stale_instances",
    "require_postfix",
    "unavailable_reason",
]

DEFAULT_DOMAINS: tuple[str, ...] = ("city.example.lg.jp",)
ROOT_PREFIX = "detox-postfix-"
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_DELIVERED_TO_RE = re.compile(rb"^Delivered-To:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)

# Services from Debian's master.cf that a delivering instance needs, all with chroot "n".
_MASTER_CF_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """A postfix command failed; the message includes its output and the tail of the instance's log."""


def find_postfix() -> str | None:
    """Path of the ``postfix`` command, also looking in the sbin directories a non-root PATH lacks."""
    found = shutil.which("postfix")
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory, "postfix")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def unavailable_reason() -> str | None:
    """Why a private Postfix instance cannot be started here, or None when it can."""
    if find_postfix() is None:
        return "postfix is not installed (run scripts/install-system-deps.sh as root)"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root (Postfix's master runs as root)"
    for user in ("postfix", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"user {user!r} is missing (the postfix package creates 'postfix')"
    return None


def require_postfix() -> None:
    """Skip the calling test when Postfix can't run here; under CI=true fail instead, so a missing
    install step is caught rather than silently skipped."""
    import pytest

    reason = unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"postfix: {reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(f"postfix: {reason}")


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself contain spaces.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in {"Z", "X"}


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def reap_stale_instances(tmpdir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Stop and remove instances left behind by test runs that died without cleaning up (e.g. SIGKILL).

    Only instances whose owning process is gone are touched. Returns the removed roots.
    """
    base = Path(tmpdir) if tmpdir is not None else Path(tempfile.gettempdir())
    reaped: list[Path] = []
    for root in base.glob(ROOT_PREFIX + "*"):
        owner = _read_pid(root / "owner.pid")
        if owner is not None and _pid_alive(owner):
            continue
        if not (root / "etc" / "main.cf").is_file():
            continue
        instance = PostfixInstance(root=root, adopt=True)
        with contextlib.suppress(Exception):
            instance.stop()
        reaped.append(root)
    return reaped


class PostfixInstance:
    """A private Postfix listening on ``host:port`` that delivers every accepted recipient to a Maildir.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``stop`` is idempotent.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        domains: Iterable[str] = DEFAULT_DOMAINS,
        extra_main_cf: Mapping[str, str] | None = None,
        adopt: bool = False,
    ) -> None:
        self.host = host
        self.port = port if port is not None else 0
        self.domains = tuple(d.lower() for d in domains)
        self.extra_main_cf = dict(extra_main_cf or {})
        # Remove ROOT on stop when we created it, or when adopting a stale instance to reap it.
        self._remove_root = root is None or adopt
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "spool"
        self.data_dir = self.root / "data"
        self.mail_dir = self.root / "mail"
        self.log_file = self.root / "maillog"
        self._postfix = find_postfix() or "postfix"
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """``smtp://HOST:PORT``, the form ``detox serve --deliver-to`` takes."""
        return f"smtp://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration and start the instance; returns once the smtpd answers with 220.

        Can be called again after ``stop(remove=False)`` (same port, same Maildir), e.g. to test how a
        client copes with the downstream server going away and coming back.
        """
        began = time.monotonic()
        try:
            reason = unavailable_reason()
            if reason is not None:
                raise PostfixError(reason)
            self._write_config()
            self._run("start", timeout=timeout)
            self._wait_listening(deadline=began + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def stop(self, timeout: float = 15.0, *, remove: bool = True) -> None:
        """Stop (``postfix -c DIR stop``; SIGKILL of the master if that fails). Idempotent.

        With ``remove`` (the default) ROOT is deleted too, when this object created it.
        """
        began = time.monotonic()
        if self.master_pid() is not None and (self.config_dir / "main.cf").is_file():
            with contextlib.suppress(PostfixError, subprocess.TimeoutExpired):
                self._run("stop", timeout=timeout)
            pid = self.master_pid()
            if pid is not None:  # did not stop in time: kill the master, its children follow it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
        if remove and self._remove_root:
            # Children of a stopped master can still be exiting; retry once if they raced the removal.
            for _ in range(2):
                shutil.rmtree(self.root, ignore_errors=True)
                if not self.root.exists():
                    break
                time.sleep(0.2)
        self.stop_seconds = time.monotonic() - began

    def master_pid(self) -> int | None:
        """PID of this instance's running master process, or None."""
        pid = _read_pid(self.queue_dir / "pid" / "master.pid")
        if pid is None or not _pid_alive(pid):
            return None
        try:  # guard against a recycled PID from a long-dead instance
            if Path(f"/proc/{pid}/comm").read_text().strip() != "master":
                return None
        except OSError:
            return None
        return pid

    @property
    def running(self) -> bool:
        return self.master_pid() is not None

    # -------------------------------------------------------------------------------------------- mail
    def maildir(self, user: str | None = None) -> Path:
        """The Maildir every recipient is delivered to (shared by all users; it appears on first delivery)."""
        del user  # one catch-all Maildir; see messages(user) to select a recipient
        return self.mail_dir / "Maildir"

    def message_files(self) -> list[Path]:
        """Delivered message files (``new/`` and ``cur/``), oldest first."""
        files: list[tuple[int, str, Path]] = []
        for sub in ("new", "cur"):
            directory = self.maildir() / sub
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    files.append((entry.stat().st_mtime_ns, entry.name, entry))
        return [path for _, _, path in sorted(files)]

    def messages(self, user: str | None = None, contains: bytes | str | None = None) -> list[bytes]:
        """Raw delivered messages, oldest first (LF line endings, Postfix's delivery headers prepended).

        ``user`` selects one recipient: a full address, or a bare local part that matches in any test domain
        (case-insensitive, compared with the ``Delivered-To:`` header). ``contains`` keeps only messages that
        contain these bytes (str: UTF-8), e.g. a queue id or a unique Subject. The instance is shared by the
        whole session, so earlier tests' messages are here too: select yours with one of the two.
        """
        needle = contains.encode() if isinstance(contains, str) else contains
        out: list[bytes] = []
        for path in self.message_files():
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            if user is not None and not _delivered_to_matches(raw, user):
                continue
            if needle is not None and needle not in raw:
                continue
            out.append(raw)
        return out

    def wait_for(
        self, n: int, timeout: float = 10.0, user: str | None = None, contains: bytes | str | None = None
    ) -> list[bytes]:
        """Poll until at least ``n`` messages selected as in :meth:`messages` are delivered; return them."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            found = self.messages(user, contains)
            if len(found) >= n:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"postfix: {len(found)} of {n} message(s) delivered"
                    f"{f' to {user}' if user else ''}{f' containing {contains!r}' if contains else ''}"
                    f" after {timeout:.1f}s\n"
                    f"--- queue ---\n{self.queue()}\n--- maillog (tail) ---\n{self.log(tail=40)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def clear(self) -> None:
        """Delete every delivered message (the fixture instance is shared by the whole session)."""
        for path in self.message_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def log(self, tail: int | None = None) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    def queue(self) -> str:
        """``postqueue -p`` output for this instance (deferred/active mail), for diagnostics."""
        postqueue = str(Path(self._postfix).with_name("postqueue"))
        try:
            proc = subprocess.run(
                [postqueue, "-c", str(self.config_dir), "-p"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(postqueue failed: {exc})"
        return (proc.stdout + proc.stderr).strip()

    def flush(self) -> None:
        """Retry deferred mail now (``postfix flush``)."""
        self._run("flush", timeout=30)

    # --------------------------------------------------------------------------------------- internals
    def _write_config(self) -> None:
        if self.port == 0:
            self.port = free_port(self.host)
        nobody = pwd.getpwnam("nobody")
        postfix_user = pwd.getpwnam("postfix")
        # Postfix daemons drop privileges inside this tree: every level must be traversable.
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        (self.root / "owner.pid").write_text(f"{os.getpid()}\n")
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        self.mail_dir.mkdir(exist_ok=True)
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)

        etc = self.config_dir
        (etc / "recipient_access.regexp").write_text(
            "/^reject-[^@]*@/\t550 5.1.1 Recipient address rejected: test user rejects mail\n"
            "/^defer-[^@]*@/\t450 4.2.0 Recipient address temporarily rejected: test user defers mail\n"
        )
        domains = ", ".join(self.domains)
        params: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            "myhostname": "lgwan-mx.test",
            "mydomain": "test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP Postfix (detox test instance)",
            # Delivery: test domains -> virtual(8) Maildirs; everything else is refused or dropped.
            "virtual_mailbox_domains": domains,
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": "static:Maildir/",  # trailing slash = Maildir format
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
            "virtual_mailbox_limit": "0",
            "local_transport": "error:5.1.1 local delivery is disabled in the test instance",
            "default_transport": "error:5.4.4 no outbound delivery from the test instance",
            "relay_transport": "error:5.4.4 no outbound delivery from the test instance",
            "alias_maps": "",
            "alias_database": "",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": f"check_recipient_access regexp:{etc}/recipient_access.regexp",
            # No DNS on these machines; no reverse lookups.
            "smtp_dns_support_level": "disabled",
            "disable_dns_lookups": "yes",
            "smtpd_peername_lookup": "no",
            # Don't slow tests down: no error sleeps/limits, no inflow throttling, big messages.
            "message_size_limit": str(200 * 1024 * 1024),
            "mailbox_size_limit": "0",
            "smtpd_error_sleep_time": "0s",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "smtpd_client_connection_count_limit": "0",
            "in_flow_delay": "0s",
            "queue_run_delay": "5s",
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "10s",
            "biff": "no",
            "notify_classes": "",
        }
        params.update(self.extra_main_cf)
        (etc / "main.cf").write_text(
            "# Private Postfix instance for detox tests (tests/support/postfix.py), not the system's.\n"
            + "".join(f"{key} = {value}\n" for key, value in params.items())
        )
        (etc / "master.cf").write_text(
            "# service type  private unpriv  chroot  wakeup  maxproc command\n"
            f"{self.host}:{self.port} inet n - n - - smtpd\n" + _MASTER_CF_SERVICES
        )
        # Postfix re-reads a config file until it is at least ~2 s old ("let it settle", 300 ms steps), which
        # would add ~2 s to every start. Backdate the files we just wrote.
        settled = time.time() - 10
        for path in etc.iterdir():
            os.utime(path, (settled, settled))

    def _wait_listening(self, deadline: float) -> None:
        while True:
            try:
                with socket.create_connection(self.address, timeout=2) as sock:
                    sock.settimeout(5)
                    banner = sock.recv(512)
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
                if banner.startswith(b"220"):
                    return
                raise PostfixError(f"unexpected banner from {self.address}: {banner!r}")
            except OSError:
                if time.monotonic() >= deadline:
                    raise PostfixError(
                        f"postfix did not listen on {self.host}:{self.port}\n{self.log(tail=40)}"
                    ) from None
                time.sleep(0.05)

    def _run(self, action: str, timeout: float) -> str:
        """Run ``postfix -c CONFIG ACTION``. Postfix writes errors to stderr only when it is a terminal, so
        the command gets a pty as stderr; otherwise config errors found before logging starts are lost."""
        cmd = [self._postfix, "-c", str(self.config_dir), action]
        master_fd, slave_fd = os.openpty()
        try:
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=slave_fd,
                    timeout=timeout,
                    check=False,
                )
            finally:
                os.close(slave_fd)
            output = proc.stdout.decode(errors="replace") + _drain(master_fd)
        finally:
            os.close(master_fd)
        if proc.returncode != 0:
            raise PostfixError(
                f"{' '.join(cmd)} exited {proc.returncode}\n{output.strip()}\n"
                f"--- maillog (tail) ---\n{self.log(tail=40)}"
            )
        return output


def _delivered_to_matches(raw: bytes, user: str) -> bool:
    head = raw.split(b"\n\n", 1)[0]
    match = _DELIVERED_TO_RE.search(head)
    if match is None:
        return False
    delivered = match.group(1).decode("utf-8", "replace").strip("<>").lower()
    wanted = user.lower()
    if "@" in wanted:
        return delivered == wanted
    return delivered.split("@", 1)[0] == wanted


def _drain(fd: int) -> str:
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer closed the pty
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
