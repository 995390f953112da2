"""Shared pytest fixtures. Helpers live in tests/support/ (imported as ``support``: tests/ is on sys.path)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.postfix import PostfixError, PostfixInstance, reap_stale_instances, require_postfix
from support.sink import SmtpSink


@pytest.fixture(scope="session")
def postfix() -> Iterator[PostfixInstance]:
    """A real, private Postfix on 127.0.0.1:<free port> delivering *@city.example.lg.jp to one Maildir.

    Shared by the whole session: use unique recipients or ``postfix.clear()``. Skips when Postfix can't run
    here (not installed / not root) — except under CI=true, where that is a failure.
    """
    require_postfix()
    reap_stale_instances()
    instance = PostfixInstance()
    try:
        instance.start()
    except PostfixError as exc:
        pytest.fail(f"postfix fixture: could not start a private Postfix:\n{exc}", pytrace=False)
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """An aiosmtpd sink on 127.0.0.1:<free port> in a thread; records messages, refuses on request."""
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
