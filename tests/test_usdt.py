"""Tests for scope_ebpf.usdt: arg-spec parsing, note parsing, robustness on bad input."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scope_ebpf.usdt import (
    REGS,
    ArgSpec,
    ProbeError,
    find_python_binary,
    parse_arg_spec,
    read_probes,
)

PY311 = "/usr/bin/python3.11"
needs_py311 = pytest.mark.skipif(not os.path.exists(PY311), reason="needs Debian python3.11")


def r(name: str) -> int:
    return REGS.index(name)


def test_regs_order_is_fixed() -> None:
    # The BPF C switch depends on this exact order.
    assert REGS == (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
        "rax", "rcx", "rdx", "rsi", "rdi", "rip", "rsp",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "8@%rbp 8@%r12 -4@%eax",
            (
                ArgSpec(8, False, "reg", r("rbp"), 0),
                ArgSpec(8, False, "reg", r("r12"), 0),
                ArgSpec(4, True, "reg", r("rax"), 0),
            ),
        ),
        ("-4@112(%rsp)", (ArgSpec(4, True, "mem", r("rsp"), 112),)),
        ("-8@%r12", (ArgSpec(8, True, "reg", r("r12"), 0),)),
        ("8@$5", (ArgSpec(8, False, "const", -1, 5),)),
        ("-4@$-1", (ArgSpec(4, True, "const", -1, -1),)),
        ("4@-20(%rbp)", (ArgSpec(4, False, "mem", r("rbp"), -20),)),
        ("8@(%rbx)", (ArgSpec(8, False, "mem", r("rbx"), 0),)),
        ("-4@%edx", (ArgSpec(4, True, "reg", r("rdx"), 0),)),
        (
            "2@%ax 1@%al 1@%sil 1@%dil",
            tuple(
                ArgSpec(s, False, "reg", r(n), 0)
                for s, n in ((2, "rax"), (1, "rax"), (1, "rsi"), (1, "rdi"))
            ),
        ),
        (
            "4@%r12d 2@%r12w 1@%r12b 8@%r9",
            tuple(
                ArgSpec(s, False, "reg", r(n), 0)
                for s, n in ((4, "r12"), (2, "r12"), (1, "r12"), (8, "r9"))
            ),
        ),
        ("", ()),
    ],
)
def test_parse_arg_spec(text: str, expected: tuple[ArgSpec, ...]) -> None:
    assert parse_arg_spec(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "8@(%rax,%rbx,8)",
        "8@8(%rax,%rbx,8)",
        "8@foo(%rip)",
        "8@16(%rip)",
        "-4@%xmm0",
        "3@%rax",
        "8@%nosuch",
        "8",
        "%rax",
        "8@",
        "8@$sym",
    ],
)
def test_parse_arg_spec_rejects(text: str) -> None:
    with pytest.raises(ProbeError):
        parse_arg_spec(text)


@needs_py311
def test_python311_function_entry_offsets() -> None:
    """Verified on this machine: these are the file offsets a uprobe needs."""
    probes = {p.name: p for p in read_probes(PY311)}
    entry = probes["function__entry"]
    assert (entry.provider, entry.path) == ("python", PY311)
    assert entry.offset == 0xF20A1
    assert entry.semaphore_offset == 0x683260
    assert entry.args == parse_arg_spec("8@%rbp 8@%r12 -4@%eax")
    assert {"function__return", "gc__start", "gc__done", "line"} <= probes.keys()


def _readelf_notes(path: str) -> list[tuple[str, str, int, int, int, str]]:
    out = subprocess.run(
        ["readelf", "-nW", path], capture_output=True, text=True, check=True
    ).stdout
    pat = re.compile(
        r"Provider: (\S+)\s+Name: (\S+)\s+Location: (0x[0-9a-f]+), Base: (0x[0-9a-f]+), "
        r"Semaphore: (0x[0-9a-f]+)\s+Arguments: ?([^\n]*)"
    )
    return [
        (m[1], m[2], int(m[3], 16), int(m[4], 16), int(m[5], 16), m[6].strip())
        for m in pat.finditer(out)
    ]


def _vaddr_to_offset(path: str, vaddr: int) -> int:
    out = subprocess.run(
        ["readelf", "-lW", path], capture_output=True, text=True, check=True
    ).stdout
    for m in re.finditer(r"LOAD\s+(0x\w+)\s+(0x\w+)\s+0x\w+\s+0x\w+\s+(0x\w+)", out):
        off, va, memsz = (int(x, 16) for x in m.groups())
        if va <= vaddr < va + memsz:
            return vaddr - va + off
    raise AssertionError(f"{vaddr:#x} not mapped")


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils")
@pytest.mark.parametrize("path", [PY311, "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"])
def test_matches_readelf(path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} missing")
    expected = _readelf_notes(path)
    assert expected, "readelf found no notes"
    got = read_probes(path)
    assert len(got) == len(expected)
    for p, (prov, name, loc, _base, sem, args) in zip(got, expected, strict=True):
        # No prelink on these files: .stapsdt.base address == note base.
        assert (p.provider, p.name) == (prov, name)
        assert p.offset == _vaddr_to_offset(path, loc)
        assert p.semaphore_offset == (_vaddr_to_offset(path, sem) if sem else 0)
        assert p.args == parse_arg_spec(args)


def test_no_notes_returns_empty() -> None:
    assert read_probes("/bin/true") == []


def test_non_elf_and_missing(tmp_path: Path) -> None:
    for content in (b"", b"\x7fEL", b"#!/bin/sh\necho hi\n", b"\x7fELF" + b"\0" * 8):
        f = tmp_path / "bad"
        f.write_bytes(content)
        with pytest.raises(ProbeError):
            read_probes(str(f))
    with pytest.raises(ProbeError):
        read_probes(str(tmp_path / "does-not-exist"))
    with pytest.raises(ProbeError):
        read_probes(str(tmp_path))  # a directory


@needs_py311
def test_truncated_and_corrupted(tmp_path: Path) -> None:
    """Truncations and random byte flips must give a result or ProbeError, nothing else."""
    data = Path(PY311).read_bytes()
    f = tmp_path / "mangled"
    for cut in (16, 64, 100, 0x1000, 0x683278 + 0x100, len(data) - 1):
        f.write_bytes(data[:cut])
        with pytest.raises(ProbeError):
            read_probes(str(f))
    # Headers and the note section are where the parser looks: mangle those.
    hot = list(range(0, 0x40)) + list(range(0x683278, 0x683278 + 0x290))
    hot += list(range(len(data) - 64 * 40, len(data)))  # section headers at the end
    rng = random.Random(1234)
    buf = bytearray(data)
    for _ in range(200):
        mutated = bytearray(buf)
        for pos in rng.sample(hot, 4):
            mutated[pos] = rng.randrange(256)
        f.write_bytes(mutated)
        try:
            read_probes(str(f))
        except ProbeError:
            pass


def test_find_python_binary_self() -> None:
    path = find_python_binary(os.getpid())
    assert path == os.path.realpath(sys.executable)  # our own root: the readable name
    assert os.path.exists(path)
    real = os.path.realpath(sys.executable)
    maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    if "libpython3" not in maps:
        assert os.path.samefile(path, real)


def test_find_python_binary_in_a_chroot_is_the_mapped_file(tmp_path) -> None:
    # A chrooted process: /proc/PID/exe shows a path of *our* root. Whatever
    # form is returned must open the very file the process runs.
    import subprocess

    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    sleep = root / "bin" / "sleep"
    sleep.write_bytes(Path("/bin/sleep").read_bytes())
    sleep.chmod(0o755)
    for lib in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(lib).read_bytes())
        dest.chmod(0o755)
    p = subprocess.Popen(["chroot", str(root), "/bin/sleep", "5"])
    try:
        import time

        time.sleep(0.2)
        path = find_python_binary(p.pid)
        assert os.path.samefile(path, sleep)
    finally:
        p.kill()
        p.wait()


def test_find_python_binary_gone() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(ProbeError, match="does not exist"):
        find_python_binary(proc.pid)
