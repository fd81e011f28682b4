"""The interpreter's machine code around the points the tracer probes.

USDT arguments tell a function probe's name, file and line, not which frame
fired it; an exact call model needs the frame (a generator's creation is not
a call, and a return must pop the frame it belongs to). CPython 3.15 fires
its function probes from small helpers that take the ``_PyInterpreterFrame``
as their one argument and keep it in a callee-saved register until the probe:
which register is a compiler's choice, so it is read from the code itself.
"""

from __future__ import annotations

import capstone
from capstone import x86

from .. import usdt

ENDBR64 = b"\xf3\x0f\x1e\xfa"
_CALLEE_SAVED = {"rbx", "rbp", "r12", "r13", "r14", "r15"}
_WINDOW = 256  # the helpers are well under this many bytes long


def _decoder() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def frame_register(path: str, offset: int) -> int | None:
    """usdt.REGS index of the register that holds the probe's frame at the probe
    site at file ``offset``, or None if the code there is not such a helper.

    The helper starts at the nearest endbr64 before the site; decoded from
    there, the site must be an instruction boundary, and the register is the
    callee-saved one that ``rdi`` (the frame argument) was copied into and that
    nothing wrote again before the site."""
    start = max(0, offset - _WINDOW)
    try:
        code = usdt.read_at(path, start, offset - start)
    except usdt.ProbeError:
        return None
    i = code.rfind(ENDBR64)
    if i < 0:
        return None
    saved: str | None = None
    end = start + i
    for insn in _decoder().disasm(code[i:], start + i):
        end = insn.address + insn.size
        if insn.mnemonic in ("ret", "jmp") or insn.group(x86.X86_GRP_RET):
            saved = None  # left the helper: what came before is another function
            continue
        ops = insn.operands
        if (insn.mnemonic == "mov" and len(ops) == 2 and ops[0].type == x86.X86_OP_REG
                and ops[1].type == x86.X86_OP_REG and insn.reg_name(ops[1].reg) == "rdi"
                and insn.reg_name(ops[0].reg) in _CALLEE_SAVED):
            saved = insn.reg_name(ops[0].reg)
            continue
        if saved is not None:
            _read, written = insn.regs_access()
            if any(insn.reg_name(r) == saved for r in written):
                saved = None
    if end != offset or saved is None:
        return None
    return usdt.REGS.index(saved)
