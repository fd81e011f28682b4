"""Which file mapped into a process holds its ``_PyRuntime``, and where it is.

A static build keeps ``_PyRuntime`` in the executable; a shared one (pyenv,
``--enable-shared``) in libpython, which then wins. The file is opened through
the path the kernel shows if that is the mapped file, else through
/proc/PID/root or /proc/PID/map_files (chroots, containers, deleted files), as
usdt.find_python_binary does. The load bias comes from the file's PT_LOAD
segments and the addresses they are mapped at.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from ... import procs, usdt
from ...errors import ScopeError
from . import Layout, layout_for, py313

_LIBPYTHON = re.compile(r"/libpython3\.\d+[a-z]*\.so(\.[\d.]+)?$")
_PAGE = 0xFFF


@dataclass(frozen=True)
class Runtime:
    """Where a process's interpreter state starts."""

    pid: int
    path: str      # a path that opens the file (host, /proc/PID/root/... or map_files)
    mapped: str    # the file's name as /proc/PID/maps shows it
    version: str   # '3.11'
    bias: int      # load bias: address in the process = virtual address in the file + bias
    runtime: int   # address of _PyRuntime in the process
    code_type: int  # address of PyCode_Type in the process (0: not exported)
    layout: Layout
    # addresses of PyDict_Type, PyUnicode_Type, PyLong_Type, PyModule_Type (0: not
    # exported), to tell objects off the stack from reused memory
    dict_type: int = 0
    str_type: int = 0
    int_type: int = 0
    module_type: int = 0


@dataclass(frozen=True)
class _Mapping:
    start: int
    offset: int
    inode: int
    name: str
    range: str  # "start-end" as named in /proc/PID/map_files


def _mappings(pid: int) -> list[_Mapping]:
    out = []
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) < 6 or not fields[5].startswith("/"):
                    continue
                start, end = (int(a, 16) for a in fields[0].split("-"))
                out.append(_Mapping(start, int(fields[2], 16), int(fields[4]),
                                    fields[5].rstrip("\n").removesuffix(" (deleted)"),
                                    f"{start:x}-{end:x}"))  # map_files: no leading zeros
    except (FileNotFoundError, ProcessLookupError):
        raise ScopeError(f"no such process: {pid}") from None
    except PermissionError:
        raise ScopeError(usdt.denied(pid)) from None
    except OSError as e:
        raise ScopeError(f"cannot inspect process {pid}: {e.strerror or e}") from None
    return out


def _candidates(pid: int, maps: list[_Mapping]) -> list[str]:
    """Mapped file names that may hold _PyRuntime: libpython, then the executable."""
    names = list(dict.fromkeys(m.name for m in maps if _LIBPYTHON.search(m.name)))
    try:
        exe_inode = os.stat(f"/proc/{pid}/exe").st_ino
    except OSError:
        exe_inode = None
    names += [n for n in dict.fromkeys(m.name for m in maps if m.inode == exe_inode)
              if n not in names]
    return names


def _file_version(path: str) -> str | None:
    """The version the file itself states: _Py_DebugOffsets (3.13+), Py_Version (3.11+)."""
    try:
        head = py313.read_head(path)
        if head.startswith(py313.COOKIE) and len(head) >= 16:
            v = struct.unpack_from("<Q", head, 8)[0]
            return f"{v >> 24}.{(v >> 16) & 0xFF}"
    except ScopeError:
        pass
    try:
        _vaddr, _size, offset = usdt.find_symbol(path, "Py_Version")
        v = struct.unpack("<I", usdt.read_at(path, offset, 4))[0]
        return f"{v >> 24}.{(v >> 16) & 0xFF}"
    except (usdt.ProbeError, struct.error):
        return None


_TYPES = ("PyCode_Type", "PyDict_Type", "PyUnicode_Type", "PyLong_Type", "PyModule_Type")
_facts_cache: dict[tuple[int, int, int, int], tuple] = {}
_layouts: dict[tuple, Layout] = {}  # (file, version) -> its layout, read once


def _facts(path: str) -> tuple[int, list[tuple[int, int, int]], str | None, list[int], tuple]:
    """What find_runtime reads of an interpreter file (_PyRuntime's address, the
    segments, the version it states, the type objects' addresses, 0 if not
    exported), read once per file: the daemon looks at a process of the same
    file every few milliseconds under churn. ProbeError if it is not CPython."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _facts_cache:
        vaddr = usdt.find_symbol(path, "_PyRuntime")[0]
        types = []
        for t in _TYPES:
            try:
                types.append(usdt.find_symbol(path, t)[0])
            except usdt.ProbeError:
                types.append(0)
        if len(_facts_cache) >= 64:
            _facts_cache.clear()
        _facts_cache[key] = (vaddr, usdt.load_segments(path), _file_version(path), types, key)
    return _facts_cache[key]


def find_runtime(pid: int) -> Runtime:
    """The file holding ``_PyRuntime`` in process ``pid``, its load address and
    layout; ScopeError (one line) if the process is gone, not readable, not
    CPython, or a version without a known layout."""
    maps = _mappings(pid)
    for name in _candidates(pid, maps):
        mine = [m for m in maps if m.name == name]
        try:
            path = usdt.openable(f"/proc/{pid}/map_files/{mine[0].range}", name, pid)
        except FileNotFoundError:
            raise ScopeError(f"process {pid} exited or exec'd while being read") from None
        except OSError as e:
            raise ScopeError(f"cannot open {name} of process {pid}: {e.strerror}") from None
        try:
            facts = _facts(path)
        except usdt.ProbeError:
            continue
        except OSError as e:
            raise ScopeError(f"cannot read {name} of process {pid}: {e.strerror}") from None
        vaddr, loads, file_version, type_vaddrs, file_key = facts
        bias = None
        for m in mine:
            for seg_vaddr, _memsz, seg_offset in loads:
                if seg_offset & ~_PAGE == m.offset:
                    bias = m.start - (seg_vaddr & ~_PAGE)
                    break
            if bias is not None:
                break
        if bias is None:
            raise ScopeError(f"process {pid}: cannot tell where {name} is loaded")
        version = file_version or procs.python_version(name)
        if version is None:
            try:
                version = procs.python_version(os.readlink(f"/proc/{pid}/exe"))
            except OSError:
                version = None
        try:
            if (file_key, version) not in _layouts:
                if len(_layouts) >= 64:
                    _layouts.clear()
                _layouts[(file_key, version)] = layout_for(path, version)
            layout = _layouts[(file_key, version)]
        except ScopeError as e:
            raise ScopeError(f"process {pid}: {e}") from None
        types = [v + bias if v else 0 for v in type_vaddrs]
        return Runtime(pid, path, name, layout.version, bias, vaddr + bias, types[0], layout,
                       *types[1:])
    raise ScopeError(f"process {pid} is not a CPython process (no _PyRuntime in its "
                     "executable or a mapped libpython)")
