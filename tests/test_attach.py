"""Kernel tests for scope_ebpf.attach: cookies, exact hit counts, kernel-managed semaphores.

The target runs a private copy of python3.11 so that other tracers attached to
/usr/bin/python3.11 (parallel test runs, bcc tools) cannot share our uprobes,
which would both add hits and keep the semaphore raised after we detach.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scope_ebpf.attach import AttachError, UprobeLink
from scope_ebpf.usdt import Probe, read_probes

PY311 = "/usr/bin/python3.11"
N_CALLS = 37
N_GC = 5

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.exists(PY311), reason="needs Debian python3.11"),
]

BPF_TEXT = """
BPF_ARRAY(counts, u64, 4);
int on_hit(struct pt_regs *ctx) {
    u32 k = bpf_get_attach_cookie(ctx) & 3;
    u64 *v = counts.lookup(&k);
    if (v) __sync_fetch_and_add(v, 1);
    return 0;
}
"""

# Waits on stdin twice: once so we can attach before the measured work, once so
# we can read counters/semaphores while still attached.  gc is disabled so only
# explicit collections fire gc__start; the profile hook is removed (a C call, no
# function__entry) before reporting, so exactly N_CALLS entries are for f().
# Raw os.read/os.write: sys.stdin's text decoder is Python code (codecs.decode)
# and would add a function__entry of its own.
TARGET = f"""
import gc, os, sys
gc.disable()
def f():
    pass
sys.setprofile(lambda *a: None)
os.write(1, b"ready\\n")
os.read(0, 100)
for _ in range({N_CALLS}):
    f()
for _ in range({N_GC}):
    gc.collect()
sys.setprofile(None)
os.write(1, b"done\\n")
os.read(0, 100)
"""


@pytest.fixture(scope="module")
def bpf_prog() -> Iterator[tuple[object, int]]:
    bcc = pytest.importorskip("bcc")
    b = bcc.BPF(text=BPF_TEXT.encode())
    yield b, b.load_func(b"on_hit", bcc.BPF.KPROBE).fd
    b.cleanup()


@pytest.fixture
def python_copy(tmp_path: Path) -> str:
    dst = tmp_path / "python3.11"
    shutil.copy2(PY311, dst)
    return str(dst)


def _probe(path: str, name: str) -> Probe:
    (p,) = [p for p in read_probes(path) if p.name == name]
    return p


def _semaphore(pid: int, path: str, file_offset: int) -> int:
    """Read the 2-byte semaphore in ``pid`` by mapping its file offset through /proc/PID/maps."""
    ino = os.stat(path).st_ino
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) < 6 or int(fields[4]) != ino:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        off = int(fields[2], 16)
        if off <= file_offset < off + (end - start):
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(start + file_offset - off)
                return int.from_bytes(mem.read(2), "little")
    raise AssertionError(f"semaphore offset {file_offset:#x} not mapped in {pid}")


def _reset(b: object) -> None:
    counts = b[b"counts"]  # type: ignore[index]
    for k in range(4):
        counts[counts.Key(k)] = counts.Leaf(0)


def _counts(b: object) -> list[int]:
    counts = b[b"counts"]  # type: ignore[index]
    return [counts[counts.Key(k)].value for k in range(4)]


def _start(path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [path, "-S", "-c", TARGET],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONHOME": "/usr", "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _step(proc: subprocess.Popen[str], expect: str | None) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if expect is not None:
        assert proc.stdout.readline() == expect


def test_exact_counts_cookies_and_semaphore(bpf_prog: tuple[object, int], python_copy: str) -> None:
    b, fd = bpf_prog
    entry = _probe(python_copy, "function__entry")
    gc_start = _probe(python_copy, "gc__start")
    assert entry.semaphore_offset and gc_start.semaphore_offset
    _reset(b)
    proc = _start(python_copy)
    try:
        assert _semaphore(proc.pid, python_copy, entry.semaphore_offset) == 0
        with (
            UprobeLink(fd, python_copy, entry.offset, entry.semaphore_offset, cookie=1) as l1,
            UprobeLink(fd, python_copy, gc_start.offset, gc_start.semaphore_offset, cookie=2),
        ):
            assert l1.fd >= 0 and l1.perf_fd >= 0
            # Raised by the kernel in an already-running process.
            assert _semaphore(proc.pid, python_copy, entry.semaphore_offset) > 0
            assert _semaphore(proc.pid, python_copy, gc_start.semaphore_offset) > 0
            _step(proc, "done\n")
            assert _counts(b) == [0, N_CALLS, N_GC, 0]
        assert l1.fd == -1 and l1.perf_fd == -1
        l1.close()  # idempotent
        assert _semaphore(proc.pid, python_copy, entry.semaphore_offset) == 0
        assert _semaphore(proc.pid, python_copy, gc_start.semaphore_offset) == 0
        _step(proc, None)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_semaphore_raised_in_later_process(bpf_prog: tuple[object, int], python_copy: str) -> None:
    _b, fd = bpf_prog
    entry = _probe(python_copy, "function__entry")
    with UprobeLink(fd, python_copy, entry.offset, entry.semaphore_offset, cookie=3):
        proc = _start(python_copy)
        try:
            assert _semaphore(proc.pid, python_copy, entry.semaphore_offset) > 0
        finally:
            proc.kill()
            proc.wait()


def test_semaphore_mismatch_message(bpf_prog: tuple[object, int], python_copy: str) -> None:
    _b, fd = bpf_prog
    entry = _probe(python_copy, "function__entry")
    with UprobeLink(fd, python_copy, entry.offset):  # like bcc: no kernel semaphore
        with pytest.raises(AttachError, match="another tracer"):
            UprobeLink(fd, python_copy, entry.offset, entry.semaphore_offset)


def test_missing_file(bpf_prog: tuple[object, int], tmp_path: Path) -> None:
    _b, fd = bpf_prog
    with pytest.raises(AttachError, match="not found"):
        UprobeLink(fd, str(tmp_path / "gone"), 0x1000)


def test_bad_cookie(bpf_prog: tuple[object, int], python_copy: str) -> None:
    _b, fd = bpf_prog
    with pytest.raises(AttachError):
        UprobeLink(fd, python_copy, 0x1000, cookie=-1)


def test_semaphore_dropped_when_tracer_sigkilled(python_copy: str) -> None:
    """The point of kernel-managed semaphores: a killed tracer leaves nothing raised."""
    entry = _probe(python_copy, "function__entry")
    tracer_code = (
        "import sys, time\n"
        "from bcc import BPF\n"
        "from scope_ebpf.attach import UprobeLink\n"
        f"b = BPF(text={BPF_TEXT!r})\n"
        "fd = b.load_func('on_hit', BPF.KPROBE).fd\n"
        f"link = UprobeLink(fd, {python_copy!r}, {entry.offset}, {entry.semaphore_offset})\n"
        "print('attached', flush=True)\n"
        "time.sleep(60)\n"
    )
    target = _start(python_copy)
    tracer = subprocess.Popen(
        [sys.executable, "-c", tracer_code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert tracer.stdout is not None and tracer.stdout.readline() == "attached\n"
        assert _semaphore(target.pid, python_copy, entry.semaphore_offset) > 0
        tracer.kill()
        tracer.wait()
        assert _semaphore(target.pid, python_copy, entry.semaphore_offset) == 0
    finally:
        for p in (tracer, target):
            p.kill()
            p.wait()
