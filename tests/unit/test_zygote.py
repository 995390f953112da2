"""The resident converter sandbox (a zygote forking one child per document), tested for real.

Real bubblewrap, real converters, real processes; each hostile document is followed by a clean one whose
result must be exactly its own. The common behaviour (echo, errors, limits, names...) runs through the
resident path too: see the ``sandbox`` fixture of test_sandbox.py.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from test_sandbox import LIMITS, MiB, _alive, _cmdline, _pids_with_cmdline, _wait_for, require_bwrap

from detox.config.schema import DetoxConfig, SandboxConfig
from detox.errors import SandboxError, SandboxTimeout
from detox.filters.pdf import PdfOptions
from detox.sandbox import make_sandbox
from detox.sandbox.base import Limits
from detox.sandbox.bwrap import BwrapSandbox
from detox.sandbox.contract import ZYGOTE_MODULE, unpack_result
from detox.sandbox.process import ChildProcessSandbox, SubprocessSandbox


def _make(provider: str, *, resident: bool = True) -> ChildProcessSandbox:
    if provider == "bwrap":
        require_bwrap()
        return BwrapSandbox(resident=resident)
    return SubprocessSandbox(allowed=True, resident=resident)


def _zygote_processes(sandbox: ChildProcessSandbox) -> list[int]:
    """The host pids of the zygote's process (bwrap, or the zygote itself) and all its descendants."""
    root = sandbox.zygote().pid
    assert root is not None
    found = [root]
    for pid in found:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if children.exists():
            found += [int(c) for c in children.read_text().split()]
    return found


@pytest.fixture(params=["subprocess", "bwrap"])
def resident(request: pytest.FixtureRequest) -> Iterator[ChildProcessSandbox]:
    sandbox = _make(request.param)
    try:
        yield sandbox
    finally:
        started = sandbox.zygote().pid
        sandbox.close()
        if started is not None:  # nothing of it survives close()
            _wait_for(lambda: not _alive(started), 10, "the zygote to end")


@pytest.fixture
def resident_bwrap() -> Iterator[ChildProcessSandbox]:
    sandbox = _make("bwrap")
    try:
        yield sandbox
    finally:
        sandbox.close()


def _echo_is_exact(sandbox: ChildProcessSandbox) -> None:
    data = random.Random().randbytes(300_000)
    assert sandbox.run("selftest", data, {"op": "echo"}, LIMITS) == data


def _self_stat(sandbox: ChildProcessSandbox) -> tuple[int, int]:
    got = json.loads(sandbox.run("selftest", b"", {"op": "read_file", "path": "/proc/self/stat"}, LIMITS))
    fields = got["content"].rsplit(")", 1)[1].split()
    return int(got["content"].split()[0]), int(fields[1])


# --- the resident path is really used --------------------------------------------------------------


def test_one_zygote_forks_a_fresh_child_per_document(resident: ChildProcessSandbox) -> None:
    first, parent = _self_stat(resident)
    second, parent_again = _self_stat(resident)
    assert first != second  # a new process for each document...
    assert parent == parent_again  # ...forked by the same zygote
    assert resident.zygote().starts == 1
    assert ZYGOTE_MODULE.encode() in b" ".join(_cmdline(resident.zygote().pid or 0))


def test_config_switch() -> None:
    require_bwrap()
    assert isinstance(make_sandbox(DetoxConfig()), BwrapSandbox)
    assert make_sandbox(DetoxConfig()).resident is True  # type: ignore[attr-defined]
    off = DetoxConfig(sandbox=SandboxConfig(resident_converters=False))
    one_shot = make_sandbox(off)
    assert one_shot.resident is False  # type: ignore[attr-defined]
    _, parent = _self_stat(one_shot)  # type: ignore[arg-type]
    assert parent == 1  # bwrap's init: no zygote in between
    with pytest.raises(ValueError, match="resident_converters"):
        SandboxConfig(resident_converters="maybe")  # type: ignore[arg-type]


def _pdf() -> bytes:
    pages = []
    for number in range(3):
        page = Image.new("RGB", (620, 877), "white")
        draw = ImageDraw.Draw(page)
        draw.text((60, 60), f"detox page {number + 1}", fill="black")
        draw.rectangle((80, 200 + number * 40, 400, 500), outline=(200, 0, 0), width=5)
        pages.append(page)
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    return buf.getvalue()


def _images() -> dict[str, bytes]:
    rng = random.Random(7)
    photo = Image.new("RGB", (320, 240))
    photo.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(320 * 240)])
    out = {}
    for fmt, image in (("JPEG", photo), ("PNG", photo.convert("RGBA")), ("GIF", photo.convert("P"))):
        buf = io.BytesIO()
        image.save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


