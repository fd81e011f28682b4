"""Where an interpreter waits for the GIL.

A thread that wants the GIL while another holds it sleeps in take_gil() on
the GIL's condition variable, in slices of the switch interval (5 ms): each
timed-out slice asks the holder to drop it. take_gil() is static (no symbol in
a stripped build), but it is the interpreter's only caller of
``pthread_cond_timedwait`` in every CPython from 3.2 on (its locks wait on
semaphores, threading.Condition on locks). So the GIL wait is exactly the
time inside that one call: a uprobe on the call instruction marks the thread,
one on the instruction after it unmarks it, and the off-CPU intervals of a
marked thread are GIL waits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .. import usdt
from .disasm import _decoder, _Fdes

WAIT = "pthread_cond_timedwait"


@dataclass(frozen=True)
class WaitSite:
    call: int   # file offset of the call instruction
    after: int  # file offset of the instruction it returns to


def wait_site(path: str) -> WaitSite:
    """The GIL wait of the interpreter file ``path``; ProbeError unless the
    code has exactly one call of ``pthread_cond_timedwait``."""
    img = usdt.Image(path)
    slot = img.import_slot(WAIT)
    targets = _stubs(img, slot)
    vaddr, off, size = img.section(".text")
    if off + size > len(img.data):
        raise usdt.ProbeError(f"{path}: .text is past the end of the file")
    sites = _calls(img.data[off:off + size], vaddr, targets, slot)
    fdes = _Fdes(img)
    found = [s for s in sites if _is_call(img, fdes, s)]
    if len(found) != 1:
        raise usdt.ProbeError(f"{path}: {len(found)} calls of {WAIT}, expected the GIL's one")
    call, length = found[0]
    return WaitSite(img.to_offset(call), img.to_offset(call + length))


def _stubs(img: usdt.Image, slot: int) -> set[int]:
    """Addresses of the PLT entries that jump through ``slot``."""
    out: set[int] = set()
    for name in (".plt", ".plt.sec"):
        try:
            vaddr, off, size = img.section(name)
        except usdt.ProbeError:
            continue
        code = img.data[off:off + size]
        at = code.find(b"\xff\x25")  # jmp *disp32(%rip)
        while at >= 0:
            if at + 6 <= len(code):
                disp = struct.unpack_from("<i", code, at + 2)[0]
                if vaddr + at + 6 + disp == slot:
                    out.add(vaddr + at - at % 16)  # PLT entries are 16 bytes
            at = code.find(b"\xff\x25", at + 1)
    return out


def _calls(code: bytes, vaddr: int, stubs: set[int], slot: int) -> list[tuple[int, int]]:
    """(address, length) of every byte pattern in ``code`` that reads as a call
    of a stub (call rel32) or through the slot (call *disp32(%rip), -fno-plt);
    patterns that are no instruction are weeded out by the caller."""
    b = np.frombuffer(code, np.uint8)
    if len(b) < 8:
        return []
    disp = np.zeros(len(b), np.int32)  # the signed 32 bits starting at each byte
    for a in range(4):
        words = np.frombuffer(code, "<i4", (len(b) - a) // 4, a)
        disp[a:a + 4 * len(words):4] = words
    out = []
    at = np.nonzero(b[:-6] == 0xE8)[0]  # call rel32, relative to the next instruction
    target = vaddr + at + 5 + disp[at + 1].astype(np.int64)
    for i in at[np.isin(target, list(stubs))]:
        out.append((vaddr + int(i), 5))
    at = np.nonzero((b[:-6] == 0xFF) & (b[1:-5] == 0x15))[0]  # call *disp32(%rip)
    for i in at[vaddr + at + 6 + disp[at + 2].astype(np.int64) == slot]:
        out.append((vaddr + int(i), 6))
    return out


def _is_call(img: usdt.Image, fdes: _Fdes, site: tuple[int, int]) -> bool:
    """Whether the function covering ``site`` decodes, from its start, to a call
    instruction exactly there."""
    addr, length = site
    func = fdes.covering(addr)
    if func is None:
        return False
    for insn in _decoder().disasm(img.read(func[0], addr + length - func[0]), func[0]):
        if insn.address == addr:
            return insn.mnemonic == "call" and insn.size == length
        if insn.address > addr:
            return False
    return False
