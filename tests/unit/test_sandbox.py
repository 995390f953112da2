"""The converter sandbox, tested for real: processes, bubblewrap, rlimits, sockets; no mocks.

Tests that need bubblewrap skip when ``bwrap`` is absent, except under CI=true where they fail (a missing
install step must not turn the isolation tests green by skipping them).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support import in_ci

import detox
from detox.config.schema import DetoxConfig, SandboxConfig
from detox.errors import SandboxError, SandboxTimeout
from detox.sandbox import make_sandbox
from detox.sandbox.base import Limits, Sandbox
from detox.sandbox.bwrap import BwrapSandbox
from detox.sandbox.contract import CHILD_MODULE, MAX_ARGS_BYTES
from detox.sandbox.process import SubprocessSandbox

LIMITS = Limits(timeout_s=20)
ALLOWED_ENV = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "PWD"}
MiB = 1024 * 1024


def require_bwrap() -> None:
    if shutil.which("bwrap") is not None:
        return
    if in_ci():
        pytest.fail(
            "bwrap is not installed (CI=true: not skipping the sandbox isolation tests)", pytrace=False
        )
    pytest.skip("bwrap is not installed (apt-get install bubblewrap)")


@pytest.fixture
def bwrap() -> BwrapSandbox:
    require_bwrap()
    return BwrapSandbox()


@pytest.fixture
def unsandboxed() -> SubprocessSandbox:
    return SubprocessSandbox(allowed=True)


@pytest.fixture(params=["subprocess", "bwrap", "subprocess-resident", "bwrap-resident"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """Both providers, each one-shot and resident (a zygote forking a child per document)."""
    provider, _, resident = request.param.partition("-")
    made: SubprocessSandbox | BwrapSandbox
    if provider == "bwrap":
        require_bwrap()
        made = BwrapSandbox(resident=bool(resident))
    else:
        made = SubprocessSandbox(allowed=True, resident=bool(resident))
    try:
        yield made
    finally:
        made.close()


def run_json(sandbox: Sandbox, args: dict[str, Any], limits: Limits = LIMITS) -> Any:
    return json.loads(sandbox.run("selftest", b"", args, limits))


# --- /proc helpers -------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """A live process, not a zombie (a killed process may wait a moment to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def _pids_with_cmdline(argv: list[bytes]) -> list[int]:
    return [
        int(e) for e in os.listdir("/proc") if e.isdigit() and _cmdline(int(e)) == argv and _alive(int(e))
    ]


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    """A TCP listener on 127.0.0.1:<free port> that accepts (and drops) connections in a thread."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()
    finally:
        stop.set()
        thread.join(5)
        server.close()


# --- behaviour common to both providers ----------------------------------------------------------


def test_echo_round_trip_10_mb_binary(sandbox: Sandbox) -> None:
    data = random.Random(3).randbytes(10 * MiB) + bytes(range(256))
    assert sandbox.run("selftest", data, {"op": "echo"}, LIMITS) == data


def test_echo_empty_input(sandbox: Sandbox) -> None:
    assert sandbox.run("selftest", b"", {"op": "echo"}, LIMITS) == b""


def test_stray_stdout_does_not_reach_the_output(sandbox: Sandbox) -> None:
    out = sandbox.run("selftest", b"payload", {"op": "echo", "print": "noise from a library"}, LIMITS)
    assert out == b"payload"


def test_args_travel_beyond_the_argv_limit(sandbox: Sandbox) -> None:
    # 300 KB of UTF-8: more than one argv string may hold (128 KiB), so this proves args go on stdin.
    args = {"op": "args", "text": "日本語" * 33_334, "nested": {"list": [1, 2.5, None, True]}}
    assert run_json(sandbox, args) == args


def test_args_too_large_are_refused(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="more than"):
        sandbox.run("selftest", b"", {"op": "args", "text": "x" * (MAX_ARGS_BYTES + 1)}, LIMITS)


def test_args_not_json_are_refused(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="JSON"):
        sandbox.run("selftest", b"", {"op": "args", "when": object()}, LIMITS)


def test_converter_exception_is_a_sandbox_error_with_its_message(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match=r"ValueError: the PDF is broken \(page 3\)") as info:
        sandbox.run("selftest", b"", {"op": "raise", "message": "the PDF is broken (page 3)"}, LIMITS)
    assert not isinstance(info.value, SandboxTimeout)


def test_long_multiline_error_is_one_truncated_line(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError) as info:
        sandbox.run("selftest", b"", {"op": "raise", "message": "line\n" * 1000}, LIMITS)
    message = str(info.value)
    assert "\n" not in message
    assert "ValueError: line line" in message
    assert len(message) < 700


def test_unknown_converter_module(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="ModuleNotFoundError"):
        sandbox.run("no_such_converter", b"data", {}, LIMITS)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../selftest",
        "selftest\n",
        "selftest/../x",
        "detox.converters.selftest",
        "os.path",
        "Selftest",
        "self-test",
        "pdf2",
        "_private",
        "__init__",
        "selftest ",
        "ｓｅｌｆｔｅｓｔ",
        "a" * 65,
    ],
)
def test_malicious_or_malformed_module_names_are_refused(sandbox: Sandbox, name: str) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxError, match="refused converter name"):
        sandbox.run(name, b"", {}, LIMITS)
    assert time.monotonic() - started < 0.5  # refused before any process starts


def test_child_refuses_bad_names_itself() -> None:
    """Defence in depth: the child checks argv again before importing anything."""
    for argv in (["../x"], ["selftest\n"], ["selftest", "extra"], []):
        proc = subprocess.run(
            [sys.executable, "-I", "-m", CHILD_MODULE, *argv],
            input=b"",
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 2, argv
        assert b"refused converter name" in proc.stderr
        assert proc.stdout == b""


def test_child_refuses_a_malformed_header() -> None:
    proc = subprocess.run(
        [sys.executable, "-I", "-m", CHILD_MODULE, "selftest"],
        input=(5).to_bytes(4, "big") + b"[1,2]",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert b"must be a JSON object" in proc.stderr


@pytest.mark.slow
def test_timeout_kills_the_whole_process_group(sandbox: Sandbox) -> None:
    """The converter starts a grandchild ``sleep``; on timeout both must be gone, not just the child."""
    marker = f"{300 + random.random():.9f}"
    outcome: dict[str, BaseException | bytes] = {}

    def target() -> None:
        try:
            outcome["result"] = sandbox.run(
                "selftest", b"", {"op": "sleep", "seconds": 60, "spawn": marker}, Limits(timeout_s=2)
            )
        except BaseException as exc:
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=target)
    thread.start()
    try:
        sleeping = [b"sleep", marker.encode()]
        grandchild = _wait_for(lambda: _pids_with_cmdline(sleeping), 10, "the grandchild")[0]
        child = _ppid(grandchild)
        assert CHILD_MODULE.encode() in _cmdline(child)  # the converter's python process
        assert _alive(child) and _alive(grandchild)
    finally:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert isinstance(outcome.get("error"), SandboxTimeout), outcome
    assert "ran past 2 s" in str(outcome["error"])
    assert elapsed < 6
    _wait_for(lambda: not _alive(child) and not _alive(grandchild), 5, "the process group to die")


def test_output_cap(sandbox: Sandbox) -> None:
    limits = Limits(timeout_s=20, max_output_bytes=1 * MiB)
    assert len(sandbox.run("selftest", b"", {"op": "big_output", "size": MiB}, limits)) == MiB
    with pytest.raises(SandboxError, match="more than 1048576 bytes"):
        sandbox.run("selftest", b"", {"op": "big_output", "size": 5 * MiB}, limits)


def test_memory_limit(sandbox: Sandbox) -> None:
    limits = Limits(timeout_s=20, memory_bytes=512 * MiB)
    assert sandbox.run("selftest", b"", {"op": "memory", "size": 64 * MiB}, limits) == b"allocated 67108864"
    with pytest.raises(SandboxError, match="MemoryError"):
        sandbox.run("selftest", b"", {"op": "memory", "size": 1024 * MiB}, limits)


@pytest.mark.slow
def test_cpu_limit(sandbox: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxError, match="SIGXCPU") as info:
        sandbox.run("selftest", b"", {"op": "cpu", "seconds": 30}, Limits(timeout_s=20, cpu_s=1))
    assert not isinstance(info.value, SandboxTimeout)
    assert time.monotonic() - started < 10


def test_rlimits_are_applied(sandbox: Sandbox) -> None:
    limits = Limits(memory_bytes=700 * MiB, cpu_s=9, max_file_bytes=3 * MiB, max_open_files=77)
    got = run_json(sandbox, {"op": "limits"}, limits)
    assert got["RLIMIT_AS"] == [700 * MiB, 700 * MiB]
    assert got["RLIMIT_CPU"] == [9, 10]
    assert got["RLIMIT_FSIZE"] == [3 * MiB, 3 * MiB]
    assert got["RLIMIT_NOFILE"] == [77, 77]
    assert got["RLIMIT_CORE"] == [0, 0]


def test_processes_are_capped_when_not_root(sandbox: Sandbox) -> None:
    if os.getuid() == 0:
        pytest.skip("RLIMIT_NPROC does not apply to uid 0 (nor to a user namespace mapped to it)")
    got = run_json(sandbox, {"op": "fork_bomb_guard", "count": 200}, Limits(timeout_s=20, max_processes=8))
    assert got["started"] < 200
    assert got["error"] == "EAGAIN"


def test_env_is_minimal(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETOX_TEST_SECRET", "hunter2-" + uuid.uuid4().hex)
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/evil.so")
    env = run_json(sandbox, {"op": "env"})
    assert set(env) <= ALLOWED_ENV
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["LANG"] == "C.UTF-8"
    assert "hunter2" not in json.dumps(env)


@pytest.mark.slow
def test_concurrent_runs(sandbox: Sandbox) -> None:
    payloads = [os.urandom(100_000 + i) for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda d: sandbox.run("selftest", d, {"op": "echo"}, LIMITS), payloads))
    assert results == payloads


# --- isolation: bubblewrap only --------------------------------------------------------------------


def test_network_unsandboxed_connects_proving_the_probe_works(
    unsandboxed: SubprocessSandbox, listener: tuple[str, int]
) -> None:
    host, port = listener
    assert unsandboxed.run("selftest", b"", {"op": "net", "host": host, "port": port}, LIMITS) == b"connected"


def test_no_network_inside_bwrap(bwrap: BwrapSandbox, listener: tuple[str, int]) -> None:
    host, port = listener
    out = bwrap.run("selftest", b"", {"op": "net", "host": host, "port": port}, LIMITS)
    assert out == b"blocked: ECONNREFUSED"  # its own loopback: the host's listener is not there
    out = bwrap.run("selftest", b"", {"op": "net", "host": "192.0.2.1", "port": 25, "timeout": 5}, LIMITS)
    assert out == b"blocked: ENETUNREACH"  # no interface but lo, no route anywhere


def test_runs_as_nobody(bwrap: BwrapSandbox) -> None:
    who = run_json(bwrap, {"op": "whoami"})
    assert (who["uid"], who["euid"], who["gid"], who["egid"]) == (65534, 65534, 65534, 65534)
    assert who["user"] == "nobody"
    assert who["groups"] in ([], [65534])
    assert (who["cwd"], who["tmpdir"], who["hostname"]) == ("/tmp", "/tmp", "detox-sandbox")


def test_system_and_package_are_read_only(bwrap: BwrapSandbox) -> None:
    package_dir = Path(detox.__file__).parent
    for path in ("/usr/detox-sandbox-test", "/usr/lib/detox-sandbox-test", str(package_dir / "sbx-test.py")):
        got = run_json(bwrap, {"op": "write_file", "path": path})
        assert got == {"ok": False, "error": "EROFS"}, path
        assert not Path(path).exists()
    for path in ("/etc/passwd", "/etc/ld.so.preload", "/detox-test", "/dev/detox-test", "/var/detox-test"):
        got = run_json(bwrap, {"op": "write_file", "path": path})
        assert got == {"ok": False, "error": "EROFS"}, path


def test_only_tmp_and_shm_are_writable_and_both_are_capped(bwrap: BwrapSandbox) -> None:
    mounts = run_json(bwrap, {"op": "read_file", "path": "/proc/mounts"}, Limits(max_file_bytes=100 * MiB))
    writable = {}
    for line in mounts["content"].splitlines():
        _, target, fstype, options = line.split()[:4]
        if "rw" in options.split(",") and fstype not in {"proc", "devpts", "devtmpfs"}:
            writable[target] = options
    assert set(writable) == {"/tmp", "/dev/shm"}
    assert "size=204800k" in writable["/tmp"]  # two files of the largest size allowed
    assert "size=65536k" in writable["/dev/shm"]
    assert run_json(bwrap, {"op": "write_file", "path": "/dev/shm/x"}) == {"ok": True, "error": None}


def test_tmp_is_writable_and_private(bwrap: BwrapSandbox, tmp_path: Path) -> None:
    name = f"detox-sandbox-test-{uuid.uuid4().hex}"
    host_file = Path("/tmp") / f"{name}-host"
    host_file.write_text("host secret")
    try:
        assert run_json(bwrap, {"op": "write_file", "path": f"/tmp/{name}"}) == {"ok": True, "error": None}
        assert not (Path("/tmp") / name).exists()
        listing = run_json(bwrap, {"op": "listdir", "path": "/tmp"})
        assert host_file.name not in listing
        assert run_json(bwrap, {"op": "read_file", "path": str(host_file)})["error"] == "ENOENT"
    finally:
        host_file.unlink()
    # Each run gets a fresh /tmp.
    assert name not in run_json(bwrap, {"op": "listdir", "path": "/tmp"})


def test_only_the_needed_host_files_are_visible(bwrap: BwrapSandbox) -> None:
    etc = set(run_json(bwrap, {"op": "listdir", "path": "/etc"}))
    assert {"passwd", "group", "ld.so.cache"} <= etc
    assert not etc & {"shadow", "gshadow", "hosts", "resolv.conf", "ssh", "ssl", "machine-id", "hostname"}
    passwd = run_json(bwrap, {"op": "read_file", "path": "/etc/passwd"})["content"]
    assert passwd.splitlines() == [
        "root:x:0:0:root:/root:/usr/sbin/nologin",
        "nobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin",
    ]
    top = set(run_json(bwrap, {"op": "listdir", "path": "/"}))
    system = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "var", "proc", "dev", "tmp"}
    assert top <= system | {Path(p).parts[1] for p in bwrap.bind_paths}
    repo_root = Path(detox.__file__).parent.parent
    for secret in (repo_root / "pyproject.toml", Path("/root/.bash_history"), Path("/etc/shadow")):
        assert run_json(bwrap, {"op": "read_file", "path": str(secret)})["ok"] is False, secret


def test_bind_paths_come_from_the_running_interpreter(bwrap: BwrapSandbox) -> None:
    binds = bwrap.bind_paths
    package_dir = str(Path(detox.__file__).parent)
    assert "/" not in binds
    assert all(not p.startswith("/usr/") for p in binds)
    for needed in (sys.prefix, sys.base_prefix, package_dir):
        if not needed.startswith("/usr/"):
            assert any(needed == b or needed.startswith(b + "/") for b in binds), needed


# --- construction and configuration ---------------------------------------------------------------


def test_subprocess_sandbox_refuses_without_allow() -> None:
    with pytest.raises(SandboxError, match=r"unsandboxed.*allow_unsandboxed = true"):
        SubprocessSandbox()


def test_make_sandbox_picks_the_configured_provider() -> None:
    config = DetoxConfig(
        sandbox=SandboxConfig(provider="subprocess", allow_unsandboxed=True, memory_mb=512, cpu_s=7)
    )
    sandbox = make_sandbox(config)
    assert isinstance(sandbox, SubprocessSandbox)
    assert sandbox.default_limits.memory_bytes == 512 * MiB
    assert sandbox.default_limits.cpu_s == 7
    # The configured values are also ceilings: a filter asking for more gets the operator's value.
    got = run_json(sandbox, {"op": "limits"}, Limits(memory_bytes=4096 * MiB, cpu_s=600))
    assert got["RLIMIT_AS"] == [512 * MiB, 512 * MiB]
    assert got["RLIMIT_CPU"] == [7, 8]

    with pytest.raises(SandboxError, match="allow_unsandboxed"):
        make_sandbox(DetoxConfig(sandbox=SandboxConfig(provider="subprocess")))

    require_bwrap()
    assert isinstance(make_sandbox(DetoxConfig()), BwrapSandbox)


def test_missing_bwrap_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match=r"bubblewrap \(bwrap\) is not installed"):
        make_sandbox(DetoxConfig())
