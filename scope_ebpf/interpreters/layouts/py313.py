"""CPython 3.13+: layouts read from ``_Py_DebugOffsets``.

CPython 3.13 and later start ``_PyRuntime`` with a ``_Py_DebugOffsets`` struct
(cookie ``xdebugpy``, then the hex version) that publishes the offsets a
debugger or profiler needs: only where each entry sits inside that struct is
version-specific (it grows between minor versions), so it is written down
here, member by member as in Include/internal/pycore_runtime.h (3.13) and
pycore_debug_offsets.h (3.14+). The offsets themselves come from the file, so
a rebuilt or patched CPython of the same minor version is still read right.
The struct is statically initialised: the file's bytes equal the process's.

Frames are ``_PyInterpreterFrame`` from ``tstate->current_frame``, linked by
``previous``; ``instr_ptr`` is the instruction executing now. Not published:
which owner values are not Python code (3.13 FRAME_OWNED_BY_CSTACK = 3; 3.14+
FRAME_OWNED_BY_INTERPRETER = 3 and, in 3.14, FRAME_OWNED_BY_CSTACK = 4: skip
owner >= 3), that 3.14 made ``f_executable`` a tagged ``_PyStackRef`` (low 2
bits are flags), and the size of PyCompactUnicodeObject before 3.15 publishes
it (PyASCIIObject plus utf8_length and utf8).

For values off the stack it publishes where ``sys.modules`` is, the dict's
``ma_keys``/``ma_values``, an int's ``lv_tag``/``ob_digit`` and ``tp_flags`` (3.15
also ``tp_basicsize``, ``tp_dictoffset``, ``ht_cached_keys``). Not published,
written down from pycore_dict.h, pycore_moduleobject.h and pycore_object.h
(the same in 3.13-3.15): the keys object's fields, ``PyDictValues`` (capacity,
size, embedded, valid, then the values), ``md_dict``, and where an instance's
attributes are: a managed dict pointer 24 bytes before the object
(MANAGED_DICT_OFFSET), or if NULL its values inline at ``tp_basicsize``.
"""

from __future__ import annotations

import struct

from ... import usdt
from ...errors import ScopeError
from . import INLINE_313, INSTR_PTR, LOCATIONS, Layout, Objects

COOKIE = b"xdebugpy"

_HEAD = ("cookie", "version", "free_threaded")
_RUNTIME = ("runtime_state", ("size", "finalizing", "interpreters_head"))
_GIL = ("gil_runtime_state", "gil_runtime_state_enabled", "gil_runtime_state_locked",
        "gil_runtime_state_holder")
_FRAME13 = ("size", "previous", "executable", "instr_ptr", "localsplus", "owner")
_CODE13 = ("size", "filename", "name", "qualname", "linetable", "firstlineno", "argcount",
           "localsplusnames", "localspluskinds", "co_code_adaptive")
_TSTATE13 = ("size", "prev", "next", "interp", "current_frame", "thread_id",
             "native_thread_id", "datastack_chunk", "status")
_INTERP14 = ("size", "id", "next", "threads_head", "threads_main", "gc", "imports_modules",
             "sysdict", "builtins", "ceval_gil", *_GIL, "code_object_generation",
             "tlbc_generation")
_SEQ = ("size", "ob_item", "ob_size")
_NUMBERS = (("float_object", ("size", "ob_fval")),
            ("long_object", ("size", "lv_tag", "ob_digit")),
            ("bytes_object", ("size", "ob_size", "ob_sval")))
_TAIL14 = (("gen_object", ("size", "gi_name", "gi_iframe", "gi_frame_state")),
           ("llist_node", ("next", "prev")),
           ("debugger_support", ("eval_breaker", "remote_debugger_support",
                                 "remote_debugging_enabled", "debugger_pending_call",
                                 "debugger_script_path", "debugger_script_path_size")))

