"""Event layouts, derived from the one definition in ``bpf/scope.h``.

The BPF programs include the header; this module parses the same text into
numpy dtypes, so a field added on the C side is decoded here without a second
definition that could drift. The parser accepts only the restricted subset the
header documents and fails loudly on anything else.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
if not BPF_DIR.is_dir():  # installed wheel: sources shipped inside the package
    BPF_DIR = Path(__file__).resolve().parent / "bpf"
HEADER = BPF_DIR / "scope.h"

_CTYPES = {
    "__u8": "u1", "__u16": "<u2", "__u32": "<u4", "__u64": "<u8",
    "__s8": "i1", "__s16": "<i2", "__s32": "<i4", "__s64": "<i8",
}
_DEFINE = re.compile(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", re.M)
_STRUCT = re.compile(r"^struct\s+(\w+)\s*\{(.*?)^\};", re.M | re.S)
_MEMBER = re.compile(r"^(?:struct\s+)?(\w+)\s+(\w+)(?:\[(\w+)\])?;$")


class LayoutError(Exception):
    """The header uses a construct the parser does not understand."""


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


@cache
def constants(path: Path = HEADER) -> dict[str, int]:
    """Every ``#define NAME NUMBER`` of the header."""
    return {k: int(v, 0) for k, v in _DEFINE.findall(_strip_comments(path.read_text()))}


@cache
def dtypes(path: Path = HEADER) -> dict[str, np.dtype]:
    """A packed numpy dtype per struct, keyed by struct name."""
    text = _strip_comments(path.read_text())
    consts = constants(path)
    out: dict[str, np.dtype] = {}
    for name, body in _STRUCT.findall(text):
        fields = []
        for raw in body.splitlines():
            line = raw.strip()
            if not line:
                continue
            m = _MEMBER.match(line)
            if not m:
                raise LayoutError(f"{path.name}: struct {name}: cannot parse {line!r}")
            ctype, field, count = m.groups()
            n = None
            if count is not None:
                n = int(count) if count.isdigit() else consts.get(count)
                if not n:
                    raise LayoutError(f"{path.name}: unknown array size {count!r}")
            if ctype == "char":
                fields.append((field, f"S{n or 1}"))
            elif ctype in out and line.startswith("struct "):  # an earlier struct
                fields.append((field, out[ctype], (n,)) if n else (field, out[ctype]))
            elif ctype in _CTYPES:
                fields.append((field, _CTYPES[ctype], (n,)) if n else (field, _CTYPES[ctype]))
            else:
                raise LayoutError(f"{path.name}: struct {name}: unsupported member {line!r}")
        dt = np.dtype(fields)
        for field, *_ in fields:  # the C compiler would pad these; the header must not need it
            ftype, offset = dt.fields[field][:2]
            base = ftype.base if ftype.subdtype else ftype
            align = 8 if base.names else base.itemsize  # a struct: its widest member
            if base.kind != "S" and offset % align:
                raise LayoutError(f"struct {name}: {field} is misaligned")
        if dt.itemsize % 8:
            raise LayoutError(f"struct {name}: size {dt.itemsize} is not a multiple of 8")
        out[name] = dt
    return out


def const(name: str) -> int:
    return constants()[name]


STAT_NAMES = (
    "entries", "returns", "calls_lost", "funcs_lost", "unmatched_returns",
    "too_deep", "gc", "gc_lost", "sched", "sched_lost", "proc", "proc_lost",
    "threads_untraced", "functions_uninterned", "open_at_thread_exit",
    "imports", "imports_lost", "audit", "audit_lost",
    "calls_filtered", "calls_short", "calls_sampled_out", "calls_tid_filtered",
    "breaker_skipped", "calls_guard_sampled", "generators_created", "unsynced_frames",
    "paths_lost", "samples", "samples_lost", "sample_stacks_lost", "samples_truncated",
    "samples_no_thread", "samples_no_layout", "samples_empty", "tstate_walks",
    "offcpu_stacks", "offcpu_unwalked", "event_stacks", "offcpu_rate_skipped",
    "adopted", "adopt_lost", "budget_skipped", "budget_sampled", "fstat_failed",
    "frames_reset", "fstats_spilled",
)

# Kernel counters of data that was lost (not dropped by a filter or sampling
# decision), with what each loses: the summary and the report add these up.
LOSSES = {
    "calls_lost": "call rows lost: calls ring buffer full",
    "too_deep": "call rows lost: deeper than the shadow stack (counted in functions)",
    "breaker_skipped": "probe hits ignored while the circuit breaker was open",
    "budget_skipped": "probe hits ignored while a selector's or process's breaker was open",
    "unsynced_frames": "call rows lost: calls whose return was never seen (counted in "
                       "functions)",
    "frames_reset": "calls lost, not counted in functions: open when their thread's shadow "
                    "stack restarted (breaker re-attached, budget re-admitted)",
    "fstat_failed": "calls not counted in functions: the kernel could not allocate their "
                    "function's aggregates, and its spill map was full",
    "threads_untraced": "threads not traced: thread map full",
    "functions_uninterned": "calls not attributed to a function: function map full",
    "funcs_lost": "function names lost: names ring buffer full",
    "adopt_lost": "processes adopted after their first instruction: proc ring buffer full",
    "paths_lost": "call paths not written to stacks: paths ring buffer full (sent again "
                  "at the path's next call)",
    "gc_lost": "gc rows lost: buffer full",
    "sched_lost": "off-CPU rows lost: buffer full",
    "proc_lost": "process events lost: buffer full",
    "imports_lost": "import rows lost: buffer full",
    "audit_lost": "audit rows lost: buffer full",
    "samples_lost": "stack samples lost: samples ring buffer full",
    "sample_stacks_lost": "sampled stacks not sent: stacks ring buffer full (their samples "
                          "have no stack)",
    "samples_no_thread": "stack samples without a stack: the thread's state was not found",
    "samples_no_layout": "stack samples without a stack: the process's layout was not "
                         "known yet",
}


def _check_stats() -> None:
    c = constants()
    if len(STAT_NAMES) != c["STAT_COUNT"]:
        raise LayoutError("STAT_NAMES does not match STAT_COUNT in scope.h")
    if not LOSSES.keys() <= set(STAT_NAMES):
        raise LayoutError("LOSSES names a counter that STAT_NAMES does not have")


_check_stats()