_PDF_ID = re.compile(rb"/ID ?\[<[0-9a-f]{32}> ?<[0-9a-f]{32}>\]")


@pytest.mark.slow
def test_pdf_and_image_results_identical_to_one_shot() -> None:
    one_shot, resident = _make("bwrap", resident=False), _make("bwrap")
    try:
        pdf = _pdf()
        limits = Limits(timeout_s=60)
        for extra in ({}, {"image_format": "png"}, {"mode": "sanitize"}):
            args = {**PdfOptions().model_dump(), **extra}
            header_a, body_a = unpack_result(one_shot.run("pdf", pdf, args, limits))
            header_b, body_b = unpack_result(resident.run("pdf", pdf, args, limits))
            header_c, body_c = unpack_result(resident.run("pdf", pdf, args, limits))
            assert header_a == header_b == header_c and header_a["status"] == "ok", extra
            # The converter gives every output a fresh random /ID: forked children must not share it.
            ids = [_PDF_ID.search(body) for body in (body_a, body_b, body_c)]
            assert all(ids) and len({m.group() for m in ids if m}) == 3
            assert _PDF_ID.sub(b"", body_a) == _PDF_ID.sub(b"", body_b) == _PDF_ID.sub(b"", body_c), extra
        args = {"max_pixels": 50_000_000, "max_width": 20_000, "max_height": 20_000, "jpeg_quality": 85}
        for fmt, data in _images().items():
            assert one_shot.run("image", data, args, limits) == resident.run("image", data, args, limits), fmt
        assert resident.zygote().starts == 1
    finally:
        resident.close()


# --- hostile documents: each fails alone, the next one is unaffected --------------------------------


def test_extra_bytes_from_a_lingering_writer_never_reach_the_next_document(
    resident: ChildProcessSandbox,
) -> None:
    with pytest.raises(SandboxError, match=r"left 1 process\(es\) running") as info:
        resident.run("selftest", b"mine", {"op": "spill", "seconds": 30, "extra": "SPOOF"}, LIMITS)
    assert not isinstance(info.value, SandboxTimeout)  # found at once, not by waiting for the deadline
    _echo_is_exact(resident)
    assert resident.run("selftest", b"next", {"op": "echo"}, LIMITS) == b"next"
    assert resident.zygote().starts == 2


def test_output_beyond_the_cap_recycles_the_sandbox(resident: ChildProcessSandbox) -> None:
    limits = Limits(timeout_s=20, max_output_bytes=MiB)
    with pytest.raises(SandboxError, match="more than 1048576 bytes"):
        resident.run("selftest", b"", {"op": "big_output", "size": 50 * MiB}, limits)
    assert resident.zygote().pid is None  # killed, not kept with a child still writing
    _echo_is_exact(resident)


def test_a_background_process_fails_the_document_and_is_killed(resident: ChildProcessSandbox) -> None:
    marker = f"{400 + random.random():.9f}"
    with pytest.raises(SandboxError, match=r"left 1 process\(es\) running") as info:
        resident.run("selftest", b"x", {"op": "daemon", "marker": marker}, LIMITS)
    assert not isinstance(info.value, SandboxTimeout)
    _wait_for(lambda: not _pids_with_cmdline([b"sleep", marker.encode()]), 10, "the daemon to be killed")
    _echo_is_exact(resident)
    assert resident.zygote().starts == 2


@pytest.mark.slow
def test_timeout_kills_the_sandbox_and_the_next_document_gets_a_new_one(
    resident: ChildProcessSandbox,
) -> None:
    _echo_is_exact(resident)
    before = _zygote_processes(resident)
    marker = f"{500 + random.random():.9f}"
    with pytest.raises(SandboxTimeout, match="ran past 2 s"):
        resident.run("selftest", b"", {"op": "sleep", "seconds": 60, "spawn": marker}, Limits(timeout_s=2))
    _wait_for(lambda: not any(_alive(pid) for pid in before), 10, "the old sandbox to die")
    _wait_for(lambda: not _pids_with_cmdline([b"sleep", marker.encode()]), 10, "the grandchild to die")
    _echo_is_exact(resident)
    assert resident.zygote().starts == 2


def test_a_crash_by_signal_fails_the_document_and_recycles(resident: ChildProcessSandbox) -> None:
    _echo_is_exact(resident)
    with pytest.raises(SandboxError, match="killed by SIGSEGV"):
        resident.run("selftest", b"", {"op": "crash", "how": "segv"}, LIMITS)
    _echo_is_exact(resident)
    assert resident.zygote().starts == 2  # a fresh address-space layout after a crash


