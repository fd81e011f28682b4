"""CPython 3.11-3.12: ``_PyInterpreterFrame`` frames reached through ``cframe``,
and the location table every version from 3.11 on uses.

``PyThreadState.cframe`` points at a ``_PyCFrame`` (on the C stack of the eval
loop) whose ``current_frame`` is the innermost ``_PyInterpreterFrame``; frames
link by ``previous`` and live in the thread's data stack (or a generator).
``prev_instr`` points at the last instruction started, in ``co_code_adaptive``
(the bytecode, inline in the code object). The thread state has the kernel tid
(``native_thread_id``).

3.11 has no shim frames: ``is_entry`` marks a real Python frame where a C call
entered the eval loop, so nothing is skipped. 3.12 pushes a C-stack shim frame
(owner FRAME_OWNED_BY_CSTACK = 3, code ``<shim>``) at each entry; walkers skip it.

Offsets are offsetof() against each version's headers (internal/
pycore_frame.h, pycore_interp.h, pycore_runtime.h, cpython/pystate.h, code.h,
unicodeobject.h) for x86-64 in the default build.

Objects: ``PyDictKeysObject`` has ``dk_log2_size``, ``dk_log2_index_bytes`` and
``dk_kind``; str-keyed (unicode or split) keys hold (key, value) entries. An
instance of a class without ``__slots__`` has a managed dict
(Py_TPFLAGS_MANAGED_DICT) before its header: 3.11 a dict pointer 24 bytes
before it and a values pointer 32 before, 3.12 one word 24 before, a dict
pointer or, odd, values - 1. Values alone use the class's
``ht_cached_keys``. ints: 3.12 replaced ``ob_size`` with ``lv_tag``.
"""

from __future__ import annotations

from . import LOCATIONS, MANAGED_311, MANAGED_312, PREV_INSTR, Layout, Objects

_COMMON = dict(
    runtime_interpreters_head=40, interp_next=0, tstate_next=8, tstate_frame=56,
    frame_code_tag_bits=0, frame_instr=56, instr_kind=PREV_INSTR,
    code_name=120, code_qualname=128, code_filename=112, code_linetable=136,
    linetable_kind=LOCATIONS, code_code=-1,
    str_state=32, str_length=16, bytes_size=16, bytes_data=32, object_type=8,
)
_OBJECTS = dict(
    module_dict=16, dict_keys=32, dict_values=40,
    keys_size=8, keys_log2_index_bytes=9, keys_kind=10, keys_nentries=24, keys_indices=32,
    values_data=0, values_capacity=-1, values_valid=-1, long_size=16, long_digits=24,
    type_flags=168, type_basicsize=32, type_dictoffset=288, managed_dict_before=24,
)

LAYOUTS = {
    11: Layout(minor=11, source="fixed layout for 3.11", **_COMMON,
               interp_threads_head=16, tstate_thread_id=152, tstate_native_thread_id=160,
               cframe_current_frame=8, frame_previous=48, frame_code=32,
               frame_owner=69, frame_owner_skip=-1,
               code_firstlineno=72, code_adaptive=184,
               str_ascii_data=48, str_compact_data=72,   # PyASCIIObject still has wstr
               objects=Objects(**_OBJECTS, interp_modules=888, long_tagged=False,
                               heaptype_cached_keys=872, instance_dict=MANAGED_311,
                               managed_values_before=32)),
    12: Layout(minor=12, source="fixed layout for 3.12", **_COMMON,
               interp_threads_head=72, tstate_thread_id=136, tstate_native_thread_id=144,
               cframe_current_frame=0, frame_previous=8, frame_code=0,
               frame_owner=70, frame_owner_skip=3,   # FRAME_OWNED_BY_CSTACK
               code_firstlineno=68, code_adaptive=192,
               str_ascii_data=40, str_compact_data=56,
               objects=Objects(**_OBJECTS, interp_modules=944, long_tagged=True,
                               heaptype_cached_keys=880, instance_dict=MANAGED_312,
                               managed_values_before=-1)),
}

# Location table entry codes (Objects/locations.md).
_NONE, _LONG, _NO_COLUMNS = 15, 14, 13
_ONE_LINE0 = 10


def _varint(table: bytes, i: int) -> tuple[int, int]:
    """An unsigned varint of 6-bit chunks, bit 6 set on all but the last."""
    b = table[i]
    val, shift = b & 63, 0
    while b & 64:
        i += 1
        if i >= len(table):
            break
        b = table[i]
        shift += 6
        val |= (b & 63) << shift
    return val, i + 1


def locations_line(table: bytes, firstlineno: int, offset: int) -> int:
    """3.11+ ``co_linetable``: the line of the instruction at byte ``offset``
    (PyCode_Addr2Line); -1 for "no location" entries or past the table."""
    if offset < 0:
        return firstlineno
    line, end, i, n = firstlineno, 0, 0, len(table)
    while i < n:
        first = table[i]
        code = (first >> 3) & 15
        start, end = end, end + ((first & 7) + 1) * 2
        if code in (_LONG, _NO_COLUMNS) and i + 1 < n:
            uval, _ = _varint(table, i + 1)
            line += -(uval >> 1) if uval & 1 else uval >> 1
        elif _ONE_LINE0 <= code < _NO_COLUMNS:
            line += code - _ONE_LINE0
        if start <= offset < end:
            return -1 if code == _NONE else line
        i += 1
        while i < n and not table[i] & 128:  # the next entry starts with bit 7 set
            i += 1
    return -1
