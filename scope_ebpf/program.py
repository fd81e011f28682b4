"""The BPF side: compile ``bpf/scope.bpf.c`` with bcc, expose its maps.

bcc compiles at run time against the headers under
``/lib/modules/$(uname -r)/build``; our C reads no kernel struct, so generic
distribution headers are enough (``packaging/setup.sh`` links them).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import events
from .attach import (
    BPF_TRACE_UPROBE_MULTI,
    AttachError,
    PerfEventLink,
    TracepointLink,
    close_all,
    uprobe_multi_supported,
)
from .errors import ScopeError
from .maps import Map, possible_cpus, u32
from .ringbuf import RingReader

TRACEFS = "/sys/kernel/tracing"

# Ring buffer name -> struct it carries.
RINGS = {
    "calls_rb": "call_batch",
    "funcs_rb": "func_event",
    "paths_rb": "path_event",
    "gc_rb": "gc_event",
    "sched_rb": "sched_event",
    "proc_rb": "proc_event",
    "imports_rb": "import_event",
    "audit_rb": "audit_event",
}
# With the stacks probe set (bpf/stacks.bpf.c, compiled in with -DSCOPE_STACKS).
STACK_RINGS = {
    "samples_rb": "sample_event",
    "pystacks_rb": "pystack_event",
}
STACK_MAPS = (*STACK_RINGS, "stack_offs", "tstates")
PERF_PROGS = ("on_sample",)


@dataclass
class Limits:
    """Sizes of the kernel-side buffers and maps (pages are 4 KiB)."""

    calls_rb_pages: int = 2048  # 8 MiB: ~170k calls, about 170 ms at 1M calls/s
    sched_rb_pages: int = 256
    funcs_rb_pages: int = 256   # 1 MiB: ~1,900 new function names between two drains
    paths_rb_pages: int = 64    # 256 KiB: ~6,500 new call paths between two drains
    max_threads: int = 4096
    max_funcs: int = 65536
    max_targets: int = 1024
    max_specs: int = 256
    stacks: bool = False  # compile the stack sampler in (the stacks probe set)


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


# Programs loaded for the controller to attach: uprobes, then tracepoints.
UPROBE_PROGS = ("on_entry", "on_return", "on_eval_entry", "on_eval_return", "on_inline_push",
                "on_inline_return", "on_inline_unwind", "on_gc_start", "on_gc_done",
                "on_import_start", "on_import_done", "on_audit", "on_gil_wait", "on_gil_done",
                "on_start")
SCHED_TRACEPOINTS = ("sched:sched_switch", "sched:sched_wakeup")
TRACEPOINTS = (*SCHED_TRACEPOINTS, "task:task_newtask", "task:task_rename",
               "sched:sched_process_exec",
               "sched:sched_process_exit")
MAPS = (*RINGS, "targets", "ignored", "specs", "frame_offs", "funcs", "stacks", "exited_stacks",
        "stats", "tracer_pid", "budgets", "proc_budgets",
        "config", "breaker", "tids", "fstats", "fstats_spill")

# struct func_key is private to scope.bpf.c (the controller writes verdicts by
# key); struct thread_stack is in scope.h: the controller reads stacks at stop.
BPF_EXIST = 2  # update only an existing entry
NOT_A_CALL = 0xFFFFFFFF  # k of a shadow frame that is no call (see scope.bpf.c)
_FUNC_KEY = struct.Struct("<QQIi")


def _stack_dtype() -> np.dtype:
    return events.dtypes()["thread_stack"]


class Program:
    """The compiled, loaded program and its maps; the controller attaches it.

    Compiled in a child process (see loader.py) so that this process never
    maps bcc/LLVM. ``sched`` False leaves the scheduler tracepoints off.
    """

    def __init__(self, limits: Limits | None = None, sched: bool = True) -> None:
        self.limits = limits = limits or Limits()
        key = start_loading(limits)
        # whether the uprobe programs take uprobe_multi links (see kernel/links.py)
        self.uprobe_multi = key[-1] == BPF_TRACE_UPROBE_MULTI
        self._progs, self.maps, self.cached = _finish(key)
        self._links: list[TracepointLink] = []
        self._sampling: list[PerfEventLink] = []
        self.rings: dict[str, RingReader] = {}
        try:
            if self.maps["stacks"].value_size != _stack_dtype().itemsize:
                raise ScopeError("internal error: thread_stack layout differs from the C side")
            self.set_tracer_pid(os.getpid())
            dts = events.dtypes()
            rings = {**RINGS, **(STACK_RINGS if limits.stacks else {})}
            for name, struct_name in rings.items():
                m = self.maps[name]
                self.rings[name] = RingReader(m.fd, m.max_entries, dts[struct_name])
            for tp in TRACEPOINTS:
                # sched_switch always: it also sends the calls staged on a CPU
                if sched or tp not in SCHED_TRACEPOINTS or tp == "sched:sched_switch":
                    self._links.append(TracepointLink(self._progs[tp], tp, TRACEFS))
        except (AttachError, OSError) as e:
            self.close()
            raise ScopeError(f"could not attach the tracepoints: {e}") from None
        except BaseException:
            self.close()
            raise

    def start_sampling(self, hz: int) -> None:
        """A cpu-clock perf event per online CPU at ``hz`` runs the stack sampler
        (which records only threads of targets with PROBE_STACKS)."""
        if self._sampling:
            return
        try:
            for cpu in online_cpus():
                self._sampling.append(PerfEventLink(self._progs["on_sample"], cpu, hz))
        except AttachError as e:
            self.stop_sampling()
            raise ScopeError(f"could not start stack sampling: {e}") from None

    def stop_sampling(self) -> None:
        close_all(self._sampling)
        self._sampling = []

    def flush_staged_calls(self) -> None:
        """Make every CPU send its staged calls now: a context switch on a CPU
        runs the sched_switch program there, which flushes that CPU's batch.
        Used once the function probes are detached, so nothing is staged after."""
        mine = os.sched_getaffinity(0)
        try:
            for cpu in range(possible_cpus()):  # every CPU that has a staging batch
                try:
                    os.sched_setaffinity(0, {cpu})
                except OSError:
                    continue  # offline or not ours to use
                time.sleep(0.001)  # off this CPU and back: two switches there
        finally:
            os.sched_setaffinity(0, mine)

    def prog_fd(self, func: str) -> int:
        """fd of a uprobe program, for attach.UprobeLink."""
        return self._progs[func]

    # -- maps -------------------------------------------------------------

    def set_tracer_pid(self, pid: int) -> None:
        self.maps["tracer_pid"].update(u32(0), u32(pid))

    def add_target(self, pid: int, mask: int) -> None:
        """Trace ``pid`` with the probe sets in ``mask`` (events PROBE_* bits)."""
        self.maps["targets"].update(u32(pid), u32(mask))

    def remove_target(self, pid: int) -> None:
        self.maps["targets"].delete(u32(pid))

    def confirm_target(self, pid: int, mask: int) -> bool:
        """Set the probe sets of a process the kernel adopted; False if it has
        exited meanwhile (its entry is gone, and must not come back)."""
        try:
            self.maps["targets"].update(u32(pid), u32(mask), flags=BPF_EXIST)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def ignore(self, pid: int) -> None:
        """Not a target, and not to be adopted again by probes attached for any
        process (until it execs or exits)."""
        # in this order: a probe hit in between must not find it in neither map
        # (it would be adopted again, with every probe set)
        self.maps["ignored"].update(u32(pid), b"\1")
        self.maps["targets"].delete(u32(pid))

    def unignore(self, pid: int) -> None:
        self.maps["ignored"].delete(u32(pid))

    def set_spec(self, index: int, spec: np.void) -> None:
        """Write one probe_spec record (events.dtypes()['probe_spec']) at a cookie."""
        self.maps["specs"].update(u32(index), spec.tobytes())

    def set_frame_offsets(self, index: int, rec: np.void) -> None:
        """Write one frame_offsets record (CPython struct offsets) at a cookie."""
        self.maps["frame_offs"].update(u32(index), rec.tobytes())

    def _record(self, name: str, struct_name: str) -> np.void:
        raw = self.maps[name].lookup(u32(0))
        return np.frombuffer(raw, events.dtypes()[struct_name])[0].copy()

    def set_config(self, **fields: int) -> None:
        rec = self._record("config", "config")
        for k, v in fields.items():
            rec[k] = v
        self.maps["config"].update(u32(0), rec.tobytes())

    def breaker(self) -> np.void:
        """The kernel's struct breaker, now."""
        return self._record("breaker", "breaker")

    def set_breaker(self, **fields: int) -> None:
        rec = self.breaker()
        for k, v in fields.items():
            rec[k] = v
        self.maps["breaker"].update(u32(0), rec.tobytes())

    def set_verdicts(self, verdicts: list[tuple[int, tuple[int, int, int, int], int]]) -> None:
        """(func id, its func_key fields, k) per function: k = 0 drops its rows, else
        one call in k is sent. Stored in the interning map, read at each call's entry."""
        m = self.maps["funcs"]
        for fid, (name, file, pid, line), k in verdicts:
            key = _FUNC_KEY.pack(name, file, pid, line)
            old = m.lookup(key)  # keep the flags the kernel set when it interned it
            flags = struct.unpack_from("<I", old, 8)[0] if old else 0
            m.update(key, struct.pack("<IIII", fid, k, flags, 0))

    def forget_functions(self, keys: list[tuple[int, tuple[int, int, int, int]]]) -> None:
        """Drop interned functions of exited processes (their ids and aggregates):
        the interning map is keyed by pid, so it would fill with the dead."""
        self.maps["funcs"].delete_many([_FUNC_KEY.pack(name, file, pid, line)
                                        for _fid, (name, file, pid, line) in keys])
        self.maps["fstats"].delete_many([u32(fid) for fid, _key in keys])
        # the spill map holds few, if any: only those (each key it lacks would
        # cost the batch a syscall)
        skeys, _values, n = self.maps["fstats_spill"].dump()
        if n:
            spilled = set(np.frombuffer(skeys, "<u4", count=n).tolist())
            self.maps["fstats_spill"].delete_many([u32(fid) for fid, _key in keys
                                                   if fid in spilled])

    def functions_of(self, pids: set[int]) -> list[tuple[int, tuple[int, int, int, int]]]:
        """(id, kernel key) of every function the kernel interned for these
        processes, named or not (a name record may have been lost or not be
        drained yet): what forget_functions() must drop for them."""
        keys, values, n = self.maps["funcs"].dump()
        ks = np.frombuffer(keys, np.dtype([("name", "<u8"), ("file", "<u8"), ("pid", "<u4"),
                                           ("line", "<i4")]), count=n)
        ids = np.frombuffer(values, "<u4", count=n * (self.maps["funcs"].value_size // 4))
        ids = ids[:: self.maps["funcs"].value_size // 4]
        mine = np.isin(ks["pid"], np.fromiter(pids, np.uint32, len(pids)))
        return [(int(i), (int(k["name"]), int(k["file"]), int(k["pid"]), int(k["line"])))
                for i, k in zip(ids[mine], ks[mine], strict=True)]

    def func_keys(self, func_ids: np.ndarray) -> np.ndarray:
        """func_event records, without names, for interned ids whose name record
        never arrived: what the interning map's keys tell (pid, line)."""
        want = set(func_ids.tolist())
        out = np.zeros(len(want), events.dtypes()["func_event"])
        n = 0
        for key, value in self.maps["funcs"].items():
            fid = struct.unpack_from("<I", value)[0]
            if fid in want and n < len(out):
                out[n]["key_name"], out[n]["key_file"], out[n]["pid"], out[n]["line"] = (
                    _FUNC_KEY.unpack(key))
                out[n]["func_id"] = fid
                n += 1
        out["flags"] = events.const("FUNC_NAME_NULL") | events.const("FUNC_FILE_NULL")
        return out[:n]

    def select_tid(self, tid: int) -> None:
        self.maps["tids"].update(u32(tid), u32(1))

    def stats(self) -> dict[str, int]:
        """Kernel counters summed over CPUs (one syscall for all of them)."""
        m = self.maps["stats"]
        keys, values, n = m.dump()
        idx = np.frombuffer(keys, "<u4", count=n)
        sums = np.ndarray((n, m.value_size // 8), "<u8", values).sum(axis=1)
        got = dict(zip(idx.tolist(), sums.tolist(), strict=True))
        return {name: int(got.get(i, 0)) for i, name in enumerate(events.STAT_NAMES)}

    def stat(self, name: str) -> int:
        """One kernel counter summed over CPUs."""
        raw = self.maps["stats"].lookup(u32(events.STAT_NAMES.index(name))) or b""
        return int(np.frombuffer(raw, "<u8").sum()) if raw else 0

    def fstats(self) -> tuple[np.ndarray, np.ndarray]:
        """(function ids, (n, cpus + 1) struct fstat records): the per-CPU
        aggregates, and last the spill map's (functions whose per-CPU memory
        could not be allocated; zeros for the others)."""
        dt = events.dtypes()["fstat"]
        m = self.maps["fstats"]
        cpus = possible_cpus()
        keys, values, n = m.dump()
        ids = np.frombuffer(keys, "<u4", count=n)
        recs = np.ndarray((n, cpus), dt, values, 0, (m.value_size, m.cpu_size)) if n else \
            np.zeros((0, cpus), dt)
        sm = self.maps["fstats_spill"]
        skeys, svalues, sn = sm.dump()
        sids = np.frombuffer(skeys, "<u4", count=sn)
        all_ids = np.union1d(ids, sids).astype(np.uint32)
        out = np.zeros((len(all_ids), cpus + 1), dt)
        out[np.searchsorted(all_ids, ids), :cpus] = recs
        if sn:
            out[np.searchsorted(all_ids, sids), cpus] = np.ndarray(
                (sn,), dt, svalues, 0, (sm.value_size,))
        return all_ids, out

    def open_frames(self, exited: bool = False) -> list[tuple[int, int, int, int, int, int]]:
        """(pid, tid, depth, start_ns, func_id, stack_id) of every call not yet
        returned; with ``exited``, of calls open when their thread exited (taken:
        read once)."""
        dt = _stack_dtype()
        m = self.maps["exited_stacks" if exited else "stacks"]
        out = []
        for key, raw in list(m.items()):
            st = np.frombuffer(raw, dt)[0]
            depth = min(int(st["depth"]), events.const("SCOPE_MAX_DEPTH"))
            tid = int.from_bytes(key, "little")
            for i in range(depth):
                f = st["frames"][i]
                if int(f["k"]) != NOT_A_CALL:
                    out.append((int(st["pid"]), tid, i, int(f["start_ns"]), int(f["func_id"]),
                                int(f["path"])))
            if exited:
                try:
                    m.delete(key)
                except OSError:
                    pass
        return out

    def close(self) -> None:
        self.stop_sampling()
        close_all(self._links)
        self._links.clear()
        for r in self.rings.values():
            r.close()
        self.rings.clear()
        for m in self.maps.values():
            m.close()
        for fd in self._progs.values():
            os.close(fd)
        self._progs.clear()


def online_cpus() -> list[int]:
    """CPUs online now (/sys/devices/system/cpu/online: "0-3,5")."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


_pending: dict[tuple, tuple[subprocess.Popen, socket.socket]] = {}


def start_loading(limits: Limits | None = None) -> tuple:
    """Start compiling in the background (the loader child); Program() collects it.

    The CLI calls this first thing, so the compile overlaps its own imports.
    """
    limits = limits or Limits()
    cflags = [
        f"-I{events.BPF_DIR}",
        f"-DCALLS_RB_PAGES={limits.calls_rb_pages}",
        f"-DSCHED_RB_PAGES={limits.sched_rb_pages}",
        f"-DFUNCS_RB_PAGES={limits.funcs_rb_pages}",
        f"-DPATHS_RB_PAGES={limits.paths_rb_pages}",
        f"-DMAX_THREADS={limits.max_threads}",
        f"-DMAX_FUNCS={limits.max_funcs}",
        f"-DMAX_TARGETS={limits.max_targets}",
        f"-DMAX_SPECS={limits.max_specs}",
        "-Wno-unused-function",
    ]
    if limits.stacks:
        cflags.append("-DSCOPE_STACKS")
    spill = os.environ.get("SCOPE_EBPF_SPILL_EVERY")  # tests: see fstat_of in scope.bpf.c
    if spill:
        cflags.append(f"-DSPILL_EVERY={int(spill)}")
    # uprobe_multi links need the programs loaded for them (and perf links then refuse them)
    attach_type = BPF_TRACE_UPROBE_MULTI if uprobe_multi_supported() else -1
    key = (*cflags, attach_type)
    if key in _pending:
        return key
    request = {"src": str(events.BPF_DIR / "scope.bpf.c"), "cflags": cflags,
               "attach_type": attach_type,
               "kprobes": UPROBE_PROGS, "tracepoints": TRACEPOINTS,
               "perf_events": PERF_PROGS if limits.stacks else (),
               "maps": (*MAPS, *(STACK_MAPS if limits.stacks else ()))}
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # Run as a file, not ``-m``: the package's __init__ would load pyarrow, ~70 ms
    # on the attach path for nothing; -P keeps this directory off sys.path.
    proc = subprocess.Popen([sys.executable, "-P", str(Path(__file__).with_name("loader.py")),
                             str(child.fileno())],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=[child.fileno()], text=True)
    child.close()
    proc.stdin.write(json.dumps(request))
    proc.stdin.close()
    _pending[key] = (proc, parent)
    return key


def _finish(key: tuple) -> tuple[dict[str, int], dict[str, Map], bool]:
    """Collect the loader child's program and map fds, and whether they came from
    its cache (loaded without compiling)."""
    proc, parent = _pending.pop(key)
    fds: list[int] = []
    msg = b""
    try:
        err = proc.stderr.read()
        proc.wait(timeout=120)
        if proc.returncode == 0:
            msg, fds, _flags, _addr = socket.recv_fds(parent, 1 << 20, 256)
    finally:
        parent.close()
    if proc.returncode != 0 or not msg:
        for fd in fds:
            os.close(fd)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        # clang's first error says where; the verifier's last lines say why
        first = [line.strip() for line in lines if "error:" in line][:1]
        detail = "; ".join(first + lines[-3:]) if lines else f"exit code {proc.returncode}"
        raise ScopeError(f"could not compile or load the BPF program: {detail}")
    meta = json.loads(msg)
    progs = {name: fds[i] for name, i in meta["progs"].items()}
    maps = {name: Map(fds[m["fd"]], m["type"], m["key_size"], m["value_size"],
                      m["max_entries"]) for name, m in meta["maps"].items()}
    return progs, maps, bool(meta.get("cached"))
