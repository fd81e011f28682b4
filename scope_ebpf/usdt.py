"""USDT probe discovery from ELF ``.note.stapsdt`` notes.

Pure stdlib on purpose: the tracer must find probes in binaries of arbitrary
containers without pulling in an ELF library, and this parser is fuzzed, so
every offset and length read from the file is checked against the file size
before it is used (no crash, hang or unbounded allocation on garbage input).
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "REGS",
    "ArgSpec",
    "Probe",
    "ProbeError",
    "find_python_binary",
    "parse_arg_spec",
    "read_probes",
]

# Order matches the register switch in our BPF C code: do not reorder.
REGS: tuple[str, ...] = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "rip", "rsp",
)  # fmt: skip


class ProbeError(Exception):
    """Malformed or unsupported ELF / probe input (the only error this module raises)."""


@dataclass(frozen=True)
class ArgSpec:
    """One USDT argument: where the BPF side must fetch it from and how to widen it."""

    size: int  # bytes: 1, 2, 4 or 8
    signed: bool
    kind: str  # 'reg' | 'mem' | 'const'
    reg: int  # index into REGS, -1 for const
    disp: int  # memory displacement, or the constant value


@dataclass(frozen=True)
class Probe:
    """One probe location; offsets are file offsets because uprobes are keyed by file."""

    provider: str
    name: str
    path: str
    offset: int
    semaphore_offset: int  # 0 if the probe has no semaphore
    args: tuple[ArgSpec, ...]
    semaphore_addr: int = 0  # its link-time virtual address (load bias not applied)


def _build_reg_aliases() -> dict[str, int]:
    """Map every x86-64 sub-register name onto the index of its 64-bit register."""
    aliases: dict[str, int] = {}
    legacy = {
        "rax": ("eax", "ax", "al", "ah"),
        "rbx": ("ebx", "bx", "bl", "bh"),
        "rcx": ("ecx", "cx", "cl", "ch"),
        "rdx": ("edx", "dx", "dl", "dh"),
        "rsi": ("esi", "si", "sil"),
        "rdi": ("edi", "di", "dil"),
        "rbp": ("ebp", "bp", "bpl"),
        "rsp": ("esp", "sp", "spl"),
        "rip": ("eip",),
    }
    for full, subs in legacy.items():
        for name in (full, *subs):
            aliases[name] = REGS.index(full)
    for n in range(8, 16):
        for suffix in ("", "d", "w", "b", "l"):
            aliases[f"r{n}{suffix}"] = REGS.index(f"r{n}")
    return aliases


_REG_ALIASES = _build_reg_aliases()
_ARG_RE = re.compile(
    r"^(?P<size>-?\d+)@(?:"
    r"%(?P<reg>[a-z0-9]+)"
    r"|\$(?P<const>-?(?:0x[0-9a-f]+|\d+))"
    r"|(?P<disp>-?(?:0x[0-9a-f]+|\d+))?\(%(?P<base>[a-z0-9]+)\)"
    r")$",
    re.IGNORECASE,
)


def _reg_index(name: str, arg: str) -> int:
    try:
        return _REG_ALIASES[name.lower()]
    except KeyError:
        raise ProbeError(f"unsupported register %{name} in USDT argument {arg!r}") from None


def parse_arg_spec(text: str) -> tuple[ArgSpec, ...]:
    """Parse a SystemTap x86-64 argument string such as ``8@%rbp -4@112(%rsp) 8@$5``.

    Only forms our BPF code can evaluate (register, base+displacement, constant)
    are accepted; anything else (index registers, rip-relative symbols, xmm)
    raises ProbeError so the caller never gets a silently wrong argument.
    """
    specs: list[ArgSpec] = []
    for arg in text.split():
        m = _ARG_RE.match(arg)
        if m is None:
            raise ProbeError(f"unsupported USDT argument {arg!r}")
        size = int(m["size"])
        if abs(size) not in (1, 2, 4, 8):
            raise ProbeError(f"bad argument size in USDT argument {arg!r}")
        signed = size < 0
        if m["reg"] is not None:
            spec = ArgSpec(abs(size), signed, "reg", _reg_index(m["reg"], arg), 0)
        elif m["const"] is not None:
            spec = ArgSpec(abs(size), signed, "const", -1, int(m["const"], 0))
        else:
            reg = _reg_index(m["base"], arg)
            if REGS[reg] == "rip":
                raise ProbeError(f"rip-relative USDT argument {arg!r} is unsupported")
            disp = int(m["disp"], 0) if m["disp"] else 0
            spec = ArgSpec(abs(size), signed, "mem", reg, disp)
        specs.append(spec)
    return tuple(specs)


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_NHDR = struct.Struct("<III")
_PT_LOAD = 1
_SHT_NOTE = 7
_NT_STAPSDT = 3
_EM_X86_64 = 62


class _Elf:
    """Bounds-checked random access to an ELF64 little-endian file."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self.size = size

    def read(self, off: int, n: int, what: str) -> bytes:
        if off < 0 or n < 0 or off + n > self.size:
            raise ProbeError(f"truncated ELF file: {what} at {off:#x}+{n:#x} is past the end")
        self._f.seek(off)
        data = self._f.read(n)
        if len(data) != n:
            raise ProbeError(f"short read of {what}")
        return data


