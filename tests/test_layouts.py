"""The per-version struct layouts (scope_ebpf/interpreters/layouts) against the
compiler and the debugger: offsetof() over each version's own headers (Debian's
3.11 and the sid root's 3.13-3.15 -dev headers, the pyenv builds' headers), and
the DWARF of the pyenv builds' libpython read by gdb. 3.13+ layouts come from
the file's _Py_DebugOffsets: there the member positions written down in py313
are checked against the headers, and what the file publishes against DWARF.

Each check skips, saying why, where its headers, DWARF or tool are missing.
"""

from __future__ import annotations

import dataclasses
import glob
import shutil
import subprocess
from pathlib import Path

import pytest

from scope_ebpf.errors import ScopeError
from scope_ebpf.interpreters.layouts import (
    DICT_KEYS_GENERAL,
    TPFLAGS_INLINE_VALUES,
    TPFLAGS_MANAGED_DICT,
    Layout,
    Objects,
    layout_for,
    line_for,
    py38_310,
    py311_312,
    py313,
)

SID = Path(__file__).resolve().parent.parent / ".interpreters" / "sid"
PYENV = Path("/root/.pyenv/versions")

# Layout field -> (type, member) for offsetof, or ("sizeof", type).
_OBJECTS = {
    "code_name": ("PyCodeObject", "co_name"),
    "code_filename": ("PyCodeObject", "co_filename"),
    "code_firstlineno": ("PyCodeObject", "co_firstlineno"),
    "str_state": ("PyASCIIObject", "state"),
    "str_length": ("PyASCIIObject", "length"),
    "str_ascii_data": ("sizeof", "PyASCIIObject"),
    "str_compact_data": ("sizeof", "PyCompactUnicodeObject"),
    "bytes_size": ("PyVarObject", "ob_size"),
    "bytes_data": ("PyBytesObject", "ob_sval"),
    "object_type": ("PyObject", "ob_type"),
    "runtime_interpreters_head": ("_PyRuntimeState", "interpreters.head"),
    "interp_next": ("PyInterpreterState", "next"),
    "tstate_next": ("PyThreadState", "next"),
    "tstate_thread_id": ("PyThreadState", "thread_id"),
}
MEMBERS = {
    "py38_310": {
        **_OBJECTS,
        "interp_threads_head": ("PyInterpreterState", "tstate_head"),
        "tstate_frame": ("PyThreadState", "frame"),
        "frame_previous": ("PyFrameObject", "f_back"),
        "frame_code": ("PyFrameObject", "f_code"),
        "frame_instr": ("PyFrameObject", "f_lasti"),
        "code_code": ("PyCodeObject", "co_code"),
    },
    "py311_312": {
        **_OBJECTS,
        "interp_threads_head": ("PyInterpreterState", "threads.head"),
        "tstate_native_thread_id": ("PyThreadState", "native_thread_id"),
        "tstate_frame": ("PyThreadState", "cframe"),
        "cframe_current_frame": ("_PyCFrame", "current_frame"),
        "frame_previous": ("_PyInterpreterFrame", "previous"),
        "frame_code": ("_PyInterpreterFrame", "f_code"),
        "frame_instr": ("_PyInterpreterFrame", "prev_instr"),
        "frame_owner": ("_PyInterpreterFrame", "owner"),
        "code_qualname": ("PyCodeObject", "co_qualname"),
        "code_linetable": ("PyCodeObject", "co_linetable"),
        "code_adaptive": ("PyCodeObject", "co_code_adaptive"),
    },
    "py313": {  # what the file's _Py_DebugOffsets says, against DWARF
        **_OBJECTS,
        "interp_threads_head": ("PyInterpreterState", "threads.head"),
        "tstate_native_thread_id": ("PyThreadState", "native_thread_id"),
        "tstate_frame": ("PyThreadState", "current_frame"),
        "frame_previous": ("_PyInterpreterFrame", "previous"),
        "frame_code": ("_PyInterpreterFrame", "f_executable"),
        "frame_instr": ("_PyInterpreterFrame", "instr_ptr"),
        "frame_owner": ("_PyInterpreterFrame", "owner"),
        "code_qualname": ("PyCodeObject", "co_qualname"),
        "code_linetable": ("PyCodeObject", "co_linetable"),
        "code_adaptive": ("PyCodeObject", "co_code_adaptive"),
    },
}


