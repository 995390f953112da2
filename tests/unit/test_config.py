"""Configuration: typed, frozen, validated at start-up; every error names the file and the key."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import ValidationError

from detox.config import load_config
from detox.config.loader import parse_deliver_to, parse_listen
from detox.errors import ConfigError
from detox.filters.base import Filter, FilterContext
from detox.pipeline.model import Part, Verdict
from detox.pipeline.registry import available_filters, check_order, load_validated_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "detox.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_config_is_valid() -> None:
    config = load_validated_config(REPO / "config" / "detox.toml")
    assert config.server.listen == "127.0.0.1:2525"
    assert config.server.accepted_domains == ("city.example.lg.jp",)
    assert config.delivery.deliver_to == "maildir:var/maildir"
    assert config.storage.state_dir == "var"


def test_unknown_top_level_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nlisten = '127.0.0.1:2525'\n[sever]\nx = 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.file == str(path)
    assert err.value.key == "sever"
    assert "unknown key" in str(err.value)


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nmax_mesage_bytes = 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "server.max_mesage_bytes"


def test_bad_value_type(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nmax_recipients = 'many'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "server.max_recipients"


def test_bad_enum_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[delivery]\nstarttls = 'sometimes'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "delivery.starttls"


def test_unknown_filter_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "[pipeline]\norder = ['html', 'pdff']\n")
    with pytest.raises(ConfigError) as err:
        load_validated_config(path)
    assert err.value.key == "pipeline.order[1]"
    assert "pdff" in str(err.value)


def test_duplicate_filter_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "[pipeline]\norder = ['html', 'html']\n")
    with pytest.raises(ConfigError, match="twice"):
        load_validated_config(path)


def test_unknown_filter_option(tmp_path: Path) -> None:
    path = write(tmp_path, "[filters.text-attachment]\noptions = { max_byte = 3 }\n")
    with pytest.raises(ConfigError) as err:
        load_validated_config(path)
    assert err.value.key == "filters.text-attachment.options.max_byte"


def test_unknown_filter_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[filters.nosuch]\ntimeout_s = 3\n")
    with pytest.raises(ConfigError) as err:
        load_validated_config(path)
    assert err.value.key == "filters.nosuch"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\n"))


def test_no_accepted_domains_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[server]\naccepted_domains = []\n"))
    assert err.value.key == "server.accepted_domains"


def test_tls_cert_without_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[server]\ntls_cert = 'cert.pem'\n"))
    assert err.value.key == "server.tls_cert"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    with pytest.raises(ValidationError):
        config.server.listen = "0.0.0.0:25"  # type: ignore[misc]


def test_relative_paths_resolve_from_working_directory(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[storage]\nstate_dir = 'state'\n"), base_dir=str(tmp_path))
    assert config.state_path("spool") == tmp_path / "state" / "spool"
    absolute = load_config(write(tmp_path, "[storage]\nstate_dir = '/srv/detox'\n"), base_dir="/x")
    assert absolute.state_path() == Path("/srv/detox")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:2525", ("127.0.0.1", 2525)), ("[::1]:25", ("::1", 25))],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1", ":25", "host:0", "host:99999", "host:x"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


def test_parse_deliver_to() -> None:
    assert parse_deliver_to("smtp://127.0.0.1:2527").port == 2527
    assert parse_deliver_to("maildir:var/maildir").path == "var/maildir"
    with pytest.raises(ConfigError):
        parse_deliver_to("lmtp://x:1")


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "detox", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_check_config_cli_ok() -> None:
    result = run_cli("check-config", "config/detox.toml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


@pytest.mark.slow
def test_check_config_cli_unknown_key_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[urls]\ndefang = true\nexempt = []\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and "urls.exempt" in result.stderr


def test_check_config_takes_config_like_every_other_command(tmp_path: Path) -> None:
    path = write(tmp_path, "[urls]\ndefang = true\nexempt = []\n")
    result = run_cli("check-config", "--no-sandbox", "--config", str(path))
    assert result.returncode == 2 and "urls.exempt" in result.stderr  # the named file was read
    both = run_cli("check-config", "config/detox.toml", "--config", str(path))
    assert both.returncode == 2 and "give the file once" in both.stderr


def test_check_config_cli_missing_file_exit_2(tmp_path: Path) -> None:
    result = run_cli("check-config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "file not found" in result.stderr


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nlisten = 'nope'\n")
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert "server.listen" in result.stderr


def test_usage_error_exit_2() -> None:
    assert run_cli("frobnicate").returncode == 2


def test_require_tls_without_certificate_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[server]\nrequire_tls = true\n"))
    assert err.value.key == "server.require_tls"


def test_exempt_sender_domains_are_normalised(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[urls]\nexempt_sender_domains = ['Partner.Example.']\n"))
    assert config.urls.exempt_sender_domains == ("partner.example",)


@pytest.mark.slow
def test_check_config_tries_the_sandbox(tmp_path: Path) -> None:
    """A valid file whose sandbox cannot run converters fails check-config: at run time every
    converted attachment would be held as filter-error."""
    ok = run_cli("check-config", "config/detox.toml")
    assert ok.returncode == 0, ok.stderr
    assert "sandbox (bwrap): OK" in ok.stdout
    refused = write(tmp_path, '[sandbox]\nprovider = "subprocess"\n')
    result = run_cli("check-config", str(refused))
    assert result.returncode == 1
    assert "sandbox (subprocess): FAILED" in result.stderr and "allow_unsandboxed" in result.stderr
    assert run_cli("check-config", "--no-sandbox", str(refused)).returncode == 0
    dev = write(tmp_path, '[sandbox]\nprovider = "subprocess"\nallow_unsandboxed = true\n')
    result = run_cli("check-config", str(dev))
    assert result.returncode == 0
    assert "reachable from inside the sandbox" in result.stderr and "development only" in result.stderr


# -- the pipeline's checks: run by the loader as a callback; config imports nothing of the pipeline --


def test_order_that_breaks_a_declared_constraint_is_refused(tmp_path: Path) -> None:
    """office declares runs_before = ("archive", ...): an OOXML file is a zip."""
    path = write(tmp_path, "[pipeline]\norder = ['image', 'archive', 'office', 'html']\n")
    with pytest.raises(ConfigError) as err:
        load_validated_config(path)
    assert err.value.file == str(path)
    assert err.value.key == "pipeline.order[2]"
    assert "'office' must come before 'archive'" in err.value.problem


def test_order_constraints_apply_only_between_listed_filters(tmp_path: Path) -> None:
    config = load_validated_config(write(tmp_path, "[pipeline]\norder = ['archive', 'plain']\n"))
    assert config.pipeline.order == ("archive", "plain")


def test_runs_after_is_checked_too() -> None:
    class Late(Filter):
        name: ClassVar[str] = "late"
        runs_after: ClassVar[tuple[str, ...]] = ("plain",)

        def applies_to(self, part: Part) -> bool:
            return False

        def process(self, part: Part, ctx: FilterContext) -> Verdict:
            raise NotImplementedError

    known = {**available_filters(), "late": Late}
    check_order(("plain", "late"), known, "f.toml")
    with pytest.raises(ConfigError) as err:
        check_order(("late", "html", "plain"), known, "f.toml")
    assert err.value.key == "pipeline.order[0]"
    assert "'late' must come after 'plain'" in str(err.value)


def test_shipped_order_keeps_every_declared_constraint() -> None:
    order = load_config(REPO / "config" / "detox.toml").pipeline.order
    check_order(order, available_filters(), "config/detox.toml")
    assert order.index("office") < order.index("archive")


def test_config_alone_leaves_filter_checks_to_the_pipeline(tmp_path: Path) -> None:
    """Without the pipeline's callback the loader checks only what config owns."""
    path = write(tmp_path, "[pipeline]\norder = ['nosuch']\n[filters.nosuch]\noptions = { x = 1 }\n")
    assert load_config(path).pipeline.order == ("nosuch",)
    with pytest.raises(ConfigError, match="unknown filter 'nosuch'"):
        load_validated_config(path)