def read_probes(path: str) -> list[Probe]:
    """Return every stapsdt probe of the ELF file at ``path`` (all locations, file order).

    Addresses in the notes are virtual addresses (possibly shifted by prelink,
    which ``.stapsdt.base`` lets us undo); uprobes need file offsets, so both the
    probe address and the semaphore address are translated through PT_LOAD.
    """
    try:
        with open(path, "rb") as f:
            return _read_probes(_Elf(f, os.fstat(f.fileno()).st_size), path)
    except OSError as e:
        raise ProbeError(f"cannot read {path}: {e.strerror or e}") from e


class _Layout:
    """Section and segment tables of one ELF file, bounds-checked."""

    def __init__(self, elf: _Elf, path: str) -> None:
        self.elf, self.path = elf, path
        if elf.size < 4 or elf.read(0, 4, "ELF magic") != b"\x7fELF":
            raise ProbeError(f"{path} is not an ELF file")
        hdr = _EHDR.unpack(elf.read(0, _EHDR.size, "ELF header"))
        ident, self.machine, self.entry = hdr[0], hdr[2], hdr[4]
        phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx = (
            hdr[5], hdr[6], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13],
        )  # fmt: skip
        if ident[4] != 2 or ident[5] != 1:
            raise ProbeError(f"{path}: only ELF64 little-endian is supported")
        self.sections: list[tuple[int, ...]] = []
        self.shstrtab = b""
        self.loads: list[tuple[int, int, int]] = []
        if shoff == 0:
            return
        if shentsize < _SHDR.size or (phnum and phentsize < _PHDR.size):
            raise ProbeError(f"{path}: bad ELF header entry sizes")
        if shnum == 0 or shstrndx == 0xFFFF:  # extended numbering lives in section 0
            sh0 = _SHDR.unpack(elf.read(shoff, _SHDR.size, "section header 0"))
            shnum = shnum or sh0[5]
            shstrndx = sh0[6] if shstrndx == 0xFFFF else shstrndx
        if shnum * shentsize > elf.size or shstrndx >= shnum:
            raise ProbeError(f"{path}: section header table out of range")
        table = elf.read(shoff, shnum * shentsize, "section header table")
        self.sections = [_SHDR.unpack_from(table, i * shentsize) for i in range(shnum)]
        strtab_hdr = self.sections[shstrndx]
        self.shstrtab = elf.read(strtab_hdr[4], strtab_hdr[5], "section name table")
        if phnum * phentsize > elf.size:
            raise ProbeError(f"{path}: program header table out of range")
        ptable = elf.read(phoff, phnum * phentsize, "program header table")
        for i in range(phnum):
            ph = _PHDR.unpack_from(ptable, i * phentsize)
            if ph[0] == _PT_LOAD:
                self.loads.append((ph[3], ph[6], ph[2]))  # vaddr, memsz, offset

    def named(self, name: bytes) -> list[tuple[int, ...]]:
        # startswith, not a NUL scan: stays linear on hostile tables
        return [sh for sh in self.sections if self.shstrtab.startswith(name + b"\0", sh[0])]

    def to_offset(self, vaddr: int, what: str) -> int:
        for p_vaddr, p_memsz, p_offset in self.loads:
            if p_vaddr <= vaddr < p_vaddr + p_memsz:
                return vaddr - p_vaddr + p_offset
        raise ProbeError(f"{self.path}: {what} address {vaddr:#x} is not in any PT_LOAD segment")


