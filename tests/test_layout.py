"""The numpy dtypes events.py derives from bpf/scope.h equal the C compiler's layout.

The ring buffers hand user space raw bytes laid out by clang for BPF; events.py
decodes them with dtypes parsed from the same header. A C program generated
from those dtypes asks gcc for sizeof/offsetof/size/signedness of every member
and the value of every constant, and the answers must match exactly. Since each
dtype is packed (its fields tile it without gaps), an equal sizeof also proves
that the C struct has no member the dtype lacks.

The parser's own rules (only the documented subset, no padding) are tested
against small temporary headers.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from scope_ebpf import events

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

EXPECTED_STRUCTS = {"call_event", "func_event", "gc_event", "sched_event", "proc_event"}


def _c_program(dtypes: dict[str, np.dtype], consts: dict[str, int]) -> str:
    out = [
        "#include <linux/types.h>",
        "#include <stddef.h>",
        "#include <stdio.h>",
        '#include "scope.h"',
        "",
        "#define MEMBER(s, f) (((struct s *)0)->f)",
        "#define IS_SIGNED(s, f) ((__typeof__(MEMBER(s, f)))-1 < 0)",
        "#define IS_SIGNED_EL(s, f) ((__typeof__(MEMBER(s, f)[0]))-1 < 0)",
        "",
        "int main(void)",
        "{",
    ]
    for name, dt in dtypes.items():
        out.append(f'    printf("struct {name} %zu\\n", sizeof(struct {name}));')
        for field in dt.names:
            ftype = dt.fields[field][0]
            where = f"offsetof(struct {name}, {field}), sizeof(MEMBER({name}, {field}))"
            if ftype.kind == "S":
                # An array of single bytes: element size 1, so sizeof is the length.
                out.append(
                    f'    printf("member {name} {field} %zu %zu S%zu\\n", {where}, '
                    f"sizeof(MEMBER({name}, {field})[0]));"
                )
            elif ftype.base.names:  # an array of an earlier struct: its layout is checked too
                out.append(f'    printf("member {name} {field} %zu %zu V\\n", {where});')
            else:
                signed = "IS_SIGNED_EL" if ftype.subdtype else "IS_SIGNED"
                out.append(
                    f'    printf("member {name} {field} %zu %zu %c\\n", {where}, '
                    f"{signed}({name}, {field}) ? 'i' : 'u');"
                )
    for name in consts:
        out.append(f'    printf("const {name} %lld\\n", (long long)({name}));')
    out += ["    return 0;", "}", ""]
    return "\n".join(out)


def _compile_and_run(tmp_path: Path, source: str, include: Path) -> list[list[str]]:
    src = tmp_path / "layout.c"
    exe = tmp_path / "layout"
    src.write_text(source)
    cc = subprocess.run(
        ["gcc", "-std=gnu11", "-Wall", "-Werror", "-I", str(include), "-o", str(exe), str(src)],
        capture_output=True, text=True,
    )
    assert cc.returncode == 0, f"gcc failed:\n{cc.stderr}\n--- {src}:\n{source}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    return [line.split() for line in run.stdout.splitlines()]


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory) -> dict:
    """What gcc says about scope.h: struct sizes, members and constants."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    tmp = tmp_path_factory.mktemp("layout")
    rows = _compile_and_run(
        tmp, _c_program(events.dtypes(), events.constants()), events.HEADER.parent
    )
    sizes: dict[str, int] = {}
    members: dict[str, list[tuple[str, int, int, str]]] = {}
    consts: dict[str, int] = {}
    for row in rows:
        if row[0] == "struct":
            sizes[row[1]] = int(row[2])
        elif row[0] == "member":
            _, struct, field, offset, size, kind = row
            members.setdefault(struct, []).append((field, int(offset), int(size), kind))
        else:
            consts[row[1]] = int(row[2])
    return {"sizes": sizes, "members": members, "consts": consts}


def test_parser_finds_every_event_struct():
    assert EXPECTED_STRUCTS <= set(events.dtypes())


@needs_gcc
@pytest.mark.parametrize("struct", sorted(events.dtypes()))
def test_struct_size_matches_c(c_layout, struct):
    assert events.dtypes()[struct].itemsize == c_layout["sizes"][struct]


@needs_gcc
@pytest.mark.parametrize("struct", sorted(events.dtypes()))
def test_member_offsets_sizes_and_signedness_match_c(c_layout, struct):
    dt = events.dtypes()[struct]
    expected = []
    for field in dt.names:
        ftype, offset = dt.fields[field][:2]
        kind = f"S{ftype.itemsize}" if ftype.kind == "S" else (ftype.base.kind)
        expected.append((field, offset, ftype.itemsize, kind))
    c_members = c_layout["members"][struct]
    # S-fields: gcc reports the element size (must be 1 byte) and sizeof = length.
    c_normalised = [
        (f, o, s, f"S{s}" if k == "S1" else k) for f, o, s, k in c_members
    ]
    assert c_normalised == expected