def test_an_abrupt_exit_fails_the_document_only(resident: ChildProcessSandbox) -> None:
    _echo_is_exact(resident)
    with pytest.raises(SandboxError, match="exit status 3"):
        resident.run("selftest", b"LEAK", {"op": "crash", "how": "exit", "code": 3}, LIMITS)
    assert resident.run("selftest", b"clean", {"op": "echo"}, LIMITS) == b"clean"
    assert resident.zygote().starts == 1


@pytest.mark.slow
def test_memory_limit_is_the_documents_own(resident: ChildProcessSandbox) -> None:
    limits = Limits(timeout_s=20, memory_bytes=512 * MiB)
    with pytest.raises(SandboxError, match="MemoryError"):
        resident.run("selftest", b"", {"op": "memory", "size": 1024 * MiB}, limits)
    assert (
        resident.run("selftest", b"", {"op": "memory", "size": 1024 * MiB}, LIMITS) == b"allocated 1073741824"
    )
    limits = Limits(memory_bytes=700 * MiB, cpu_s=9, max_file_bytes=3 * MiB, max_open_files=77)
    got = json.loads(resident.run("selftest", b"", {"op": "limits"}, limits))
    assert got["RLIMIT_AS"] == [700 * MiB, 700 * MiB]
    assert got["RLIMIT_CPU"] == [9, 10]
    assert got["RLIMIT_NOFILE"] == [77, 77]
    _echo_is_exact(resident)


def test_a_child_cannot_read_or_trace_the_zygote(resident_bwrap: ChildProcessSandbox) -> None:
    got = json.loads(resident_bwrap.run("selftest", b"", {"op": "probe_parent"}, LIMITS))
    # environ and maps need only "read" access, which a same-uid process has unless the zygote is
    # not dumpable; mem and ptrace need "attach" access.
    assert got == {"mem": "EACCES", "environ": "EACCES", "maps": "EACCES", "ptrace": "EPERM"}, got
    _echo_is_exact(resident_bwrap)


def test_files_a_document_leaves_are_gone_for_the_next(resident_bwrap: ChildProcessSandbox) -> None:
    assert resident_bwrap.run("selftest", b"secret", {"op": "leave_files", "count": 5}, LIMITS) == b"secret"
    listing = {
        path: json.loads(resident_bwrap.run("selftest", b"", {"op": "listdir", "path": path}, LIMITS))
        for path in ("/tmp", "/dev/shm", ".")
    }
    assert listing["/tmp"] == [listing["/tmp"][0]] and listing["/tmp"][0].startswith("doc-")
    assert listing["/dev/shm"] == [] and listing["."] == []


@pytest.mark.slow
def test_too_many_files_fail_the_document_and_recycle(resident_bwrap: ChildProcessSandbox) -> None:
    with pytest.raises(SandboxError, match="more than 10000 files left in /"):
        resident_bwrap.run("selftest", b"", {"op": "leave_files", "count": 10_001}, LIMITS)
    _echo_is_exact(resident_bwrap)
    assert resident_bwrap.zygote().starts == 2


def test_system_v_ipc_left_fails_the_document_and_recycles(resident_bwrap: ChildProcessSandbox) -> None:
    with pytest.raises(SandboxError, match="System V IPC objects left"):
        resident_bwrap.run("selftest", b"x", {"op": "sysv_shm"}, LIMITS)
    got = json.loads(
        resident_bwrap.run("selftest", b"", {"op": "read_file", "path": "/proc/sysvipc/shm"}, LIMITS)
    )
    assert len(got["content"].splitlines()) == 1  # the header only: a fresh IPC namespace
    assert resident_bwrap.zygote().starts == 2


@pytest.mark.slow
def test_a_dead_zygote_is_replaced(resident: ChildProcessSandbox) -> None:
    _echo_is_exact(resident)
    zygote = next(
        pid for pid in _zygote_processes(resident) if ZYGOTE_MODULE.encode() in b" ".join(_cmdline(pid))
    )
    os.kill(zygote, signal.SIGKILL)
    _wait_for(lambda: not _alive(zygote), 10, "the zygote to die")
    _echo_is_exact(resident)
    assert resident.zygote().starts == 2


def test_other_threads_take_the_one_shot_path(resident: ChildProcessSandbox) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        _, parent = pool.submit(_self_stat, resident).result()
    assert resident.zygote().starts == 0
    _, zygote = _self_stat(resident)
    assert parent != zygote


def test_a_fork_of_the_worker_leaves_the_zygote_alone(resident: ChildProcessSandbox) -> None:
    """A forked child (Popen with preexec_fn, a fork-based pool) drops its copy of the zygote without
    touching the parent's: its directory, its socket, its process."""
    _echo_is_exact(resident)
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # after the at-fork handlers ran in this child
    os.waitpid(pid, 0)
    _echo_is_exact(resident)
    assert resident.zygote().starts == 1