# The members of _Py_DebugOffsets after the head, in order: (group, members), each
# member a uint64_t.
STRUCTS: dict[int, tuple[tuple[str, tuple[str, ...]], ...]] = {
    13: (_RUNTIME,
         ("interpreter_state", ("size", "id", "next", "threads_head", "gc", "imports_modules",
                                "sysdict", "builtins", "ceval_gil", *_GIL)),
         ("thread_state", _TSTATE13),
         ("interpreter_frame", _FRAME13),
         ("code_object", _CODE13),
         ("pyobject", ("size", "ob_type")),
         ("type_object", ("size", "tp_name", "tp_repr", "tp_flags")),
         ("tuple_object", _SEQ), ("list_object", _SEQ),
         ("dict_object", ("size", "ma_keys", "ma_values")),
         *_NUMBERS,
         ("unicode_object", ("size", "state", "length", "asciiobject_size")),
         ("gc", ("size", "collecting"))),
    14: (_RUNTIME,
         ("interpreter_state", _INTERP14),
         ("thread_state", _TSTATE13),
         ("interpreter_frame", (*_FRAME13, "stackpointer", "tlbc_index")),
         ("code_object", (*_CODE13, "co_tlbc")),
         ("pyobject", ("size", "ob_type")),
         ("type_object", ("size", "tp_name", "tp_repr", "tp_flags")),
         ("tuple_object", _SEQ), ("list_object", _SEQ),
         ("set_object", ("size", "used", "table", "mask")),
         ("dict_object", ("size", "ma_keys", "ma_values")),
         *_NUMBERS,
         ("unicode_object", ("size", "state", "length", "asciiobject_size")),
         ("gc", ("size", "collecting")),
         *_TAIL14),
    15: (_RUNTIME,
         ("interpreter_state", _INTERP14),
         ("thread_state", ("size", "prev", "next", "interp", "current_frame", "base_frame",
                           "last_profiled_frame", "last_profiled_frame_seq", "thread_id",
                           "native_thread_id", "datastack_chunk", "status", "holds_gil",
                           "gil_requested", "current_exception", "exc_state")),
         ("err_stackitem", ("exc_value",)),
         ("interpreter_frame", (*_FRAME13, "stackpointer", "tlbc_index")),
         ("code_object", (*_CODE13, "co_tlbc")),
         ("pyobject", ("size", "ob_type")),
         ("type_object", ("size", "tp_name", "tp_repr", "tp_flags", "tp_basicsize",
                          "tp_dictoffset")),
         ("heap_type_object", ("size", "ht_cached_keys")),
         ("tuple_object", _SEQ), ("list_object", _SEQ),
         ("set_object", ("size", "used", "table", "mask")),
         ("dict_object", ("size", "ma_keys", "ma_values")),
         *_NUMBERS,
         ("unicode_object", ("size", "state", "length", "asciiobject_size",
                             "compactunicodeobject_size")),
         ("gc", ("size", "collecting", "frame", "generation_stats_size",
                 "generation_stats")),
         *_TAIL14),
}
_TAGGED_FROM = 14      # f_executable is a _PyStackRef
_TAG_BITS = 3
_OWNER_SKIP = 3        # FRAME_OWNED_BY_CSTACK (3.13), FRAME_OWNED_BY_INTERPRETER (3.14+)
_UTF8_FIELDS = 16      # PyCompactUnicodeObject = PyASCIIObject + utf8_length + utf8
_MAX_STRUCT = 1 << 20  # no CPython struct comes near this: a larger size is corrupt
_TYPE_BEFORE_15 = {"type_object.tp_basicsize": 32, "type_object.tp_dictoffset": 288,
                   "heap_type_object.ht_cached_keys": 880}  # published from 3.15


def positions(minor: int) -> dict[str, int]:
    """'group.member' -> byte position inside _Py_DebugOffsets of that minor version."""
    out = {name: 8 * i for i, name in enumerate(_HEAD)}
    pos = 8 * len(_HEAD)
    for group, members in STRUCTS[minor]:
        for m in members:
            out[f"{group}.{m}"] = pos
            pos += 8
    out["sizeof"] = pos
    return out


def debug_size(minor: int) -> int:
    return positions(minor)["sizeof"]


def read_head(path: str) -> bytes:
    """The bytes of ``_PyRuntime`` that hold the largest _Py_DebugOffsets known."""
    try:
        _vaddr, size, offset = usdt.find_symbol(path, "_PyRuntime")
        want = max(debug_size(m) for m in STRUCTS)
        return usdt.read_at(path, offset, min(size, want))
    except usdt.ProbeError as e:
        raise ScopeError(f"cannot read CPython's debug offsets: {e}") from None


def from_file(path: str) -> Layout:
    return parse(read_head(path), path)


