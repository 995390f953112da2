"""``detox queue`` and ``detox reload`` on a spool with no serve running, and the config keys they use."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support.configs import config_file

from detox.cli import main
from detox.config.loader import load_config
from detox.config.schema import DeliveryConfig, LimitsConfig, PipelineConfig, ServerConfig
from detox.envelope import Envelope
from detox.errors import ConfigError
from detox.spool import DeliveryState, RecipientState, Spool

REPO = Path(__file__).resolve().parents[2]
TARO = "taro@city.example.lg.jp"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Spool]:
    return config_file(tmp_path), Spool(tmp_path / "var" / "spool", fsync=False)


def fill(spool: Spool) -> dict[str, str]:
    now = time.time()
    received = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 3700))
    spool.accept(
        Envelope("1A0000000000000000A1", "a@vendor.example.com", (TARO,), received_at=received), b"x"
    )
    spool.begin_attempt("1A0000000000000000A1")
    spool.end_attempt("1A0000000000000000A1", "worker crashed", now + 30)
    state = DeliveryState(
        "1A0000000000000000B2",
        "b@vendor.example.com",
        {TARO: RecipientState(), "hanako@city.example.lg.jp": RecipientState(status="delivered", code=250)},
        received_at=now - 90_000,
        attempts=3,
        next_attempt=now + 600,
    )
    state.recipients[TARO].response = "4.2.2 mailbox full"
    state.recipients[TARO].code = 452
    state.recipients[TARO].updated_at = now
    spool.queue_message(state, b"Subject: y\r\n\r\ny\r\n")
    spool.accept(Envelope("1A0000000000000000C3", "", (TARO,)), b"z")
    spool.move_aside("1A0000000000000000C3", "detoxification failed 5 times, last: worker crashed")
    return {
        "incoming": "1A0000000000000000A1",
        "outgoing": "1A0000000000000000B2",
        "failed": "1A0000000000000000C3",
    }


def test_queue_list_json(setup: tuple[Path, Spool], capsys: pytest.CaptureFixture[str]) -> None:
    config, spool = setup
    ids = fill(spool)
    assert main(["queue", "list", "--json", "--config", str(config)]) == 0
    entries = {e["id"]: e for e in json.loads(capsys.readouterr().out)}
    incoming = entries[ids["incoming"]]
    assert incoming["stage"] == "detoxify" and incoming["attempts"] == 1
    assert incoming["last_response"] == "worker crashed" and incoming["next_attempt"]
    assert 3600 < incoming["age_s"] < 3800
    outgoing = entries[ids["outgoing"]]
    assert outgoing["stage"] == "deliver" and outgoing["attempts"] == 3
    assert [(r["address"], r["status"]) for r in outgoing["recipients"]] == [
        (TARO, "pending"),
        ("hanako@city.example.lg.jp", "delivered"),
    ]
    assert outgoing["last_response"] == "452 4.2.2 mailbox full"
    held = entries[ids["failed"]]
    assert held["stage"] == "held" and held["why"].startswith("detoxification failed 5 times")
    assert held["mail_from"] == "" and held["next_attempt"] is None


def test_queue_list_table(setup: tuple[Path, Spool], capsys: pytest.CaptureFixture[str]) -> None:
    config, spool = setup
    ids = fill(spool)
    assert main(["queue", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    for text in (*ids.values(), "1d01h", "in 9m", "held", "<>", "3 message(s)", "detox serve: not running"):
        assert text in out, text
    assert main(["queue", "list", "--config", str(config)]) == 0


def test_queue_retry_and_flush_leave_requests(
    setup: tuple[Path, Spool], capsys: pytest.CaptureFixture[str]
) -> None:
    config, spool = setup
    ids = fill(spool)
    assert main(["queue", "retry", ids["failed"], "--config", str(config)]) == 0
    assert "put back into the queue" in capsys.readouterr().out
    assert main(["queue", "retry", "1A0000000000000000FF", "--config", str(config)]) == 3
    assert main(["queue", "retry", "../x", "--config", str(config)]) == 3
    assert main(["queue", "flush", "--config", str(config)]) == 0
    assert spool.take_requests() == [f"retry.{ids['failed']}", "flush"]
    audit = (spool.root.parent / "audit" / "audit.jsonl").read_text()
    assert '"event":"queue_retry"' in audit and '"event":"queue_flush"' in audit and '"os_user"' in audit


def test_reload_without_a_running_serve(
    setup: tuple[Path, Spool], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = setup
    assert main(["reload", "--config", str(config)]) == 1
    assert "not running" in capsys.readouterr().out
    config.write_text(config.read_text() + "[delivery]\nbogus = 1\n")
    assert main(["reload", "--config", str(config)]) == 2  # validated before anything else


# -- config keys ---------------------------------------------------------------------------------


def test_shipped_config_shows_the_defaults_of_these_keys() -> None:
    shipped = load_config(REPO / "config" / "detox.toml")
    assert shipped.delivery.max_age_days == DeliveryConfig().max_age_days == 5.0
    assert (
        shipped.delivery.bounce_via == ""
        and shipped.delivery.no_bounce_reasons == DeliveryConfig().no_bounce_reasons
    )
    keys = {
        "max_line_length",
        "max_header_count",
        "max_header_bytes",
        "max_backlog_messages",
        "max_backlog_bytes",
    }
    assert shipped.limits.model_dump(include=keys) == LimitsConfig().model_dump(include=keys)
    assert shipped.server.max_sessions == ServerConfig().max_sessions == 200
    assert shipped.server.max_sessions_per_client == ServerConfig().max_sessions_per_client == 50
    assert shipped.server.shutdown_timeout_s == ServerConfig().shutdown_timeout_s
    assert shipped.pipeline.max_attempts == PipelineConfig().max_attempts == 5


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[delivery]\nbounce_via = "ftp://x"\n', "delivery.bounce_via"),
        ('[delivery]\nbounce_from = "nobody"\n', "delivery.bounce_from"),
        ('[delivery]\nbounce_text = "to $sender"\n', "delivery.bounce_text"),
        ("[delivery]\nmax_age_days = 0\n", "delivery.max_age_days"),
        ("[limits]\nmax_line_length = 0\n", "limits.max_line_length"),
        ("[server]\nmax_sessions = -1\n", "server.max_sessions"),
        ("[pipeline]\nmax_attempts = 0\n", "pipeline.max_attempts"),
        ("[limits]\nmax_backlog = 5\n", "limits.max_backlog"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key


def test_bounce_via_accepts_smtp_and_maildir(tmp_path: Path) -> None:
    for value in ("smtp://mx.internet.example.jp:25", "maildir:var/bounces"):
        path = tmp_path / "ok.toml"
        path.write_text(f'[delivery]\nbounce_via = "{value}"\n')
        assert load_config(path).delivery.bounce_via == value