def test_dtypes_are_little_endian_like_the_bpf_target():
    for name, dt in events.dtypes().items():
        for field in dt.names:
            ftype = dt.fields[field][0]
            assert ftype == ftype.newbyteorder("<"), f"{name}.{field}: {ftype}"


@needs_gcc
def test_constants_match_the_preprocessor(c_layout):
    assert c_layout["consts"] == events.constants()
    assert len(events.STAT_NAMES) == c_layout["consts"]["STAT_COUNT"]


# --- the parser's rules, on temporary headers ---------------------------------


def _header(tmp_path: Path, body: str, name: str = "h.h") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_parses_the_documented_subset(tmp_path):
    path = _header(tmp_path, """
        /* a comment with a #define FAKE 9 inside */
        #define LEN 0x10   /* hex */
        #define COUNT 3
        #define NOT_A_NUMBER (1 << 2)
        struct ok {
            __u64 a;      /* trailing comment */
            __s64 b;
            __u32 c;
            __s32 d;
            __u16 e;
            __u8 f;
            __u8 g;
            char name[LEN];
            char tag[4];
        };
        """.replace("\n        ", "\n"))
    assert events.constants(path) == {"LEN": 16, "COUNT": 3}
    dt = events.dtypes(path)["ok"]
    assert dt == np.dtype([
        ("a", "<u8"), ("b", "<i8"), ("c", "<u4"), ("d", "<i4"), ("e", "<u2"),
        ("f", "u1"), ("g", "u1"), ("name", "S16"), ("tag", "S4"),
    ])
    assert dt.itemsize == 48


@pytest.mark.parametrize("member", [
    "int x;",
    "float x;",
    "__u32 *ptr;",
    "__u64 many[];",
    "unsigned long x;",
    "struct inner in;",
    "__u32 a, b;",
    "__u32 bits : 3;",
    "char name[UNDEFINED_LEN];",
])
def test_unsupported_member_raises(tmp_path, member):
    path = _header(tmp_path, f"struct bad {{\n    __u64 first;\n    {member}\n}};\n")
    with pytest.raises(events.LayoutError, match="bad|UNDEFINED_LEN"):
        events.dtypes(path)


@pytest.mark.parametrize("members", [
    ["__u32 a;", "__u64 b;", "__u32 c;"],            # b at offset 4
    ["__u8 a;", "__u16 b;", "__u8 c;", "__u32 d;"],   # b at offset 1
    ["char tag[3];", "__u32 x;", "__u8 y;"],          # x at offset 3
    ["__u64 a;", "__u16 b;", "__u32 c;", "__u16 d;"],  # c at offset 10
])
def test_misaligned_member_raises(tmp_path, members):
    body = "\n".join(f"    {m}" for m in members)
    path = _header(tmp_path, f"struct skewed {{\n{body}\n}};\n")
    with pytest.raises(events.LayoutError, match="skewed: .* is misaligned"):
        events.dtypes(path)


@pytest.mark.parametrize("members", [
    ["__u64 a;", "__u32 b;"],   # gcc would add 4 bytes of tail padding
    ["char name[12];"],
])
def test_size_not_multiple_of_8_raises(tmp_path, members):
    body = "\n".join(f"    {m}" for m in members)
    path = _header(tmp_path, f"struct short_tail {{\n{body}\n}};\n")
    with pytest.raises(events.LayoutError, match="short_tail: size .* not a multiple of 8"):
        events.dtypes(path)


@needs_gcc
@pytest.mark.parametrize("members", [
    ["__u32 a;", "__u64 b;", "__u32 c;"],
    ["__u64 a;", "__u32 b;"],
])
def test_rejected_layouts_really_differ_in_c(tmp_path, members):
    """What the parser rejects is exactly what a packed dtype would decode wrongly."""
    body = "\n".join(f"    {m}" for m in members)
    header = _header(tmp_path, f"struct s {{\n{body}\n}};\n", "scope.h")
    with pytest.raises(events.LayoutError):
        events.dtypes(header)
    packed = np.dtype([(m.split()[1].rstrip(";"), events._CTYPES[m.split()[0]])
                       for m in members])
    rows = _compile_and_run(tmp_path, _c_program({"s": packed}, {}), tmp_path)
    c_size = int(rows[0][2])
    c_offsets = [int(r[3]) for r in rows[1:]]
    assert (c_size, c_offsets) != (packed.itemsize, [packed.fields[n][1] for n in packed.names])
