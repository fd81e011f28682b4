"""CPython's own description of its structs: ``_Py_DebugOffsets`` (3.13+).

CPython 3.13 and later start ``_PyRuntime`` with a ``_Py_DebugOffsets``
struct (cookie ``xdebugpy``) that publishes the offsets of the fields a
debugger or profiler needs. Only where each entry sits inside that struct is
version-specific (it grows between minor versions); the offsets themselves
are read from the interpreter binary, so a rebuilt or patched CPython of the
same minor version is still decoded right. The struct is statically
initialised, so the file's bytes equal what the running process holds: the
probes can be attached before the process exists.
"""

from __future__ import annotations

import struct

import numpy as np

from .. import events, usdt
from ..errors import ScopeError

COOKIE = b"xdebugpy"

# Position inside _Py_DebugOffsets (u64 entries) of: interpreter_frame.executable,
# code_object.filename, .name, .firstlineno, unicode_object.state, .asciiobject_size.
_POSITIONS = {
    13: (240, 280, 288, 312, 544, 560),
    14: (264, 320, 328, 352, 624, 640),
    15: (328, 384, 392, 416, 720, 736),
}
# 3.14 made f_executable a tagged _PyStackRef: the low bits are flags.
_TAGGED_FROM = 14
_FIELDS = ("frame_executable", "code_filename", "code_name", "code_firstlineno",
           "str_state", "str_data")
_CODE_BYTES = 64  # the BPF side reads this many bytes of a code object per call
_MAX_OFFSET = 4096  # every real offset is far below this: anything larger is corrupt


# 3.11 has no _Py_DebugOffsets; its layouts are fixed for the minor version on
# x86-64 (what py-spy's per-version bindings rely on too): _PyInterpreterFrame.f_code,
# PyCodeObject.co_filename/co_name/co_firstlineno, sizeof(PyASCIIObject).
_FIXED = {11: {"frame_executable": 0x20, "code_filename": 0x70, "code_name": 0x78,
               "code_firstlineno": 0x48, "str_state": 32, "str_data": 48}}
# Not in _Py_DebugOffsets: PyCodeObject.co_flags and _PyInterpreterFrame.owner, per
# minor version (offsetof against each version's -dev headers). 3.11 needs neither:
# its probes fire under a profile hook, which sees generators as cProfile does.
_CO_FLAGS = {13: 48, 14: 48, 15: 48}
_FRAME_OWNER = {13: 70, 14: 74, 15: 74}
# 3.13 runs __init__ inline even under the perf trampoline (disasm.InlineInit): the
# EXIT_INIT_CHECK opcode and _PyInterpreterFrame.instr_ptr find where.
_INLINE_INIT = {13: {"enter_init": 162, "exit_init_check": 13, "instr_ptr": 56}}


def inline_init(version: str | None) -> dict[str, int]:
    """disasm.eval_sites() arguments for versions that push __init__ inline."""
    minor = int(version[2:]) if version and version.startswith("3.") else 0
    return _INLINE_INIT.get(minor, {})


def supported(version: str | None) -> bool:
    return bool(version) and version.startswith("3.") and int(version[2:]) in _POSITIONS


def frame_offsets(path: str) -> np.void:
    """The ``struct frame_offsets`` record for the interpreter file at ``path``."""
    try:
        _vaddr, size, offset = usdt.find_symbol(path, "_PyRuntime")
        head = usdt.read_at(path, offset, min(size, 1024))
    except usdt.ProbeError as e:
        raise ScopeError(f"cannot read CPython's debug offsets: {e}") from None
    return parse(head, path)


def entry_offsets(path: str, version: str | None) -> np.void | None:
    """What the function__entry program needs to find a function's def line
    (see def_line in scope.bpf.c), or None where no layout is known."""
    minor = int(version[2:]) if version and version.startswith("3.") else 0
    if minor in _FIXED:
        return _record(_FIXED[minor], minor)
    try:
        return frame_offsets(path)
    except ScopeError:
        return None


def parse(head: bytes, path: str = "<bytes>") -> np.void:
    """The record from the first bytes of ``_PyRuntime``; ScopeError if they are not
    a _Py_DebugOffsets this code knows, whatever the bytes are."""
    if not head.startswith(COOKIE) or len(head) < 16:
        raise ScopeError(f"{path}: _PyRuntime does not start with _Py_DebugOffsets "
                         "(CPython older than 3.13?)")
    version = struct.unpack_from("<Q", head, 8)[0]
    major, minor = version >> 24, (version >> 16) & 0xFF
    if major != 3 or minor not in _POSITIONS:
        raise ScopeError(f"{path}: no frame layout known for CPython {major}.{minor}")
    values = {}
    for name, pos in zip(_FIELDS, _POSITIONS[minor], strict=True):
        if pos + 8 > len(head):
            raise ScopeError(f"{path}: _Py_DebugOffsets is truncated")
        value = struct.unpack_from("<Q", head, pos)[0]
        if value >= _MAX_OFFSET:
            raise ScopeError(f"{path}: implausible debug offsets ({name}={value})")
        values[name] = value
    return _record(values, minor, path)


def _record(values: dict[str, int], minor: int, path: str = "<bytes>") -> np.void:
    code = [values["code_name"], values["code_filename"], values["code_firstlineno"]]
    base = min(code) & ~7
    if max(code) + 8 - base > _CODE_BYTES or values["code_name"] % 8 or values[
            "code_filename"] % 8 or values["code_firstlineno"] % 4:
        raise ScopeError(f"{path}: code object fields not within {_CODE_BYTES} aligned bytes")
    rec = np.zeros(1, events.dtypes()["frame_offsets"])[0]
    rec["executable_mask"] = ~np.uint64(3) if minor >= _TAGGED_FROM else ~np.uint64(0)
    rec["frame_executable"] = values["frame_executable"]
    rec["code_base"] = base
    rec["name_word"] = (values["code_name"] - base) // 8
    rec["file_word"] = (values["code_filename"] - base) // 8
    rec["line_word"] = (values["code_firstlineno"] - base) // 8
    rec["line_shift"] = 8 * ((values["code_firstlineno"] - base) % 8)
    rec["str_state"] = values["str_state"]
    rec["str_data"] = values["str_data"]
    rec["code_flags"] = _CO_FLAGS.get(minor, 0)
    rec["frame_owner"] = _FRAME_OWNER.get(minor, 0)
    return rec
