"""The frame_offsets record the BPF programs read (bpf/scope.h), packed from
the struct layouts in .layouts: ``_Py_DebugOffsets`` for 3.13+ (read from the
interpreter file, so the probes can be attached before the process exists),
the fixed 3.11 layout for its function__entry program.
"""

from __future__ import annotations

import numpy as np

from .. import events
from ..errors import ScopeError
from .layouts import Layout, minor_of, py311_312, py313

COOKIE = py313.COOKIE
_CODE_BYTES = 64  # the BPF side reads this many bytes of a code object per call

# The struct layouts are in .layouts (one module per family of versions); what is
# here is only how the BPF programs' frame_offsets record is packed from them.
# 3.11 has no _Py_DebugOffsets: its fixed layout (what py-spy's per-version
# bindings rely on too) serves the function__entry program.
_FIXED = {11: py311_312.LAYOUTS[11]}
# Not in _Py_DebugOffsets: PyCodeObject.co_flags, per minor version (offsetof
# against each version's -dev headers). 3.11 needs neither it nor the frame's owner:
# its probes fire under a profile hook, which sees generators as cProfile does.
_CO_FLAGS = {13: 48, 14: 48, 15: 48}
# 3.13 runs __init__ inline even under the perf trampoline (disasm.InlineInit): the
# EXIT_INIT_CHECK opcode and _PyInterpreterFrame.instr_ptr find where.
_INLINE_INIT = {13: {"enter_init": 162, "exit_init_check": 13, "instr_ptr": 56}}


def inline_init(version: str | None) -> dict[str, int]:
    """disasm.eval_sites() arguments for versions that push __init__ inline."""
    return _INLINE_INIT.get(minor_of(version) or 0, {})


def supported(version: str | None) -> bool:
    return minor_of(version) in py313.STRUCTS


def frame_offsets(path: str) -> np.void:
    """The ``struct frame_offsets`` record for the interpreter file at ``path``."""
    return _record(py313.from_file(path), path)


def entry_offsets(path: str, version: str | None) -> np.void | None:
    """What the function__entry program needs to find a function's def line
    (see def_line in scope.bpf.c), or None where no layout is known."""
    minor = minor_of(version)
    if minor in _FIXED:
        return _record(_FIXED[minor])
    try:
        return frame_offsets(path)
    except ScopeError:
        return None


def parse(head: bytes, path: str = "<bytes>") -> np.void:
    """The record from the first bytes of ``_PyRuntime``; ScopeError if they are not
    a _Py_DebugOffsets this code knows, whatever the bytes are."""
    return _record(py313.parse(head, path), path)


def _record(layout: Layout, path: str = "<bytes>") -> np.void:
    code = [layout.code_name, layout.code_filename, layout.code_firstlineno]
    base = min(code) & ~7
    if max(code) + 8 - base > _CODE_BYTES or layout.code_name % 8 or (
            layout.code_filename % 8 or layout.code_firstlineno % 4):
        raise ScopeError(f"{path}: code object fields not within {_CODE_BYTES} aligned bytes")
    rec = np.zeros(1, events.dtypes()["frame_offsets"])[0]
    rec["executable_mask"] = ~np.uint64(layout.frame_code_tag_bits)
    rec["frame_executable"] = layout.frame_code
    rec["code_base"] = base
    rec["name_word"] = (layout.code_name - base) // 8
    rec["file_word"] = (layout.code_filename - base) // 8
    rec["line_word"] = (layout.code_firstlineno - base) // 8
    rec["line_shift"] = 8 * ((layout.code_firstlineno - base) % 8)
    rec["str_state"] = layout.str_state
    rec["str_data"] = layout.str_ascii_data
    rec["code_flags"] = _CO_FLAGS.get(layout.minor, 0)
    rec["frame_owner"] = layout.frame_owner if layout.minor in _CO_FLAGS else 0
    return rec
