"""Test helpers shared by the test suite: a private Postfix instance and an SMTP sink.

Import them as ``support.postfix`` / ``support.sink``: there is no ``tests/__init__.py``, so pytest's
default ("prepend") import mode puts ``tests/`` itself on ``sys.path``.
"""

from __future__ import annotations

import os
import socket

__all__ = ["free_port", "in_ci"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now (the kernel picks it).

    There is a small window between closing the probe socket and the caller binding the port; the kernel
    hands out ephemeral ports round-robin, so a collision inside one test run is unlikely.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def in_ci() -> bool:
    """True when running under CI (``CI=true``): missing system dependencies must fail, not skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}
