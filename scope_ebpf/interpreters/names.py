"""Python thread names of a running process, read from its memory.

A thread started through ``threading`` is in ``threading._active``, a dict from
its ident (``threading.get_ident()``: the pthread_t, which CPython also keeps in
``PyThreadState.thread_id``) to its ``Thread`` object, whose name is the instance
attribute ``_name``. From an interpreter state that is: ``sys.modules`` (a dict)
-> ``"threading"`` (a module) -> its dict -> ``"_active"`` -> each item's int key
and its value's ``_name`` (a str). How dicts, ints and instances are laid out
differs between versions (``layouts.Objects``); this module only walks them.

The process runs on while it is read, so any read may fail or land on memory
reused since: sizes and counts are capped, types are compared with the type
objects the interpreter exports, and what cannot be read is left out (the
caller then names the thread by its OS name). A thread not started through
``threading`` (``_thread.start_new_thread``, a C library's thread) has no entry
unless it has called ``threading.current_thread()`` (then named ``Dummy-N``).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .layouts import (
    DICT_KEYS_GENERAL,
    DICT_SLOT,
    MANAGED_311,
    MANAGED_312,
    TPFLAGS_INLINE_VALUES,
    TPFLAGS_MANAGED_DICT,
)

if TYPE_CHECKING:
    from .layouts import Runtime
    from .remote import _Reader

_MAX_ENTRIES = 1 << 16   # items of a dict read (sys.modules of a big application: ~10k)
_MAX_THREADS = 1 << 14   # items of threading._active read; threads past it: OS names
_MAX_DIGITS = 3          # a 64-bit ident is at most three 30-bit digits
_MAX_INDEX_LOG2 = 3      # index slots are 1 to 8 bytes
_TRIES = 3               # reads of a thread table that changed while read


class Unreadable(Exception):
    """Memory that cannot be read, or is not (any longer) the object expected."""


def _u64(buf: bytes, off: int) -> int:
    return struct.unpack_from("<Q", buf, off)[0]


def _i64(buf: bytes, off: int) -> int:
    return struct.unpack_from("<q", buf, off)[0]


class ThreadNames:
    """The Python names of one process's threads, read through ``reader``
    (``remote._Reader``); each interpreter's read once, then cached."""

    def __init__(self, reader: _Reader, rt: Runtime) -> None:
        self.reader, self.mem, self.lay = reader, reader.mem, reader.lay
        self.o = self.lay.objects
        self.types = {"dict": rt.dict_type, "str": rt.str_type, "int": rt.int_type,
                      "module": rt.module_type}
        self._names: dict[int, dict[int, str]] = {}
        self._type_info: dict[int, tuple[int, int, int, int]] = {}
        self._slots: dict[tuple[int, str], int] = {}

    def of(self, interp: int) -> dict[int, str]:
        """pthread_t -> name of every thread of interpreter ``interp`` that
        ``threading`` knows; {} if its table cannot be read (or ``threading`` was
        never imported)."""
        found = self._names.get(interp)
        if found is None:
            found = {}
            for _ in range(_TRIES):
                try:
                    found = self._read(interp)
                    break
                # bytes from a running process can be anything: never more than no names
                except (Unreadable, struct.error, IndexError, OverflowError):
                    continue
            self._names[interp] = found
        return found

    def _read(self, interp: int) -> dict[int, str]:
        threading = self._get(self.mem.ptr(interp + self.o.interp_modules), "threading")
        if not threading:
            return {}
        self._check(threading, "module")
        active = self._get(self.mem.ptr(threading + self.o.module_dict), "_active")
        if not active:
            return {}
        out = {}
        for key, thread in self._items(active, _MAX_THREADS):
            try:
                name = self._attr(thread, "_name")
                if name:
                    out[self._int(key)] = self._str(name)
            except (Unreadable, struct.error, IndexError, OverflowError):
                continue  # this one thread ended or was never named: its OS name
        return out

    # -- objects --
    def _check(self, addr: int, kind: str) -> None:
        want = self.types[kind]
        if want and self.mem.ptr(addr + self.lay.object_type) != want:
            raise Unreadable()

    def _is_str(self, addr: int, want: bytes) -> bool:
        """Whether ``addr`` is the compact ASCII str ``want``, in one read."""
        lay = self.lay
        try:
            buf = self.mem.read(addr, lay.str_ascii_data + len(want))
        except Unreadable:
            return False
        state = buf[lay.str_state]
        return (not self.types["str"] or _u64(buf, lay.object_type) == self.types["str"]) and \
            state >> 5 & 3 == 3 and _u64(buf, lay.str_length) == len(want) and \
            buf[lay.str_ascii_data:] == want  # compact and ASCII: the characters follow

    def _str(self, addr: int) -> str:
        self._check(addr, "str")
        return self.reader.string(addr)

    def _int(self, addr: int) -> int:
        o = self.o
        self._check(addr, "int")
        head = self.mem.read(addr, o.long_digits + 4)
        size = _i64(head, o.long_size)
        if o.long_tagged:
            n, negative = (size & (1 << 64) - 1) >> 3, size & 3 == 2
        else:
            n, negative = abs(size), size < 0
        if n > _MAX_DIGITS:
            raise Unreadable()
        raw = head[o.long_digits:] if n <= 1 else self.mem.read(addr + o.long_digits, 4 * n)
        value = 0
        for i in range(n):
            digit = struct.unpack_from("<I", raw, 4 * i)[0]
            if digit >> 30:
                raise Unreadable()
            value |= digit << 30 * i
        return -value if negative else value

    # -- dicts --
    def _table(self, keys: int, cap: int) -> list[tuple[int, int]]:
        """(key, value) of the first ``cap`` entries of a PyDictKeysObject, in
        order, with NULLs (deleted entries; a split table's values are elsewhere)."""
        o, mem = self.o, self.mem
        head = mem.read(keys, o.keys_indices)
        n = _i64(head, o.keys_nentries)
        if o.keys_log2_index_bytes < 0:  # 3.8-3.10: dk_size, index slots by size
            size = _i64(head, o.keys_size)
            if size <= 0 or size & (size - 1) or size > 1 << 32:
                raise Unreadable()
            index_bytes = 1 if size <= 0xFF else 2 if size <= 0xFFFF else 4
            table, general = size * index_bytes, True
        else:
            log2, log2_index = head[o.keys_size], head[o.keys_log2_index_bytes]
            if log2 > 32 or not 0 <= log2_index - log2 <= _MAX_INDEX_LOG2:
                raise Unreadable()
            size, table = 1 << log2, 1 << log2_index
            general = head[o.keys_kind] == DICT_KEYS_GENERAL
        if not 0 <= n <= size:
            raise Unreadable()
        n = min(n, cap)  # past the cap: those items are left out
        width, key_at, value_at = (24, 8, 16) if general else (16, 0, 8)
        buf = mem.read(keys + o.keys_indices + table, n * width) if n else b""
        return [(_u64(buf, i * width + key_at), _u64(buf, i * width + value_at))
                for i in range(n)]

    def _values(self, values: int, n: int) -> list[int]:
        """The first ``n`` (at most) pointers of a split table's values."""
        o = self.o
        if o.values_capacity >= 0:  # 3.13+: the values say how many they have room for
            n = min(n, self.mem.read(values + o.values_capacity, 1)[0])
        buf = self.mem.read(values + o.values_data, 8 * n) if n else b""
        return [_u64(buf, 8 * i) for i in range(n)]

    def _items(self, d: int, cap: int) -> list[tuple[int, int]]:
        """(key, value) of each item of the dict at ``d``."""
        o = self.o
        self._check(d, "dict")
        head = self.mem.read(d, max(o.dict_keys, o.dict_values) + 8)
        entries = self._table(_u64(head, o.dict_keys), cap)
        values = _u64(head, o.dict_values)
        if values:
            split = self._values(values, len(entries))
            entries = [(k, split[i] if i < len(split) else 0)
                       for i, (k, _v) in enumerate(entries)]
        return [(k, v) for k, v in entries if k and v]

    def _get(self, d: int, key: str) -> int:
        """The value of the str ``key`` in the dict at ``d``; 0 if it has none."""
        want = key.encode()
        for k, v in self._items(d, _MAX_ENTRIES):
            if self._is_str(k, want):
                return v
        return 0

    # -- instances --
    def _type(self, tp: int) -> tuple[int, int, int, int]:
        """(tp_flags, tp_basicsize, tp_dictoffset, ht_cached_keys) of a type."""
        found = self._type_info.get(tp)
        if found is None:
            o = self.o
            fields = (o.type_flags, o.type_basicsize, o.type_dictoffset, o.heaptype_cached_keys)
            buf = self.mem.read(tp, max(fields) + 8)
            found = (_u64(buf, o.type_flags), *(_i64(buf, f) for f in fields[1:3]),
                     _u64(buf, o.heaptype_cached_keys))
            self._type_info[tp] = found
        return found

    def _attr(self, obj: int, name: str) -> int:
        """The value of attribute ``name`` in the instance dict or values of the
        object at ``obj``; 0 if it has none."""
        o, mem = self.o, self.mem
        flags, basicsize, dictoffset, cached = self._type(mem.ptr(obj + self.lay.object_type))
        if o.instance_dict == DICT_SLOT or not flags & TPFLAGS_MANAGED_DICT:
            if dictoffset <= 0:  # no dict, or one at the end of a variable-size object
                raise Unreadable()
            return self._get(mem.ptr(obj + dictoffset), name)
        word = mem.ptr(obj - o.managed_dict_before)
        if o.instance_dict == MANAGED_312:
            return self._in_values(word + 1, cached, name) if word & 1 else self._get(word, name)
        if word:  # a dict was made for the instance: it holds the attributes
            return self._get(word, name)
        if o.instance_dict == MANAGED_311:
            return self._in_values(mem.ptr(obj - o.managed_values_before), cached, name)
        values = obj + basicsize  # 3.13+: inline, unless a dict took them over
        if not flags & TPFLAGS_INLINE_VALUES or not mem.read(values + o.values_valid, 1)[0]:
            raise Unreadable()
        return self._in_values(values, cached, name)

    def _in_values(self, values: int, keys: int, name: str) -> int:
        """The value of ``name`` in a split table: its index in the class's shared
        keys (found once per keys object), then that slot of the values."""
        slot = self._slots.get((keys, name))
        if slot is None:
            want = name.encode()
            slot = next((i for i, (k, _v) in enumerate(self._table(keys, _MAX_ENTRIES))
                         if k and self._is_str(k, want)), -1)
            self._slots[(keys, name)] = slot
        if slot < 0:
            return 0
        found = self._values(values, slot + 1)
        return found[slot] if len(found) > slot else 0