def test_first_problem_is_the_same_with_the_callback(tmp_path: Path) -> None:
    """The pipeline's checks run where they always ran: after the URLs, before TLS."""
    filter_and_tls = write(tmp_path, "[server]\nrequire_tls = true\n[pipeline]\norder = ['nosuch']\n")
    with pytest.raises(ConfigError) as err:
        load_validated_config(filter_and_tls)
    assert err.value.key == "pipeline.order[0]"
    url_and_filter = write(tmp_path, "[server]\nlisten = 'nope'\n[pipeline]\norder = ['nosuch']\n")
    with pytest.raises(ConfigError) as err:
        load_validated_config(url_and_filter)
    assert err.value.key == "server.listen"


def test_check_config_cli_reports_a_broken_order_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[pipeline]\norder = ['archive', 'office']\n")
    result = run_cli("check-config", "--no-sandbox", str(path))
    assert result.returncode == 2
    assert f"{path}: pipeline.order[1]: filter 'office' must come before 'archive'" in result.stderr


def test_check_config_cli_reports_filter_and_policy_problems_exit_2(tmp_path: Path) -> None:
    for text, key in (
        ("[pipeline]\norder = ['pdff']\n", "pipeline.order[0]"),
        ("[filters.pdf]\noptions = { mode = 'flatten' }\n", "filters.pdf.options.mode"),
        ("[[policy.rules]]\naction = 'pdf:shred'\n", "policy.rules[0].action"),
    ):
        path = write(tmp_path, text)
        result = run_cli("check-config", "--no-sandbox", str(path))
        assert result.returncode == 2, text
        assert f"{path}: {key}:" in result.stderr


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_config_is_a_leaf() -> None:
    """config/ imports nothing of the pipeline or the filters, not even late inside a function;
    and loading a file pulls neither in."""
    for path in sorted((REPO / "detox" / "config").glob("*.py")):
        bad = {m for m in _imports(path) if m.startswith(("detox.pipeline", "detox.filters"))}
        assert not bad, f"{path.name} imports {sorted(bad)}"
    code = (
        "import sys\n"
        "from detox.config import load_config\n"
        "load_config('config/detox.toml')\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('detox.pipeline', 'detox.filters')))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