# Objects field -> (type, member): dicts, modules, ints and types, for thread names.
# 3.8-3.10 keep PyDictKeysObject and PyModuleObject in .c files: DWARF only.
_OBJECT_COMMON = {
    "module_dict": ("PyModuleObject", "md_dict"),
    "dict_keys": ("PyDictObject", "ma_keys"),
    "dict_values": ("PyDictObject", "ma_values"),
    "keys_nentries": ("PyDictKeysObject", "dk_nentries"),
    "keys_indices": ("PyDictKeysObject", "dk_indices"),
    "type_flags": ("PyTypeObject", "tp_flags"),
    "type_basicsize": ("PyTypeObject", "tp_basicsize"),
    "type_dictoffset": ("PyTypeObject", "tp_dictoffset"),
    "heaptype_cached_keys": ("PyHeapTypeObject", "ht_cached_keys"),
}


def _object_members(minor: int) -> dict[str, tuple[str, str]]:
    out = dict(_OBJECT_COMMON)
    if minor <= 11:
        out["interp_modules"] = ("PyInterpreterState", "modules")
        out["long_size"] = ("PyLongObject", "ob_base.ob_size")
        out["long_digits"] = ("PyLongObject", "ob_digit")
    else:
        out["interp_modules"] = ("PyInterpreterState", "imports.modules")
        out["long_size"] = ("PyLongObject", "long_value.lv_tag")
        out["long_digits"] = ("PyLongObject", "long_value.ob_digit")
    if minor <= 10:
        out["keys_size"] = ("PyDictKeysObject", "dk_size")
    else:
        out["keys_size"] = ("PyDictKeysObject", "dk_log2_size")
        out["keys_log2_index_bytes"] = ("PyDictKeysObject", "dk_log2_index_bytes")
        out["keys_kind"] = ("PyDictKeysObject", "dk_kind")
        out["values_data"] = ("PyDictValues", "values")
    if minor >= 13:
        out["values_capacity"] = ("PyDictValues", "capacity")
        out["values_valid"] = ("PyDictValues", "valid")
    return out


def _family(minor: int) -> str:
    return "py38_310" if minor <= 10 else "py311_312" if minor <= 12 else "py313"


def _members(minor: int) -> dict[str, tuple[str, str]]:
    out = dict(MEMBERS[_family(minor)])
    if minor <= 10:
        out["code_linetable"] = ("PyCodeObject", "co_lnotab" if minor <= 9 else "co_linetable")
    return out


def _fixed(minor: int) -> Layout:
    return {**py38_310.LAYOUTS, **py311_312.LAYOUTS}[minor]


def _pyenv_lib(minor: int) -> Path | None:
    found = sorted(glob.glob(str(PYENV / f"3.{minor}.*" / "lib" / f"libpython3.{minor}.so.1.0")))
    return Path(found[-1]) if found else None


# ---- offsetof over the headers ----------------------------------------------------

_HEADERS = {
    8: ["frameobject.h", "internal/pycore_pystate.h"],
    9: ["frameobject.h", "internal/pycore_interp.h", "internal/pycore_runtime.h"],
    10: ["frameobject.h", "internal/pycore_interp.h", "internal/pycore_runtime.h"],
    11: ["internal/pycore_interp.h", "internal/pycore_runtime.h", "internal/pycore_frame.h"],
    12: ["internal/pycore_interp.h", "internal/pycore_runtime.h", "internal/pycore_frame.h"],
    13: ["internal/pycore_runtime.h"],
    14: ["internal/pycore_debug_offsets.h", "internal/pycore_interpframe_structs.h"],
    15: ["internal/pycore_debug_offsets.h", "internal/pycore_interpframe_structs.h"],
}


def _include_dirs(minor: int) -> list[tuple[str, Path]]:
    """(who, include dir) of every header set of this version on the machine."""
    out = []
    for who, base in (("Debian", Path("/usr/include")), ("sid", SID / "usr" / "include")):
        d = base / f"python3.{minor}"
        if (d / "internal").is_dir():
            out.append((who, d))
    for d in sorted(glob.glob(str(PYENV / f"3.{minor}.*" / "include" / f"python3.{minor}"))):
        if (Path(d) / "internal").is_dir():
            out.append((f"pyenv {Path(d).parent.parent.name}", Path(d)))
    return out


def _offsetof_program(minor: int, exprs: dict[str, str]) -> str:
    lines = ["#define Py_BUILD_CORE 1", "#include <Python.h>", "#include <stddef.h>",
             "#include <stdio.h>"]
    lines += [f'#include "{h}"' for h in _HEADERS[minor]]
    lines += ["int main(void) {"]
    lines += [f'    printf("{k} %ld\\n", (long)({v}));' for k, v in exprs.items()]
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


