"""The interpreter's machine code around the points the tracer probes.

USDT arguments tell a function probe's name, file and line, not which frame
fired it; an exact call model needs the frame (a generator's creation is not
a call, a return must pop the frame it belongs to, and the def line of a
resumed generator is in its code object). CPython fires its function probes
from small helpers that take the ``_PyInterpreterFrame`` as their argument
and keep it in a callee-saved register until the probe: which register is a
compiler's choice, so it is read from the code itself.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

import capstone
from capstone import x86

from .. import usdt

_CALLEE_SAVED = {"rbx", "rbp", "r12", "r13", "r14", "r15"}


def _decoder() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def frame_registers(path: str, offsets: list[int]) -> dict[int, int | None]:
    """For each probe site (file offset): the usdt.REGS index of the register that
    holds the probe's frame there, or None if the code is not such a helper.

    The helper is the function whose FDE covers the site; decoded from its
    start, the site must be an instruction boundary, and the register is the
    callee-saved one that ``rdi`` (the frame argument) was copied into and that
    nothing wrote again before the site."""
    try:
        img = usdt.Image(path)
        fdes = _Fdes(img)
    except usdt.ProbeError:
        return dict.fromkeys(offsets)
    return {off: _frame_register(img, fdes, off) for off in offsets}


def _frame_register(img: usdt.Image, fdes: _Fdes, offset: int) -> int | None:
    try:
        site = img.to_vaddr(offset)
        func = fdes.covering(site)
        if func is None or site - func[0] > 512:
            return None
        code = img.read(func[0], site - func[0])
    except usdt.ProbeError:
        return None
    saved: str | None = None
    end = func[0]
    for insn in _decoder().disasm(code, func[0]):
        end = insn.address + insn.size
        if insn.group(capstone.CS_GRP_RET) or insn.group(capstone.CS_GRP_JUMP):
            return None  # straight-line code only: a branch could skip the copy
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
    if end != site or saved is None:
        return None
    return usdt.REGS.index(saved)


# -- the eval function's entry and exits (3.13/3.14 eval mode) ----------------
#
# A uprobe on an instruction the kernel cannot emulate is single-stepped out
# of line: an extra trap, about 3 us a hit here. Relative jmp/jcc/call, push
# of a register and nop are emulated. So the entry probe goes on the first
# such instruction of the entry block (before the arguments' registers are
# written), and each exit on the branch edges into the block that returns,
# with the branch's condition where only one direction leaves: the program
# reads it from the flags register (see exit_cond in scope.bpf.c).

# jcc mnemonic -> (condition code, negated); codes: 1 ZF, 2 SF, 3 OF, 4 PF, 5 CF,
# 6 CF|ZF, 7 SF!=OF, 8 ZF|(SF!=OF): what branch_taken() in scope.bpf.c evaluates
_JCC = {
    "je": (1, 0), "jne": (1, 1), "js": (2, 0), "jns": (2, 1), "jo": (3, 0), "jno": (3, 1),
    "jp": (4, 0), "jnp": (4, 1), "jb": (5, 0), "jae": (5, 1), "jbe": (6, 0), "ja": (6, 1),
    "jl": (7, 0), "jge": (7, 1), "jle": (8, 0), "jg": (8, 1),
}
_ARG_REGS = {"rdi", "edi", "rsi", "esi", "rdx", "edx", "di", "si", "dx", "dil", "sil", "dl"}


@dataclass(frozen=True)
class ExitSite:
    offset: int   # file offset of the probed instruction
    cond: int     # 0: an exit whenever it runs; else 2 * code + (1 if exit when not true)
    insn: str


@dataclass(frozen=True)
class EvalSites:
    """Where to probe ``_PyEval_EvalFrameDefault`` so that each activation hits
    ``entry`` once and exactly one of ``exits`` once."""

    entry: int
    exits: tuple[ExitSite, ...]
    fragments: tuple[tuple[int, int], ...]  # [start, end) vaddrs: hot part, cold part(s)
    inline: InlineInit | None = None


class _Fdes:
    """Code fragments' bounds from .eh_frame_hdr's search table: GCC gives each
    contiguous fragment of a function (the hot part, the .cold part) an FDE."""

    def __init__(self, img: usdt.Image) -> None:
        self.img = img
        hv, hoff, hsize = img.section(".eh_frame_hdr")
        d = img.data[hoff:hoff + hsize]
        if len(d) < 12 or d[0] != 1 or d[2] != 0x03 or d[3] != 0x3B:
            raise usdt.ProbeError(f"{img.path}: .eh_frame_hdr encoding not understood")
        count = struct.unpack_from("<I", d, 8)[0]
        if 12 + 8 * count > len(d):
            raise usdt.ProbeError(f"{img.path}: .eh_frame_hdr table truncated")
        pairs = struct.unpack_from(f"<{2 * count}i", d, 12)
        self.starts = [hv + loc for loc in pairs[0::2]]
        self.fdes = [hv + fde for fde in pairs[1::2]]

    def covering(self, vaddr: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self.starts, vaddr) - 1
        if i < 0:
            return None
        fde = self.fdes[i]
        head = self.img.read(fde, 16)
        length, _cie = struct.unpack_from("<II", head)
        begin = fde + 8 + struct.unpack_from("<i", head, 8)[0]  # pcrel sdata4
        size = struct.unpack_from("<I", head, 12)[0]
        if length == 0xFFFFFFFF or begin != self.starts[i]:
            raise usdt.ProbeError(f"{self.img.path}: FDE at {fde:#x} not understood")
        return (begin, begin + size) if vaddr < begin + size else None


@dataclass
class _Sweep:
    """The eval function's code, decoded: every instruction of its hot and cold
    parts, its returns and tail calls."""

    img: usdt.Image
    start: int
    size: int
    insns: dict[int, capstone.CsInsn]
    regions: list[tuple[int, int]]
    rets: list[int]
    tails: list[int]
    functions: dict[int, str]


def _sweep(path: str, symbol: str) -> _Sweep:
    img = usdt.Image(path)
    vaddr, size, _off = usdt.find_symbol(path, symbol)
    functions = img.functions()
    fdes = _Fdes(img)
    md = _decoder()
    regions = [(vaddr, vaddr + size)]
    insns: dict[int, capstone.CsInsn] = {}
    rets: list[int] = []
    tails: list[int] = []
    todo = [regions[0]]
    while todo:
        rs, re_ = todo.pop()
        end = rs
        for insn in md.disasm(img.read(rs, re_ - rs), rs):
            insns[insn.address] = insn
            end = insn.address + insn.size
            if insn.group(capstone.CS_GRP_RET):
                rets.append(insn.address)
                continue
            if not insn.group(capstone.CS_GRP_JUMP) or insn.operands[0].type != x86.X86_OP_IMM:
                continue  # indirect jumps are the bytecode dispatch, inside the function
            target = insn.operands[0].imm
            if any(s <= target < e for s, e in regions):
                continue
            if target in functions:
                tails.append(insn.address)  # a tail call: this activation ends here
                continue
            frag = fdes.covering(target)
            if frag is None:
                raise usdt.ProbeError(f"{path}: {symbol} jumps to {target:#x}, outside any "
                                      "known code")
            regions.append(frag)
            todo.append(frag)
        if end != re_:
            raise usdt.ProbeError(f"{path}: {symbol}'s code at {rs:#x} does not decode to its end")
    if not rets and not tails:
        raise usdt.ProbeError(f"{path}: {symbol} has no exit")
    return _Sweep(img, vaddr, size, insns, regions, rets, tails, functions)


def eval_sites(path: str, symbol: str = "_PyEval_EvalFrameDefault",
               enter_init: int | None = None, exit_init_check: int | None = None,
               instr_ptr: int | None = None) -> EvalSites:
    """The entry and exit probe sites of the eval function; ProbeError if its code
    cannot be accounted for completely (then no calls are traced, and it says so).
    With the CALL_ALLOC_AND_ENTER_INIT and EXIT_INIT_CHECK opcodes and the frame's
    ``instr_ptr`` offset (CPython 3.13), also where __init__ runs inline."""
    sw = _sweep(path, symbol)
    graph = _Graph(sw.insns)
    sites: dict[int, ExitSite] = {}
    for ret in sw.rets:
        edges = graph.edges_into(graph.block_start(ret), 3)
        for addr, cond in edges if edges is not None else [(ret, 0)]:
            sites[addr] = ExitSite(sw.img.to_offset(addr), cond, _text(sw.insns[addr]))
    for addr in sw.tails:
        insn = sw.insns[addr]
        sites[addr] = ExitSite(sw.img.to_offset(addr), _cond(insn.mnemonic, taken=True),
                               _text(insn))
    inline = None
    if enter_init is not None and exit_init_check is not None and instr_ptr is not None:
        inline = _inline_init(sw, graph, enter_init, exit_init_check, instr_ptr)
    return EvalSites(sw.img.to_offset(graph.entry_site(sw.start)),
                     tuple(sites[a] for a in sorted(sites)), tuple(sorted(sw.regions)), inline)


@dataclass(frozen=True)
class InlineInit:
    """CPython 3.13's CALL_ALLOC_AND_ENTER_INIT, unlike every other instruction
    that pushes a frame inside the running eval loop, does not step aside for
    the perf trampoline: __init__ then runs without an eval-function entry of
    its own. These sites see it: that instruction's jump to the loop's
    start_frame, the EXIT_INIT_CHECK instruction that runs when __init__ has
    returned, and the call that frees a frame an exception unwinds."""

    push: int                # file offset; the loop's frame register holds the new frame
    frame_reg: int           # usdt.REGS index of that register
    returned: int            # EXIT_INIT_CHECK's first emulated instruction
    unwind: int              # call _PyEval_FrameClearAndPop(tstate, frame) in exit_unwind


def _inline_init(sw: _Sweep, graph: _Graph, enter_init: int, exit_init_check: int,
                 instr_ptr: int) -> InlineInit:
    hot_end = sw.start + sw.size
    # the entry path: straight from the function's start to its first jmp
    path, a = set(), sw.start
    while a in sw.insns and a < hot_end:
        insn = sw.insns[a]
        path.add(a)
        if insn.mnemonic == "jmp" or insn.group(capstone.CS_GRP_RET):
            break
        a += insn.size
    # start_frame: where the entry path goes on and most jumps from the loop arrive
    incoming: dict[int, list[int]] = {}
    for target, sources in graph.targets.items():
        if target in path:
            jumps = [j for j in sources if sw.insns[j].mnemonic == "jmp"
                     and not sw.start <= j < hot_end]
            if jumps:
                incoming[target] = jumps
    if not incoming:
        raise usdt.ProbeError(f"{sw.img.path}: no start_frame in the eval loop")
    start_frame = max(incoming, key=lambda t: len(incoming[t]))
    # the dispatch table: the operand of the computed goto's load, TABLE(,%reg,8)
    tables: dict[int, int] = {}
    for insn in sw.insns.values():
        if insn.mnemonic == "mov" and len(insn.operands) == 2 \
                and insn.operands[1].type == x86.X86_OP_MEM:
            m = insn.operands[1].mem
            if m.base == 0 and m.index != 0 and m.scale == 8 and m.disp > 0:
                tables[m.disp] = tables.get(m.disp, 0) + 1
    if not tables:
        raise usdt.ProbeError(f"{sw.img.path}: no dispatch table in the eval loop")
    table = max(tables, key=lambda t: tables[t])

    def handler_of(opcode: int) -> int:
        return struct.unpack("<Q", sw.img.read(table + 8 * opcode, 8))[0]

    # CALL_ALLOC_AND_ENTER_INIT's own jump to start_frame: straight on from its
    # handler (its deoptimisations branch off conditionally)
    push = None
    a = handler_of(enter_init)
    while a in sw.insns:
        insn = sw.insns[a]
        if insn.mnemonic == "jmp":
            if insn.operands[0].type == x86.X86_OP_IMM and insn.operands[0].imm == start_frame:
                push = a
            break
        if insn.group(capstone.CS_GRP_RET):
            break
        a += insn.size
    handler = handler_of(exit_init_check)
    # the handler stores frame->instr_ptr first: the loop's frame register is its base
    frame_reg = returned = None
    a = handler
    while a in sw.insns and returned is None:
        insn = sw.insns[a]
        ops = insn.operands
        if frame_reg is None and insn.mnemonic == "mov" and len(ops) == 2 \
                and ops[0].type == x86.X86_OP_MEM and ops[0].mem.disp == instr_ptr \
                and ops[0].mem.index == 0:
            frame_reg = insn.reg_name(ops[0].mem.base)
        if insn.group(capstone.CS_GRP_JUMP) and ops[0].type == x86.X86_OP_IMM:
            returned = a
        elif graph._ends_block(insn):
            break
        a += insn.size
    clear = [addr for addr, name in sw.functions.items() if name == "_PyEval_FrameClearAndPop"]
    unwinds = [a for a, insn in sw.insns.items() if sw.start <= a < hot_end
               and insn.mnemonic == "call" and insn.operands[0].type == x86.X86_OP_IMM
               and insn.operands[0].imm in clear]
    if push is None or frame_reg not in usdt.REGS or returned is None or len(unwinds) != 1:
        raise usdt.ProbeError(f"{sw.img.path}: CALL_ALLOC_AND_ENTER_INIT, EXIT_INIT_CHECK or "
                              "exit_unwind is not where expected")
    return InlineInit(sw.img.to_offset(push), usdt.REGS.index(frame_reg),
                      sw.img.to_offset(returned), sw.img.to_offset(unwinds[0]))


def eval_entry(path: str, symbol: str = "_PyEval_EvalFrameDefault") -> int:
    """File offset of the eval function's entry probe site, decoding only its
    first instructions (3.15's throw() hook needs no exits)."""
    img = usdt.Image(path)
    vaddr, size, _off = usdt.find_symbol(path, symbol)
    insns = {i.address: i for i in _decoder().disasm(img.read(vaddr, min(size, 128)), vaddr)}
    return img.to_offset(_Graph(insns).entry_site(vaddr))


def _text(insn: capstone.CsInsn) -> str:
    return f"{insn.mnemonic} {insn.op_str}".strip()


def _cond(mnemonic: str, taken: bool) -> int:
    if mnemonic == "jmp":
        return 0
    code, negated = _JCC[mnemonic]
    return 2 * code + (negated ^ (not taken))


class _Graph:
    """Basic blocks of the decoded fragments, as far as exits need them."""

    def __init__(self, insns: dict[int, capstone.CsInsn]) -> None:
        self.insns = insns
        self.order = sorted(insns)
        self.pos = {a: i for i, a in enumerate(self.order)}
        self.targets: dict[int, list[int]] = {}
        for a in self.order:
            insn = insns[a]
            if insn.group(capstone.CS_GRP_JUMP) and insn.operands[0].type == x86.X86_OP_IMM:
                self.targets.setdefault(insn.operands[0].imm, []).append(a)

    def _prev(self, a: int) -> capstone.CsInsn | None:
        i = self.pos[a]
        if i == 0:
            return None
        p = self.insns[self.order[i - 1]]
        return p if p.address + p.size == a else None

    @staticmethod
    def _ends_block(insn: capstone.CsInsn) -> bool:
        return insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_RET)

    def block_start(self, a: int) -> int:
        while True:
            p = self._prev(a)
            if a in self.targets or p is None or self._ends_block(p) \
                    or self.insns[a].mnemonic == "endbr64":
                return a
            a = p.address

    def edges_into(self, block: int, depth: int) -> list[tuple[int, int]] | None:
        """(site, cond) of every branch edge that enters ``block``, each an
        emulated jump; None if some way in cannot be probed that way."""
        if self.insns[block].mnemonic == "endbr64":
            return None  # an indirect-branch target: its ways in are unknown
        out = []
        for j in self.targets.get(block, []):
            out.append((j, _cond(self.insns[j].mnemonic, taken=True)))
        p = self._prev(block)
        if p is not None and p.mnemonic != "jmp" and not p.group(capstone.CS_GRP_RET):
            if p.mnemonic in _JCC:
                out.append((p.address, _cond(p.mnemonic, taken=False)))
            elif p.group(capstone.CS_GRP_JUMP) or depth == 0:
                return None
            else:  # falls through from the block before: its ways in
                more = self.edges_into(self.block_start(p.address), depth - 1)
                if more is None:
                    return None
                out += more
        return out

    def entry_site(self, start: int) -> int:
        """The first emulated instruction of the entry block that runs before the
        argument registers change (else the first instruction)."""
        a = start
        while a in self.insns:
            insn = self.insns[a]
            if a != start and a in self.targets:
                break
            if a != start and (insn.mnemonic in ("push", "nop") or (
                    insn.group(capstone.CS_GRP_JUMP) and insn.operands[0].type == x86.X86_OP_IMM)):
                if insn.mnemonic != "push" or insn.operands[0].type == x86.X86_OP_REG:
                    return a
            _read, written = insn.regs_access()
            if {insn.reg_name(r) for r in written} & _ARG_REGS or self._ends_block(insn):
                break
            a += insn.size
        return start
