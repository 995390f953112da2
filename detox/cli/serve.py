"""``detox serve``: run the SMTP relay until SIGTERM or SIGINT; SIGHUP re-reads the configuration.

Only the wiring of the process lives here (config, logging, signals, the event loop); the relay itself
is :class:`detox.serve.app.Service`, imported when serve starts so that the other commands stay light.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from detox.cli.common import ExitCode, config_path, setup_logging
from detox.config.loader import parse_deliver_to, parse_listen
from detox.pipeline.registry import load_validated_config


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``serve`` (its own ``--config``, ``--listen`` and ``--deliver-to``) to the ``detox`` parser."""
    serve = sub.add_parser("serve", help="run the SMTP relay")
    serve.add_argument("--config", help="TOML file (default: $DETOX_CONFIG or /etc/detox/detox.toml)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides server.listen)")
    serve.add_argument(
        "--deliver-to", help="smtp://HOST:PORT or maildir:PATH (overrides delivery.deliver_to)"
    )
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    config = load_validated_config(path)
    listen = parse_listen(
        args.listen or config.server.listen, file="--listen" if args.listen else "config", key="server.listen"
    )
    deliver_to = parse_deliver_to(
        args.deliver_to or config.delivery.deliver_to, file="--deliver-to" if args.deliver_to else "config"
    )
    setup_logging(config)
    from detox.serve.app import Service

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = Service(
            config, listen, deliver_to, config_path=path, deliver_to_fixed=bool(args.deliver_to)
        )
        reloads: set[asyncio.Task[tuple[bool, str]]] = set()

        def reload() -> None:
            task = loop.create_task(service.reload("SIGHUP"))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        await service.run(stop)

    import uvloop

    uvloop.run(main())
    return ExitCode.OK