_SYM = struct.Struct("<IBBHQQ")
MAX_SYMBOLS = 1 << 20


def find_symbol(path: str, name: str) -> tuple[int, int, int]:
    """(virtual address, size, file offset) of a dynamic symbol of ``path``."""
    try:
        with open(path, "rb") as f:
            layout = _Layout(_Elf(f, os.fstat(f.fileno()).st_size), path)
            dynsym, dynstr = layout.named(b".dynsym"), layout.named(b".dynstr")
            if not dynsym or not dynstr:
                raise ProbeError(f"{path} has no dynamic symbol table")
            sym, strs = dynsym[0], dynstr[0]
            if sym[5] // _SYM.size > MAX_SYMBOLS:
                raise ProbeError(f"{path}: implausibly many symbols")
            syms = layout.elf.read(sym[4], sym[5], ".dynsym")
            strtab = layout.elf.read(strs[4], strs[5], ".dynstr")
            want = name.encode() + b"\0"
            for i in range(len(syms) // _SYM.size):
                st_name, _info, _other, _shndx, value, size = _SYM.unpack_from(syms, i * _SYM.size)
                if value and strtab.startswith(want, st_name):
                    return value, size, layout.to_offset(value, name)
    except OSError as e:
        raise ProbeError(f"cannot read {path}: {e.strerror or e}") from e
    raise ProbeError(f"{path} does not export {name}")


def entry_offset(path: str) -> int:
    """File offset of the ELF entry point (``_start``): where a uprobe sees a
    process's first instruction of its own, its argv on the stack."""
    try:
        with open(path, "rb") as f:
            layout = _Layout(_Elf(f, os.fstat(f.fileno()).st_size), path)
            if not layout.entry:
                raise ProbeError(f"{path} has no entry point")
            return layout.to_offset(layout.entry, "entry point")
    except OSError as e:
        raise ProbeError(f"cannot read {path}: {e.strerror or e}") from e


def load_segments(path: str) -> list[tuple[int, int, int]]:
    """(virtual address, memory size, file offset) of every PT_LOAD segment."""
    try:
        with open(path, "rb") as f:
            return _Layout(_Elf(f, os.fstat(f.fileno()).st_size), path).loads
    except OSError as e:
        raise ProbeError(f"cannot read {path}: {e.strerror or e}") from e


class Image:
    """A whole ELF file in memory, for code analysis: sections, address
    translation and the dynamic symbols that are functions."""

    def __init__(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                self.data = f.read()
        except OSError as e:
            raise ProbeError(f"cannot read {path}: {e.strerror or e}") from e
        self.path = path
        self._layout = _Layout(_Elf(io.BytesIO(self.data), len(self.data)), path)

    def section(self, name: str) -> tuple[int, int, int]:
        """(virtual address, file offset, size) of a section."""
        found = self._layout.named(name.encode())
        if not found:
            raise ProbeError(f"{self.path} has no {name} section")
        sh = found[0]
        return sh[3], sh[4], sh[5]

    def to_offset(self, vaddr: int) -> int:
        return self._layout.to_offset(vaddr, "code")

    def to_vaddr(self, offset: int) -> int:
        for p_vaddr, p_memsz, p_offset in self._layout.loads:
            if p_offset <= offset < p_offset + p_memsz:
                return offset - p_offset + p_vaddr
        raise ProbeError(f"{self.path}: file offset {offset:#x} is not in any PT_LOAD segment")

    def read(self, vaddr: int, size: int) -> bytes:
        off = self.to_offset(vaddr)
        if off + size > len(self.data):
            raise ProbeError(f"{self.path}: code at {vaddr:#x} is past the end of the file")
        return self.data[off:off + size]

    def functions(self) -> dict[int, str]:
        """Address -> name of every function in the dynamic symbol table."""
        vaddr, off, size = self.section(".dynsym")
        _v, soff, ssize = self.section(".dynstr")
        strtab = self.data[soff:soff + ssize]
        out = {}
        for i in range(min(size // _SYM.size, MAX_SYMBOLS)):
            st_name, info, _other, _shndx, value, _size = _SYM.unpack_from(
                self.data, off + i * _SYM.size)
            if value and info & 0xF == _STT_FUNC:
                out[value] = strtab[st_name:strtab.find(b"\0", st_name)].decode(errors="replace")
        return out


    def import_slot(self, name: str) -> int:
        """Virtual address of the GOT slot through which the file calls the
        imported function ``name`` (its JUMP_SLOT or GLOB_DAT relocation)."""
        _v, soff, _size = self.section(".dynsym")
        _v, stroff, strsize = self.section(".dynstr")
        strtab = self.data[stroff:stroff + strsize]
        want = name.encode() + b"\0"
        for rela in (".rela.plt", ".rela.dyn"):
            found = self._layout.named(rela.encode())
            if not found:
                continue
            off, size = found[0][4], found[0][5]
            if off + size > len(self.data):
                raise ProbeError(f"{self.path}: {rela} is past the end of the file")
            for i in range(size // _RELA.size):
                r_offset, r_info, _addend = _RELA.unpack_from(self.data, off + i * _RELA.size)
                if r_info & 0xFFFFFFFF not in (_R_X86_64_GLOB_DAT, _R_X86_64_JUMP_SLOT):
                    continue
                sym = soff + (r_info >> 32) * _SYM.size
                if sym + _SYM.size > len(self.data):
                    raise ProbeError(f"{self.path}: {rela} names a symbol past .dynsym")
                if strtab.startswith(want, _SYM.unpack_from(self.data, sym)[0]):
                    return r_offset
        raise ProbeError(f"{self.path} does not import {name}")


_STT_FUNC = 2
_RELA = struct.Struct("<QQq")
_R_X86_64_GLOB_DAT, _R_X86_64_JUMP_SLOT = 6, 7


def read_at(path: str, offset: int, size: int) -> bytes:
    """``size`` bytes of ``path`` at a file offset (for static data such as debug offsets)."""
    try:
        with open(path, "rb") as f:
            return _Elf(f, os.fstat(f.fileno()).st_size).read(offset, size, "data")
    except OSError as e:
        raise ProbeError(f"cannot read {path}: {e.strerror or e}") from e


def _read_probes(elf: _Elf, path: str) -> list[Probe]:
    layout = _Layout(elf, path)
    if not layout.sections:
        return []
    base = layout.named(b".stapsdt.base")
    base_addr = base[-1][3] if base else None
    raw: list[tuple[int, int, int, bytes]] = []
    for sh in layout.named(b".note.stapsdt"):
        if sh[1] != _SHT_NOTE:
            continue
        data = elf.read(sh[4], sh[5], ".note.stapsdt")
        align = 8 if sh[8] == 8 else 4
        raw.extend(_iter_stapsdt(data, align))
    if not raw:
        return []
    if layout.machine != _EM_X86_64:
        raise ProbeError(f"{path}: USDT arguments are only supported on x86-64")
    to_offset = layout.to_offset

    probes: list[Probe] = []
    for pc, base, sem, strings in raw:
        parts = strings.split(b"\0")
        if len(parts) < 4:  # provider, name, args, trailing ""
            raise ProbeError(f"{path}: malformed stapsdt note strings")
        provider, name, args = (p.decode("latin-1") for p in parts[:3])
        if base_addr is not None:
            pc += base_addr - base
            if sem:
                sem += base_addr - base
        probes.append(
            Probe(
                provider=provider,
                name=name,
                path=path,
                offset=to_offset(pc, f"probe {provider}:{name}"),
                semaphore_offset=to_offset(sem, f"semaphore of {name}") if sem else 0,
                args=parse_arg_spec(args),
                semaphore_addr=sem,
            )
        )
    return probes


def _iter_stapsdt(data: bytes, align: int) -> list[tuple[int, int, int, bytes]]:
    """Split a note section into (pc, base, semaphore, strings) of stapsdt notes."""
    out = []
    pos = 0
    while pos + _NHDR.size <= len(data):
        namesz, descsz, ntype = _NHDR.unpack_from(data, pos)
        pos += _NHDR.size
        name_end = pos + namesz
        desc_start = name_end + (-namesz % align)
        desc_end = desc_start + descsz
        if desc_end > len(data):
            raise ProbeError("truncated ELF note")
        if ntype == _NT_STAPSDT and data[pos:name_end] == b"stapsdt\0":
            if descsz < 24:
                raise ProbeError("stapsdt note descriptor too short")
            pc, base, sem = struct.unpack_from("<QQQ", data, desc_start)
            out.append((pc, base, sem, data[desc_start + 24 : desc_end]))
        pos = desc_end + (-descsz % align)
    return out


def find_python_binary(pid: int) -> str:
    """Return a path to the file holding the interpreter's probes for ``pid``.

    A shared-library build keeps the probes in libpython, not in the executable,
    so a mapped libpython wins. The kernel prints mapped paths relative to *our*
    root when it can and relative to the target's otherwise, so the readable
    name is used only if it really is the mapped file (same inode); else the
    ``/proc/PID/root`` form, else the magic link itself, which always opens it.
    """
    lib_re = re.compile(r"/libpython3\.\d+[a-z]*\.so(\.[\d.]+)?$")
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6:
                    mapped = fields[5].rstrip("\n").removesuffix(" (deleted)")
                    if lib_re.search(mapped):
                        return _same_file(f"/proc/{pid}/map_files/{fields[0]}", mapped, pid)
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        return _same_file(f"/proc/{pid}/exe", exe, pid)
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProbeError(f"process {pid} does not exist (or has exited)") from e
    except PermissionError as e:
        raise ProbeError(_denied(pid)) from e
    except OSError as e:
        raise ProbeError(f"cannot inspect process {pid}: {e.strerror or e}") from e


_CAP_SYS_PTRACE = 19


def denied(pid: int) -> str:
    """Why the kernel refused to show process ``pid``'s maps or memory (one line)."""
    return _denied(pid)


def _denied(pid: int) -> str:
    """Why reading /proc/PID/maps was refused: "run as root" only when we are not."""
    if os.geteuid() != 0:
        return f"no permission to inspect process {pid}: run as root"
    try:
        with open("/proc/self/status") as f:
            eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        eff = -1
    if not eff >> _CAP_SYS_PTRACE & 1:
        return (f"cannot inspect process {pid}: scope-ebpf runs as root but without "
                "CAP_SYS_PTRACE, which the kernel requires to read the memory maps of a "
                "process holding capabilities that it lacks: run it with full capabilities")
    return (f"cannot inspect process {pid}: the kernel refused to show its memory maps "
            "although scope-ebpf runs as root with CAP_SYS_PTRACE (a security module "
            "such as Landlock, Yama or SELinux, or a user-namespace boundary, protects it)")


def openable(link: str, shown: str, pid: int) -> str:
    """A path that opens the file mapped at /proc/PID/map_files/RANGE (``link``)
    and shown as ``shown`` in /proc/PID/maps: the readable name if it is the same
    file, else the /proc/PID/root form, else the magic link itself."""
    return _same_file(link, shown, pid)


def _same_file(link: str, shown: str, pid: int) -> str:
    real = os.stat(link)
    for cand in (shown, f"/proc/{pid}/root{shown}"):
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (real.st_dev, real.st_ino):
            return cand
    return link