def values(head: bytes, path: str = "<bytes>") -> tuple[int, dict[str, int]]:
    """(minor, 'group.member' -> value) from the first bytes of _PyRuntime;
    ScopeError if they are not a _Py_DebugOffsets this code knows, whatever the
    bytes are."""
    if not head.startswith(COOKIE) or len(head) < 16:
        raise ScopeError(f"{path}: _PyRuntime does not start with _Py_DebugOffsets "
                         "(CPython older than 3.13?)")
    version = struct.unpack_from("<Q", head, 8)[0]
    major, minor = version >> 24, (version >> 16) & 0xFF
    if major != 3 or minor not in STRUCTS:
        raise ScopeError(f"{path}: no frame layout known for CPython {major}.{minor}")
    pos = positions(minor)
    if pos["sizeof"] > len(head):
        raise ScopeError(f"{path}: _Py_DebugOffsets is truncated")
    out = {name: struct.unpack_from("<Q", head, p)[0] for name, p in pos.items()
           if name not in ("cookie", "sizeof")}
    for name, value in out.items():  # every offset lies inside the struct it describes
        group, _, member = name.partition(".")
        size = out.get(f"{group}.size")
        is_size = member.endswith("size")  # a size (size, generation_stats_size), not an offset
        if is_size and value >= _MAX_STRUCT or (
                size is not None and not is_size and value >= size):
            raise ScopeError(f"{path}: implausible debug offsets ({name}={value})")
    if out["free_threaded"]:
        raise ScopeError(f"{path}: a free-threaded CPython build is not supported")
    return minor, out


def parse(head: bytes, path: str = "<bytes>") -> Layout:
    minor, v = values(head, path)
    ascii_size = v["unicode_object.asciiobject_size"]
    return Layout(
        minor=minor, source=f"_Py_DebugOffsets in {path}",
        runtime_interpreters_head=v["runtime_state.interpreters_head"],
        interp_next=v["interpreter_state.next"],
        interp_threads_head=v["interpreter_state.threads_head"],
        tstate_next=v["thread_state.next"],
        tstate_thread_id=v["thread_state.thread_id"],
        tstate_native_thread_id=v["thread_state.native_thread_id"],
        tstate_frame=v["thread_state.current_frame"], cframe_current_frame=-1,
        frame_previous=v["interpreter_frame.previous"],
        frame_code=v["interpreter_frame.executable"],
        frame_code_tag_bits=_TAG_BITS if minor >= _TAGGED_FROM else 0,
        frame_instr=v["interpreter_frame.instr_ptr"], instr_kind=INSTR_PTR,
        frame_owner=v["interpreter_frame.owner"], frame_owner_skip=_OWNER_SKIP,
        code_name=v["code_object.name"], code_qualname=v["code_object.qualname"],
        code_filename=v["code_object.filename"],
        code_firstlineno=v["code_object.firstlineno"],
        code_linetable=v["code_object.linetable"], linetable_kind=LOCATIONS,
        code_adaptive=v["code_object.co_code_adaptive"], code_code=-1,
        str_state=v["unicode_object.state"], str_length=v["unicode_object.length"],
        str_ascii_data=ascii_size,
        str_compact_data=v.get("unicode_object.compactunicodeobject_size",
                               ascii_size + _UTF8_FIELDS),
        bytes_size=v["bytes_object.ob_size"], bytes_data=v["bytes_object.ob_sval"],
        object_type=v["pyobject.ob_type"],
        objects=_objects({**_TYPE_BEFORE_15, **v}),
    )


def _objects(v: dict[str, int]) -> Objects:
    return Objects(
        interp_modules=v["interpreter_state.imports_modules"], module_dict=16,
        dict_keys=v["dict_object.ma_keys"], dict_values=v["dict_object.ma_values"],
        keys_size=8, keys_log2_index_bytes=9, keys_kind=10, keys_nentries=24, keys_indices=32,
        values_data=8, values_capacity=0, values_valid=3,
        long_size=v["long_object.lv_tag"], long_tagged=True,
        long_digits=v["long_object.ob_digit"],
        type_flags=v["type_object.tp_flags"], type_basicsize=v["type_object.tp_basicsize"],
        type_dictoffset=v["type_object.tp_dictoffset"],
        heaptype_cached_keys=v["heap_type_object.ht_cached_keys"],
        instance_dict=INLINE_313, managed_dict_before=24, managed_values_before=-1,
    )