def _compile(tmp_path: Path, include: Path, minor: int, exprs: dict[str, str]) -> dict:
    src, exe = tmp_path / f"l{minor}.c", tmp_path / f"l{minor}"
    src.write_text(_offsetof_program(minor, exprs))
    # Debian's pyconfig.h includes <x86_64-linux-gnu/python3.X/pyconfig.h>: search the
    # root's include dir after the host's own (whose libc headers come first).
    cc = subprocess.run(["gcc", "-w", "-I", str(include), "-idirafter", str(include.parent),
                         "-o", str(exe), str(src)], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr[-3000:]
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def _c_expr(spec: tuple[str, str]) -> str:
    kind, what = spec
    return f"sizeof({what})" if kind == "sizeof" else f"offsetof({kind}, {what})"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("minor", [8, 9, 10, 11, 12])
def test_fixed_layouts_equal_offsetof_in_headers(minor, tmp_path):
    dirs = _include_dirs(minor)
    if not dirs:
        pytest.skip(f"no CPython 3.{minor} headers with internal/ on this machine")
    want = _fixed(minor)
    exprs = {k: _c_expr(v) for k, v in _members(minor).items()}
    if minor == 12:
        exprs["frame_owner_skip"] = "FRAME_OWNED_BY_CSTACK"
    for who, d in dirs:
        got = _compile(tmp_path, d, minor, exprs)
        assert {k: getattr(want, k) for k in got} == got, who


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("minor", [13, 14, 15])
def test_debug_offsets_positions_equal_offsetof_in_headers(minor, tmp_path):
    dirs = _include_dirs(minor)
    if not dirs:
        pytest.skip(f"no CPython 3.{minor} headers with internal/ on this machine")
    pos = py313.positions(minor)
    exprs = {k: f"offsetof(_Py_DebugOffsets, {k})" for k in pos
             if k not in ("sizeof", "cookie")}
    exprs["sizeof"] = "sizeof(_Py_DebugOffsets)"
    exprs["owner_skip"] = ("FRAME_OWNED_BY_CSTACK" if minor == 13
                           else "FRAME_OWNED_BY_INTERPRETER")
    exprs["ascii"] = "sizeof(PyASCIIObject)"
    exprs["compact"] = "sizeof(PyCompactUnicodeObject)"
    for who, d in dirs:
        got = _compile(tmp_path, d, minor, exprs)
        assert got.pop("owner_skip") == py313._OWNER_SKIP, who
        assert got.pop("compact") - got.pop("ascii") == py313._UTF8_FIELDS, who
        assert {k: pos[k] for k in got} == got, who


_OBJECT_HEADERS = ["internal/pycore_interp.h", "internal/pycore_dict.h",
                   "internal/pycore_moduleobject.h", "internal/pycore_object.h"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("minor", [11, 12, 13, 14, 15])
def test_objects_equal_offsetof_in_headers(minor, tmp_path, monkeypatch):
    dirs = _include_dirs(minor)
    if not dirs:
        pytest.skip(f"no CPython 3.{minor} headers with internal/ on this machine")
    monkeypatch.setitem(_HEADERS, minor, _HEADERS[minor] + _OBJECT_HEADERS)
    exprs = {k: _c_expr(v) for k, v in _object_members(minor).items()}
    exprs["managed_flag"] = "Py_TPFLAGS_MANAGED_DICT"
    exprs["general"] = "DICT_KEYS_GENERAL"
    if minor >= 13:
        exprs["inline_flag"] = "Py_TPFLAGS_INLINE_VALUES"
        exprs["managed_dict_before"] = "-MANAGED_DICT_OFFSET"
    for who, d in dirs:
        if minor <= 12:
            want = _fixed(minor).objects
        elif who == "sid":
            want = layout_for(str(_sid_binary(minor)), f"3.{minor}").objects
        else:
            lib = _pyenv_lib(minor)
            if lib is None or not who.endswith(lib.parent.parent.name):
                continue
            want = layout_for(str(lib), f"3.{minor}").objects
        got = _compile(tmp_path, d, minor, exprs)
        assert got.pop("managed_flag") == TPFLAGS_MANAGED_DICT, who
        assert got.pop("general") == DICT_KEYS_GENERAL, who
        if minor >= 13:
            assert got.pop("inline_flag") == TPFLAGS_INLINE_VALUES, who
        assert {k: getattr(want, k) for k in got} == got, who


# ---- DWARF of the pyenv builds ------------------------------------------------------

def _gdb_values(lib: Path, exprs: dict[str, str]) -> dict[str, int | None]:
    args = ["gdb", "-batch", "-nx"]
    for e in exprs.values():
        args += ["-ex", f"print {e}"]
    out = subprocess.run(args + [str(lib)], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines()
             if ln.startswith("$") or "There is no member" in ln or "No symbol" in ln
             or "No struct" in ln]
    vals: dict[str, int | None] = {}
    for k, ln in zip(exprs, lines, strict=False):
        vals[k] = int(ln.split("=", 1)[1]) if ln.startswith("$") else None
    return vals


def _gdb_expr(spec: tuple[str, str]) -> str:
    kind, what = spec
    return f"sizeof({what})" if kind == "sizeof" else f"(long)&(({kind} *)0)->{what}"


@pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb (apt install gdb)")
@pytest.mark.parametrize("minor", [8, 9, 10, 11, 12, 13])
def test_layouts_equal_pyenv_dwarf(minor):
    lib = _pyenv_lib(minor)
    if lib is None:
        pytest.skip(f"no pyenv-built CPython 3.{minor} under {PYENV}")
    if b".debug_info" not in subprocess.run(["readelf", "-S", "-W", str(lib)],
                                            capture_output=True).stdout:
        pytest.skip(f"{lib} has no DWARF (.debug_info)")
    want = layout_for(str(lib), f"3.{minor}")
    if minor >= 13:
        assert want.source == f"_Py_DebugOffsets in {lib}"
    exprs = {k: _gdb_expr(v) for k, v in _members(minor).items()}
    got = _gdb_values(lib, exprs)
    assert None not in got.values(), got
    assert {k: getattr(want, k) for k in got} == got
    exprs = {k: _gdb_expr(v) for k, v in _object_members(minor).items()}
    got = _gdb_values(lib, exprs)
    assert None not in got.values(), got
    assert {k: getattr(want.objects, k) for k in got} == got


# ---- reading layouts from files -------------------------------------------------

def _sid_binary(minor: int) -> Path:
    p = SID / "usr" / "bin" / f"python3.{minor}"
    if not p.exists():
        pytest.skip(f"{p} missing: run `make interpreters`")
    return p


@pytest.mark.parametrize("minor", [13, 14, 15])
def test_sid_layouts_come_from_debug_offsets(minor):
    path = str(_sid_binary(minor))
    lay = layout_for(path, f"3.{minor}")
    assert lay.minor == minor and lay.source == f"_Py_DebugOffsets in {path}"
    assert lay.frame_code_tag_bits == (3 if minor >= 14 else 0)
    assert lay.frame_owner_skip == 3 and lay.cframe_current_frame == -1
    assert lay.tstate_native_thread_id > lay.tstate_thread_id > 0


def test_debian_311_is_the_fixed_layout():
    lay = layout_for("/usr/bin/python3.11", "3.11")
    assert lay == py311_312.LAYOUTS[11] and lay.source == "fixed layout for 3.11"


def test_every_field_is_set_and_absent_ones_are_minus_one():
    for minor in range(8, 13):
        lay = _fixed(minor)
        for f in dataclasses.fields(Layout):
            v = getattr(lay, f.name)
            assert v is not None and (not isinstance(v, int) or v >= -1), (minor, f.name)
        for f in dataclasses.fields(Objects):
            v = getattr(lay.objects, f.name)
            assert v is not None and (not isinstance(v, int) or v >= -1), (minor, f.name)
        assert (lay.objects.keys_kind == -1) == (minor <= 10)
        assert (lay.tstate_native_thread_id == -1) == (minor <= 10)
        assert (lay.code_qualname == -1) == (minor <= 10)
        assert (lay.frame_owner_skip == -1) == (minor <= 11)


def test_layout_for_refuses_what_it_does_not_know(tmp_path):
    with pytest.raises(ScopeError, match="3.7 is not supported"):
        layout_for("/usr/bin/python3.11", "3.7")
    with pytest.raises(ScopeError, match="cannot tell"):
        layout_for("/usr/bin/python3.11", None)
    with pytest.raises(ScopeError, match="older than 3.13"):
        layout_for("/usr/bin/python3.11", "3.13")  # says 3.13, has no debug offsets
    with pytest.raises(ScopeError):
        layout_for(str(tmp_path / "missing"), "3.14")


# ---- line tables: every decoder against the interpreter that wrote the table ----

_LINES_PROGRAM = r"""
import dis, json, sys
def sample(a):
    x = [i
         for i in range(a)]
    if a:
        y = 1
    else:

        y = 2
    try:
        z = x[0] if x else None
    except IndexError:
        z = None


    return (x,
            y, z)
out = []
for co in (sample.__code__, compile("a=1\nb=2\n\n\nc=3\n" * 40, "m", "exec")):
    table = co.co_lnotab if sys.version_info < (3, 10) else co.co_linetable
    lines = {}
    for off in range(0, len(co.co_code), 2):
        if sys.version_info >= (3, 11):
            pos = [p for p in co.co_positions()][off // 2][0]
            lines[off] = -1 if pos is None else pos
        elif sys.version_info >= (3, 10):
            lines[off] = next((l if l is not None else -1 for s, e, l in co.co_lines()
                               if s <= off < e), -1)
        else:
            import dis
            starts = list(dis.findlinestarts(co))
            lines[off] = ([l for s, l in starts if s <= off] or [co.co_firstlineno])[-1]
    out.append([table.hex(), co.co_firstlineno, lines])
print(json.dumps(out))
"""


def _interpreters() -> list[tuple[int, list[str]]]:
    out = [(11, ["/usr/bin/python3.11"])]
    for minor in (8, 9, 10, 12, 13):
        found = sorted(glob.glob(str(PYENV / f"3.{minor}.*" / "bin" / f"python3.{minor}")))
        if found:
            out.append((minor, [found[-1]]))
    for minor in (13, 14, 15):
        if (SID / "usr" / "bin" / f"python3.{minor}").exists():
            out.append((minor, ["chroot", str(SID), f"python3.{minor}"]))
    return out


@pytest.mark.parametrize("minor,argv", _interpreters(), ids=lambda v: str(v))
def test_line_table_decoders_agree_with_the_interpreter(minor, argv):
    import json

    r = subprocess.run([*argv, "-c", _LINES_PROGRAM], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    lay = _fixed(minor) if minor <= 12 else dataclasses.replace(
        py311_312.LAYOUTS[12], minor=minor, linetable_kind="locations")
    for table, first, lines in json.loads(r.stdout):
        for off, line in lines.items():
            assert line_for(lay, bytes.fromhex(table), first, int(off)) == line, (off, lines)


# ---- find_runtime: the file holding _PyRuntime in a live process --------------------

def _started(argv: list[str]) -> subprocess.Popen:
    p = subprocess.Popen([*argv, "-c", "import time; print(1, flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE)
    assert p.stdout.readline()  # the interpreter is initialised
    return p


def _runtime_cases() -> list[tuple[str, list[str], str]]:
    out = [("debian-3.11", ["/usr/bin/python3.11"], "/usr/bin/python3.11")]
    lib = _pyenv_lib(12)
    if lib is not None:
        out.append(("pyenv-3.12", [str(lib.parent.parent / "bin" / "python3.12")], lib.name))
    if (SID / "usr" / "bin" / "python3.15").exists():
        out.append(("sid-3.15", ["chroot", str(SID), "python3.15"], "python3.15"))
    return out


@pytest.mark.parametrize("name,argv,holder", _runtime_cases(), ids=lambda v: str(v))
def test_find_runtime_locates_the_interpreter_state(name, argv, holder):
    import struct

    from scope_ebpf.interpreters.layouts import find_runtime

    p = _started(argv)
    try:
        rt = find_runtime(p.pid)
        assert rt.path.endswith(holder) and rt.mapped.endswith(holder)
        lay = rt.layout
        with open(f"/proc/{p.pid}/mem", "rb") as mem:
            def ptr(addr):
                mem.seek(addr)
                return struct.unpack("<Q", mem.read(8))[0]
            interp = ptr(rt.runtime + lay.runtime_interpreters_head)
            tstate = ptr(interp + lay.interp_threads_head)
            assert ptr(tstate + lay.tstate_native_thread_id) == p.pid  # the main thread
            assert ptr(tstate + lay.tstate_frame)  # it is running Python code
    finally:
        p.kill()
        p.wait()


def test_find_runtime_refuses_what_is_not_cpython():
    from scope_ebpf.interpreters.layouts import find_runtime

    p = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(ScopeError, match=f"process {p.pid} is not a CPython process"):
            find_runtime(p.pid)
    finally:
        p.kill()
        p.wait()
    with pytest.raises(ScopeError, match="no such process: 4194303"):
        find_runtime(4194303)
