"""``detox check-config`` and ``detox filters``: is this configuration valid, and what will run.

``check-config`` also starts the sandbox the way the filters will use it, so a file that loads but a
sandbox that cannot start is found before serve holds every converted attachment as filter-error;
and with ``[antivirus]`` on it asks clamd (PING, VERSION): unreachable fails, a signature database
older than ``antivirus.max_signature_age_h`` (or of unknown date) is a warning.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Any

from detox.cli.common import ExitCode, config_path
from detox.config.schema import DetoxConfig
from detox.pipeline.registry import load_validated_config


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``check-config`` and ``filters`` (each with its own ``--config``) to the ``detox`` parser."""
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", nargs="?")
    # Like every other command: `detox check-config --config F` is what an admin types after `serve`.
    check.add_argument("--config", help="the same as FILE")
    check.add_argument(
        "--no-sandbox", action="store_true", help="only validate the file; do not try the sandbox or clamd"
    )
    check.set_defaults(func=cmd_check_config)

    filters = sub.add_parser("filters", help="list installed filters and the pipeline order")
    filters.add_argument("--config")
    filters.set_defaults(func=cmd_filters)


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.file and args.config and args.file != args.config:
        print("detox check-config: give the file once (FILE or --config FILE)", file=sys.stderr)
        return ExitCode.USAGE
    path = args.file or config_path(args.config)
    config = load_validated_config(path)
    print(f"{path or '<built-in defaults>'}: OK (pipeline: {', '.join(config.pipeline.order)})")
    if args.no_sandbox:
        return ExitCode.OK
    # A valid file with a sandbox that cannot start would hold every converted attachment as
    # filter-error at run time: try it now, the way the filters will use it.
    code = ExitCode.OK
    problem = _probe_sandbox(config)
    if problem and config.sandbox.provider == "subprocess" and config.sandbox.allow_unsandboxed:
        print(f"sandbox (subprocess): WARNING: {problem}; development only", file=sys.stderr)
    elif problem:
        print(f"sandbox ({config.sandbox.provider}): FAILED: {problem}", file=sys.stderr)
        code = ExitCode.INTERNAL
    else:
        print(f"sandbox ({config.sandbox.provider}): OK (converters run, no network inside)")
    _check_inbound(config)
    if not _check_antivirus(config):
        code = ExitCode.INTERNAL
    return code


def _check_inbound(config: DetoxConfig) -> None:
    """What sender authentication will do, and whether its resolver answers: a resolver that does not
    makes every result temperror (mail is still delivered, marked), so it warns and never fails."""
    inbound = config.inbound
    if not inbound.enabled:
        print("inbound: off (inbound.enabled is false: no sender authentication)")
        return
    import asyncio

    from detox.inbound.dns import DnsDataError, DnsTempError, Resolver

    servers = ", ".join(inbound.nameservers) or "the system resolver (/etc/resolv.conf)"
    protected = sorted({*config.server.accepted_domains, *inbound.protected_domains})
    print(
        f"inbound: on (authserv-id {inbound.authserv_id or config.server.hostname}; DNS: {servers}; "
        f"protected: {', '.join(protected) or '-'}; dmarc_reject={inbound.dmarc_reject}, "
        f"spoof={inbound.spoof}, trusted relays: {len(inbound.trusted_relays)})"
    )
    # Our own domain's DMARC record: a name that exists for every city, asked the way serve asks.
    name = f"_dmarc.{protected[0]}" if protected else "_dmarc.example.jp"
    resolver = Resolver(inbound.nameservers, timeout_s=inbound.dns_timeout_s, cache_size=16)
    try:
        asyncio.run(resolver.lookup(name, "TXT"))
    except DnsTempError as exc:
        print(
            f"inbound (DNS): WARNING: no answer for {name} TXT ({exc}): every authentication result "
            "would be temperror (mail delivered and marked, nothing rejected)",
            file=sys.stderr,
        )
    except DnsDataError:
        print(f"inbound (DNS): OK (the resolver answers; {name} TXT is malformed)")
    else:
        print(f"inbound (DNS): OK (the resolver answers: {name} TXT)")


def _check_antivirus(config: DetoxConfig) -> bool:
    """clamd reachable, and how old its signatures are; False when it cannot be reached."""
    av = config.antivirus
    if not av.enabled:
        print("antivirus: off (antivirus.clamd is empty)")
        return True
    from detox.antivirus.clamd import ClamdError
    from detox.antivirus.scan import make_client

    client = make_client(av, config.resolve_path)
    label = f"antivirus (clamd {client.address})"
    try:
        client.ping()
        version = client.version()
    except ClamdError as exc:
        # serve would keep every message waiting (on_error = "tempfail") or hold it ("hold")
        print(f"{label}: FAILED: {exc} (messages would {_on_error_effect(config)})", file=sys.stderr)
        return False
    age = version.age_hours()
    if age is None or version.db_time is None:
        print(f"{label}: OK (ClamAV {version.engine})")
        print(
            f"{label}: WARNING: the signature database's date is unknown (no daily database loaded: "
            "is freshclam running?)",
            file=sys.stderr,
        )
        return True
    built = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(version.db_time))
    print(
        f"{label}: OK (ClamAV {version.engine}, signatures {version.db_version} of {built}, {age:.1f} h old)"
    )
    if age > av.max_signature_age_h:
        print(
            f"{label}: WARNING: the signature database is {age:.1f} h old, older than "
            f"antivirus.max_signature_age_h ({av.max_signature_age_h:g} h): is freshclam running?",
            file=sys.stderr,
        )
    return True


def _on_error_effect(config: DetoxConfig) -> str:
    if config.antivirus.on_error == "hold":
        return "be held whole (antivirus.on_error = hold)"
    return "wait in the spool until clamd answers (antivirus.on_error = tempfail)"


def _probe_sandbox(config: DetoxConfig) -> str | None:
    from detox.errors import SandboxError
    from detox.sandbox import make_sandbox
    from detox.sandbox.base import Limits

    limits = Limits(timeout_s=30, cpu_s=30)
    # A listener of ours on the host's loopback: inside a private network namespace it is not there.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        try:
            sandbox = make_sandbox(config)
            if sandbox.run("selftest", b"probe", {"op": "echo"}, limits) != b"probe":
                return "the probe converter's output came back changed"
            net = sandbox.run("selftest", b"", {"op": "net", "host": "127.0.0.1", "port": port}, limits)
        except SandboxError as exc:
            return str(exc)
    if not net.startswith(b"blocked"):
        return "the host's network is reachable from inside the sandbox (no isolation)"
    return None


def cmd_filters(args: argparse.Namespace) -> int:
    from detox.pipeline.registry import available_filters

    config = load_validated_config(config_path(args.config))
    order = list(config.pipeline.order)
    for name, cls in sorted(available_filters().items()):
        position = f"#{order.index(name) + 1}" if name in order else "unused"
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:18} {position:7} {doc}")
    return ExitCode.OK
