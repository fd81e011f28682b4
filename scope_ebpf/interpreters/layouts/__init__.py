"""Where CPython keeps a thread's Python stack, per version (3.8-3.15, x86-64).

One :class:`Layout` per interpreter file: the byte offsets a reader outside the
process (``remote``, or a BPF program) needs to go from ``_PyRuntime`` to every
thread's frames and from a frame to its function, file and line. Each family
of versions has its own module (like py-spy's per-version bindings), so adding
a version touches one place:

* ``py38_310``: fixed layouts, ``PyFrameObject`` frames (``f_back``, ``f_lasti``),
  the ``co_lnotab`` (3.8-3.9) and 3.10 ``co_linetable`` decoders;
* ``py311_312``: fixed layouts, ``_PyInterpreterFrame`` reached through
  ``tstate->cframe``, the location-table decoder (3.11+);
* ``py313``: read from the ``_Py_DebugOffsets`` that CPython 3.13+ puts at the
  start of ``_PyRuntime`` (plus the few facts it does not publish).

Each :class:`Layout` carries an :class:`Objects`: where dicts, str and int keys,
modules and instances keep their fields, for reading Python values that are
not on the stack (a thread's ``threading`` name, through ``sys.modules``).

Fixed layouts are offsetof() against each version's own headers (default,
non-debug, GIL build), cross-checked against the DWARF of pyenv builds in
tests/test_layouts.py. Every offset is bytes from the start of its struct; -1
where the field does not exist in that version.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ScopeError

# How a frame says which instruction it is at (Layout.instr_kind):
LASTI_BYTES = "lasti_bytes"  # int f_lasti, a byte offset into co_code (3.8-3.9)
LASTI_UNITS = "lasti_units"  # int f_lasti, in 2-byte code units (3.10)
PREV_INSTR = "prev_instr"    # pointer to the last instruction started (3.11-3.12)
INSTR_PTR = "instr_ptr"      # pointer to the instruction executing now (3.13+)
# Line table formats (Layout.linetable_kind):
LNOTAB = "lnotab"            # co_lnotab (3.8-3.9)
LINETABLE_310 = "linetable310"  # co_linetable of 3.10
LOCATIONS = "locations"      # co_linetable location table (3.11+)

# How an instance keeps its attributes (Objects.instance_dict):
DICT_SLOT = "dict_slot"     # a dict pointer at tp_dictoffset (3.8-3.10)
MANAGED_311 = "managed311"  # Py_TPFLAGS_MANAGED_DICT: a dict pointer before the object, or
#                             if NULL a values pointer before that (3.11)
MANAGED_312 = "managed312"  # one word before the object: a dict pointer, or if odd a
#                             values pointer minus 1 (3.12)
INLINE_313 = "inline313"    # a dict pointer before the object, or if NULL the values inline
#                             at tp_basicsize (Py_TPFLAGS_INLINE_VALUES, 3.13+)
TPFLAGS_INLINE_VALUES = 1 << 2  # 3.13+
TPFLAGS_MANAGED_DICT = 1 << 4   # 3.11+
DICT_KEYS_GENERAL = 0           # dk_kind of keys with (hash, key, value) entries (3.11+);
#                                 unicode and split keys have (key, value) ones

SUPPORTED = range(8, 16)


@dataclass(frozen=True)
class Objects:
    """Byte offsets for reading Python values: sys.modules -> a module's dict ->
    dict items -> str, int and instance attributes (-1: not in this version)."""

    interp_modules: int         # PyInterpreterState.modules (imports.modules 3.12+)
    module_dict: int            # PyModuleObject.md_dict
    # PyDictObject and PyDictKeysObject
    dict_keys: int              # ma_keys
    dict_values: int            # ma_values: the values of a split table (else NULL)
    keys_size: int              # dk_size (Py_ssize_t, 3.8-3.10) / dk_log2_size (uint8, 3.11+)
    keys_log2_index_bytes: int  # dk_log2_index_bytes (uint8, 3.11+)
    keys_kind: int              # dk_kind (uint8, 3.11+)
    keys_nentries: int          # dk_nentries (Py_ssize_t)
    keys_indices: int           # dk_indices; the entries follow the index table
    # PyDictValues (PyObject ** before 3.11)
    values_data: int            # values[0]
    values_capacity: int        # capacity (uint8, 3.13+)
    values_valid: int           # valid (uint8, 3.13+): inline values in use
    # int: 30-bit digits, least significant first
    long_size: int              # ob_size: signed digit count (3.8-3.11) / lv_tag (3.12+)
    long_tagged: bool           # lv_tag = digits << 3 | sign (0 positive, 1 zero, 2 negative)
    long_digits: int            # ob_digit
    # PyTypeObject, PyHeapTypeObject
    type_flags: int             # tp_flags (unsigned long)
    type_basicsize: int         # tp_basicsize
    type_dictoffset: int        # tp_dictoffset
    heaptype_cached_keys: int   # ht_cached_keys: the keys instances share (3.11+)
    # an instance's attributes
    instance_dict: str          # DICT_SLOT, MANAGED_311, MANAGED_312 or INLINE_313
    managed_dict_before: int    # bytes before the object of its dict pointer (3.11+)
    managed_values_before: int  # bytes before the object of its values pointer (3.11)


@dataclass(frozen=True)
class Layout:
    """Byte offsets of the fields a stack walker reads (-1: not in this version)."""

    minor: int       # 11 for CPython 3.11
    source: str      # "_Py_DebugOffsets in <path>" or "fixed layout for 3.X"
    # _PyRuntime
    runtime_interpreters_head: int   # interpreters.head -> PyInterpreterState *
    # PyInterpreterState
    interp_next: int                 # next interpreter
    interp_threads_head: int         # threads.head (tstate_head before 3.11)
    # PyThreadState
    tstate_next: int
    tstate_thread_id: int            # pthread_t (address of glibc's struct pthread)
    tstate_native_thread_id: int     # the kernel tid (3.11+)
    tstate_frame: int                # frame (3.8-3.10), cframe (3.11-3.12), current_frame
    cframe_current_frame: int        # _PyCFrame.current_frame (3.11-3.12)
    # frame: PyFrameObject (3.8-3.10), _PyInterpreterFrame (3.11+)
    frame_previous: int              # f_back / previous
    frame_code: int                  # f_code / f_executable
    frame_code_tag_bits: int         # low bits of frame_code that are flags (3.14+: 3)
    frame_instr: int                 # f_lasti / prev_instr / instr_ptr
    instr_kind: str                  # LASTI_BYTES, LASTI_UNITS, PREV_INSTR or INSTR_PTR
    frame_owner: int                 # owner (char, 3.11+)
    frame_owner_skip: int            # owner >= this: a C-stack shim or the interpreter's
    #                                  base frame, not Python code (3.12+)
    # PyCodeObject
    code_name: int
    code_qualname: int               # 3.11+
    code_filename: int
    code_firstlineno: int            # int
    code_linetable: int              # co_lnotab (3.8-3.9) / co_linetable: a bytes object
    linetable_kind: str              # LNOTAB, LINETABLE_310 or LOCATIONS
    code_adaptive: int               # co_code_adaptive: the bytecode, inline (3.11+)
    code_code: int                   # co_code: a bytes object holding the bytecode (3.8-3.10)
    # str (PyASCIIObject / PyCompactUnicodeObject)
    str_state: int                   # the state bit-field (kind bits 2-4, compact 5, ascii 6)
    str_length: int                  # length in code points
    str_ascii_data: int              # data of a compact ASCII str (sizeof PyASCIIObject)
    str_compact_data: int            # data of a compact non-ASCII str
    # bytes, and any object
    bytes_size: int                  # ob_size
    bytes_data: int                  # ob_sval
    object_type: int                 # ob_type
    objects: Objects                 # for values off the stack (thread names)

    @property
    def version(self) -> str:
        return f"3.{self.minor}"


def minor_of(version: str | None) -> int | None:
    """11 for '3.11' (or '3.11.2'); None if it is not a CPython 3 version."""
    parts = (version or "").split(".")
    if len(parts) < 2 or parts[0] != "3" or not parts[1].isdigit():
        return None
    return int(parts[1])


def layout_for(path: str, version: str | None) -> Layout:
    """The layout of the interpreter file ``path`` (the executable or libpython that
    holds ``_PyRuntime``). 3.13+ is read from the file; ``version`` ('3.11') picks
    a fixed layout for older ones. ScopeError for what is not supported."""
    from . import py38_310, py311_312, py313

    minor = minor_of(version)
    if minor is None or minor >= 13:
        try:
            found = py313.from_file(path)
        except ScopeError:
            if minor is not None:
                raise
            raise ScopeError(f"{path}: cannot tell which CPython version it is (no "
                             "_Py_DebugOffsets, and the name says none)") from None
        if minor is not None and found.minor != minor:
            raise ScopeError(f"{path}: _Py_DebugOffsets says CPython 3.{found.minor}, "
                             f"not {version}")
        return found
    if minor in py38_310.LAYOUTS:
        return py38_310.LAYOUTS[minor]
    if minor in py311_312.LAYOUTS:
        return py311_312.LAYOUTS[minor]
    what = f"CPython {version}" if version else "an unknown CPython version"
    raise ScopeError(f"{path}: {what} is not supported (stacks need 3.8 to 3.15)")


def line_for(layout: Layout, table: bytes, firstlineno: int, offset: int) -> int:
    """The source line of the instruction at byte ``offset`` of a code object's
    bytecode, from its line table; -1 where the table gives none."""
    from . import py38_310, py311_312

    if layout.linetable_kind == LNOTAB:
        return py38_310.lnotab_line(table, firstlineno, offset)
    if layout.linetable_kind == LINETABLE_310:
        return py38_310.linetable310_line(table, firstlineno, offset)
    return py311_312.locations_line(table, firstlineno, offset)


def instruction_offset(layout: Layout, instr: int, code_addr: int) -> int:
    """Byte offset into the bytecode from a frame's instruction field: the int
    f_lasti (3.8-3.10) or the pointer prev_instr/instr_ptr (3.11+)."""
    if layout.instr_kind == LASTI_BYTES:
        return instr
    if layout.instr_kind == LASTI_UNITS:
        return instr * 2 if instr >= 0 else -1
    return instr - (code_addr + layout.code_adaptive)


from .locate import Runtime, find_runtime  # noqa: E402  (uses layout_for)

__all__ = ["Layout", "Objects", "Runtime", "find_runtime", "instruction_offset", "layout_for",
           "line_for", "minor_of"]
