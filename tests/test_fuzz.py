"""The parsers of untrusted input (ELF notes of any binary a process maps,
CPython's _Py_DebugOffsets) under malformed and truncated input: one error type,
no crash, no hang, no unbounded allocation."""

from __future__ import annotations

import io
import struct
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scope_ebpf import usdt
from scope_ebpf.errors import ScopeError
from scope_ebpf.interpreters import offsets as pyoffsets

PY311 = "/usr/bin/python3.11"
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@cache
def elf() -> bytes:
    with open(PY311, "rb") as f:
        return f.read()


@cache
def regions() -> list[tuple[int, int]]:
    """Where the parser looks: the headers, both header tables, the note section."""
    data = elf()
    hdr = struct.unpack_from("<16sHHIQQQIHHHHHH", data)
    phoff, shoff, phnum, shnum = hdr[5], hdr[6], hdr[10], hdr[12]
    out = [(0, 64), (phoff, phnum * 56), (shoff, shnum * 64)]
    for i in range(shnum):
        sh = struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * 64)
        if sh[1] == 7:  # SHT_NOTE
            out.append((sh[4], sh[5]))
    return out


def parse(data: bytes) -> None:
    try:
        usdt._read_probes(usdt._Elf(io.BytesIO(data), len(data)), "fuzz")
    except usdt.ProbeError:
        pass


def test_the_real_file_parses():
    probes = usdt._read_probes(usdt._Elf(io.BytesIO(elf()), len(elf())), PY311)
    assert {p.name for p in probes} >= {"function__entry", "gc__start"}


@FUZZ
@given(st.data())
def test_elf_with_corrupted_headers_and_notes(data):
    buf = bytearray(elf())
    for _ in range(data.draw(st.integers(1, 8))):
        start, length = data.draw(st.sampled_from(regions()))
        pos = start + data.draw(st.integers(0, max(length - 1, 0)))
        patch = data.draw(st.binary(min_size=1, max_size=8))
        buf[pos:pos + len(patch)] = patch
    parse(bytes(buf))


@FUZZ
@given(st.data())
def test_elf_truncated_anywhere(data):
    start, length = data.draw(st.sampled_from(regions()))
    cut = start + data.draw(st.integers(0, length))
    parse(elf()[:cut])


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_not_an_elf(blob):
    parse(blob)
    parse(b"\x7fELF\x02\x01" + blob)


@FUZZ
@given(st.binary(max_size=512), st.sampled_from([4, 8]))
def test_note_sections(blob, align):
    try:
        usdt._iter_stapsdt(blob, align)
    except usdt.ProbeError:
        pass


@FUZZ
@given(st.text(max_size=200))
def test_argument_strings(text):
    try:
        usdt.parse_arg_spec(text)
    except usdt.ProbeError:
        pass


@FUZZ
@given(st.binary(max_size=1024), st.integers(13, 15))
def test_debug_offsets(blob, minor):
    head = pyoffsets.COOKIE + struct.pack("<Q", (3 << 24) | (minor << 16)) + blob
    for candidate in (head, blob, head[: len(head) // 2]):
        try:
            pyoffsets.parse(candidate)
        except ScopeError:
            pass
