"""The BPF side: compile ``bpf/scope.bpf.c`` with bcc, expose its maps.

bcc compiles at run time against the headers under
``/lib/modules/$(uname -r)/build``; our C reads no kernel struct, so generic
distribution headers are enough (``packaging/setup.sh`` links them).
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

import numpy as np

from . import events
from .errors import ScopeError
from .ringbuf import PAGE, RingReader

TRACEFS = "/sys/kernel/tracing"

# Ring buffer name -> struct it carries.
RINGS = {
    "calls_rb": "call_event",
    "funcs_rb": "func_event",
    "gc_rb": "gc_event",
    "sched_rb": "sched_event",
    "proc_rb": "proc_event",
    "imports_rb": "import_event",
    "audit_rb": "audit_event",
}


@dataclass
class Limits:
    """Sizes of the kernel-side buffers and maps (pages are 4 KiB)."""

    calls_rb_pages: int = 4096  # 16 MiB: ~400k calls of head-room between drains
    sched_rb_pages: int = 256
    max_threads: int = 4096
    max_funcs: int = 65536
    max_targets: int = 1024
    max_specs: int = 256


def check_environment() -> None:
    """Fail with one clear line when the host cannot run the BPF programs."""
    if os.geteuid() != 0:
        raise ScopeError("scope-ebpf needs root (CAP_BPF and CAP_PERFMON): run it with sudo")
    build = f"/lib/modules/{platform.release()}/build"
    if not os.path.isdir(os.path.join(build, "include")):
        raise ScopeError(f"kernel headers missing at {build} (bcc compiles against them): "
                         "run `make setup` or install your distribution's headers")
    if not os.path.isdir(os.path.join(TRACEFS, "events")):
        try:
            _mount_tracefs()
        except OSError as e:
            raise ScopeError(f"tracefs is not mounted at {TRACEFS} and mounting it failed "
                             f"({e.strerror}): mount -t tracefs nodev {TRACEFS}") from None


def _mount_tracefs() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Program:
    """The compiled, loaded program; tracepoints attach on load."""

    def __init__(self, limits: Limits | None = None) -> None:
        from bcc import BPF  # imported late: importing bcc is slow and needs root

        self.limits = limits = limits or Limits()
        cflags = [
            f"-I{events.BPF_DIR}",
            f"-DCALLS_RB_PAGES={limits.calls_rb_pages}",
            f"-DSCHED_RB_PAGES={limits.sched_rb_pages}",
            f"-DMAX_THREADS={limits.max_threads}",
            f"-DMAX_FUNCS={limits.max_funcs}",
            f"-DMAX_TARGETS={limits.max_targets}",
            f"-DMAX_SPECS={limits.max_specs}",
            "-Wno-unused-function",
        ]
        src = events.BPF_DIR / "scope.bpf.c"
        try:
            self.bpf = BPF(src_file=str(src).encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception for compile/load failures
            raise ScopeError(f"could not compile or load the BPF program: {e}") from None
        self.set_tracer_pid(os.getpid())
        self._fds: dict[str, int] = {}
        self.rings: dict[str, RingReader] = {}
        dts = events.dtypes()
        for name, struct in RINGS.items():
            table = self.bpf[name]
            size = self._ring_size(name)
            self.rings[name] = RingReader(table.map_fd, size, dts[struct])

    def _ring_size(self, name: str) -> int:
        pages = {"calls_rb": self.limits.calls_rb_pages, "sched_rb": self.limits.sched_rb_pages,
                 "funcs_rb": 256, "gc_rb": 16, "proc_rb": 64, "imports_rb": 64,
                 "audit_rb": 256}[name]
        return pages * PAGE

    def prog_fd(self, func: str) -> int:
        """fd of a uprobe program, for attach.UprobeLink."""
        if func not in self._fds:
            from bcc import BPF

            self._fds[func] = self.bpf.load_func(func.encode(), BPF.KPROBE).fd
        return self._fds[func]

    # -- maps -------------------------------------------------------------

    def set_tracer_pid(self, pid: int) -> None:
        t = self.bpf["tracer_pid"]
        t[t.Key(0)] = t.Leaf(pid)

    def add_target(self, pid: int) -> None:
        t = self.bpf["targets"]
        t[t.Key(pid)] = t.Leaf(1)

    def remove_target(self, pid: int) -> None:
        t = self.bpf["targets"]
        try:
            del t[t.Key(pid)]
        except KeyError:
            pass

    def targets(self) -> list[int]:
        return [k.value for k in self.bpf["targets"].keys()]

    def set_spec(self, index: int, spec: np.void) -> None:
        """Write one probe_spec record (events.dtypes()['probe_spec']) at a cookie."""
        _write_record(self.bpf["specs"], index, spec)

    def set_config(self, **fields: int) -> None:
        table = self.bpf["config"]
        c = table[table.Key(0)]
        for k, v in fields.items():
            setattr(c, k, v)
        table[table.Key(0)] = c

    def set_verdicts(self, verdicts: list[tuple[int, tuple[int, int, int, int], int]]) -> None:
        """(func id, its func_key fields, k) per function: k = 0 drops its rows, else
        one call in k is sent. Stored in the interning map, read at each call's entry."""
        table = self.bpf["funcs"]
        for fid, (name, file, pid, line), k in verdicts:
            table[table.Key(name, file, pid, line)] = table.Leaf(fid, k)

    def select_tid(self, tid: int) -> None:
        t = self.bpf["tids"]
        t[t.Key(tid)] = t.Leaf(1)

    def set_frame_offsets(self, index: int, rec: np.void) -> None:
        """Write one frame_offsets record (CPython struct offsets) at a cookie."""
        _write_record(self.bpf["frame_offs"], index, rec)

    def stats(self) -> dict[str, int]:
        """Kernel counters summed over CPUs."""
        table = self.bpf["stats"]
        return {name: int(sum(table[table.Key(i)]))
                for i, name in enumerate(events.STAT_NAMES)}

    def open_frames(self) -> list[tuple[int, int, int, int, int]]:
        """(pid, tid, depth, start_ns, func_id) of every call not yet returned."""
        out = []
        for key, st in self.bpf["stacks"].items():
            depth = min(st.depth, events.const("SCOPE_MAX_DEPTH"))
            for i in range(depth):
                f = st.frames[i]
                out.append((st.pid, key.value, i, f.start_ns, f.func_id))
        return out

    def close(self) -> None:
        for r in self.rings.values():
            r.close()
        self.rings.clear()
        self.bpf.cleanup()


def _write_record(table, index: int, rec: np.void) -> None:
    """Store a numpy record (a struct of scope.h) in an array map."""
    leaf = table.Leaf()
    raw = rec.tobytes()
    if len(raw) != ctypes.sizeof(leaf):
        raise ValueError(f"record of {len(raw)} bytes for a {ctypes.sizeof(leaf)}-byte value")
    ctypes.memmove(ctypes.addressof(leaf), raw, len(raw))
    table[table.Key(index)] = leaf
