"""CPython 3.8-3.10: ``PyFrameObject`` frames, ``co_lnotab`` and the 3.10 line table.

``_PyRuntime.interpreters.head`` -> ``PyInterpreterState.tstate_head`` ->
``PyThreadState.next``; each thread's ``frame`` is a heap ``PyFrameObject``
linked by ``f_back``, whose ``f_lasti`` is the last instruction started: a
byte offset in 3.8-3.9, a code-unit index in 3.10. There are no shim frames
and no native thread id in the thread state (only the pthread_t).

The offsets are offsetof() against each version's headers (Include/cpython/
frameobject.h, code.h, pystate.h, internal/pycore_pystate.h and
pycore_interp.h / pycore_runtime.h, unicodeobject.h, bytesobject.h) for x86-64
in the default build: 3.8 and 3.9 are identical, 3.10 moved f_lasti (f_stacktop
became an int f_stackdepth) and renamed co_lnotab to co_linetable.

Objects: ``PyDictKeysObject`` (Objects/dict-common.h, not installed: checked
against DWARF) has ``dk_size`` and an index table of 1-8 byte slots by size,
then (hash, key, value) entries; a split table's values are a plain array.
An instance's dict is at ``tp_dictoffset``. ``interp->modules`` moved when 3.9
put the GC state into the interpreter.
"""

from __future__ import annotations

from . import DICT_SLOT, LASTI_BYTES, LASTI_UNITS, LINETABLE_310, LNOTAB, Layout, Objects


def _objects(interp_modules: int, heaptype_cached_keys: int) -> Objects:
    return Objects(
        interp_modules=interp_modules, module_dict=16,
        dict_keys=32, dict_values=40,
        keys_size=8, keys_log2_index_bytes=-1, keys_kind=-1, keys_nentries=32, keys_indices=40,
        values_data=0, values_capacity=-1, values_valid=-1,
        long_size=16, long_tagged=False, long_digits=24,
        type_flags=168, type_basicsize=32, type_dictoffset=288,
        heaptype_cached_keys=heaptype_cached_keys,   # 3.9 dropped the tp_print left in 3.8
        instance_dict=DICT_SLOT, managed_dict_before=-1, managed_values_before=-1,
    )


_COMMON = dict(
    runtime_interpreters_head=32,   # _PyRuntimeState.interpreters.head
    interp_next=0, interp_threads_head=8,
    tstate_next=8, tstate_thread_id=176, tstate_native_thread_id=-1,
    tstate_frame=24, cframe_current_frame=-1,
    frame_previous=24, frame_code=32, frame_code_tag_bits=0,
    frame_owner=-1, frame_owner_skip=-1,
    code_name=112, code_qualname=-1, code_filename=104, code_firstlineno=40,
    code_linetable=120, code_adaptive=-1, code_code=48,
    str_state=32, str_length=16, str_ascii_data=48, str_compact_data=72,  # with wstr
    bytes_size=16, bytes_data=32, object_type=8,
)

LAYOUTS = {
    minor: Layout(minor=minor, source=f"fixed layout for 3.{minor}", **_COMMON, **extra)
    for minor, extra in (
        (8, dict(frame_instr=104, instr_kind=LASTI_BYTES, linetable_kind=LNOTAB,
                 objects=_objects(56, 872))),
        (9, dict(frame_instr=104, instr_kind=LASTI_BYTES, linetable_kind=LNOTAB,
                 objects=_objects(856, 864))),
        (10, dict(frame_instr=96, instr_kind=LASTI_UNITS, linetable_kind=LINETABLE_310,
                  objects=_objects(856, 872))),
    )
}


def lnotab_line(table: bytes, firstlineno: int, offset: int) -> int:
    """3.8-3.9 ``co_lnotab``: (bytecode increment, signed line increment) pairs;
    the line of the last pair whose address is not past ``offset``
    (PyCode_Addr2Line of those versions)."""
    line, addr = firstlineno, 0
    for i in range(0, len(table) - 1, 2):
        addr += table[i]
        if addr > offset:
            break
        delta = table[i + 1]
        line += delta - 256 if delta >= 128 else delta
    return line


def linetable310_line(table: bytes, firstlineno: int, offset: int) -> int:
    """3.10 ``co_linetable``: (bytecode length, signed line delta) pairs, a delta
    of -128 meaning "no line" for that range (Objects/lnotab_notes.txt)."""
    if offset < 0:
        return firstlineno
    line, end = firstlineno, 0
    for i in range(0, len(table) - 1, 2):
        start, end = end, end + table[i]
        delta = table[i + 1]
        delta = delta - 256 if delta >= 128 else delta
        if delta != -128:
            line += delta
        if start <= offset < end:
            return line if delta != -128 else -1
    return -1
