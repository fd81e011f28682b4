"""The user side of the stack sampler (bpf/stacks.bpf.c, the ``stacks`` probe set).

Per target process: its layout goes into the kernel's ``stack_offs`` map and
its threads' states into ``tstates`` (tid -> PyThreadState, read from its
memory; 3.11+ also finds them in the kernel, 3.8-3.10 only through this map,
refreshed when a thread appears or a sample finds none). At drain time each
new kernel stack (code object, instruction per frame) is resolved at once,
while the process lives, into function, file, def line and current line, and
becomes rows of the ``stacks`` table: one row per distinct frame path from the
thread's outermost frame, parents before children, ids hashed from what the
frames say (with their own domain, so they never meet the call paths' ids).
Each sample becomes a ``samples`` row naming its innermost frame's row.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from .. import events
from ..decode import _schema
from ..errors import ScopeError
from ..interpreters.layouts import LASTI_BYTES, LASTI_UNITS, Layout, find_runtime
from ..interpreters.remote import Frame, Process
from ..maps import u32
from ..program import Program

_C = events.constants()
_FRAME_BUF = 128             # bytes of a frame the kernel reads (FRAME_BUF in stacks.bpf.c)
_RESCAN_S = 0.05             # thread lists re-read at most this often per process
_PENDING_S = 10.0            # a process whose layout cannot be read yet is retried this long
_MISSING = object()
# Bench only: walk the thread list in the kernel on every sample (tstates unused).
WALK_ALWAYS = os.environ.get("SCOPE_EBPF_STACKS_WALK") == "1"
# Bench only: read 3.11+ frames one by one, not a page of the data stack at once.
PER_FRAME = os.environ.get("SCOPE_EBPF_STACKS_PER_FRAME") == "1"


def offsets_record(rt_runtime: int, lay: Layout, namespaced: bool = False) -> np.void:
    """The kernel's struct stack_offsets for a process's layout. ``namespaced``: the
    process has its own PID namespace, so its native thread ids are not the
    kernel's tids: the kernel then trusts the tid -> thread state map alone."""
    rec = np.zeros(1, events.dtypes()["stack_offsets"])[0]
    # One read per frame of just the span of the fields used (it costs by its size)
    owner = lay.frame_owner if lay.frame_owner_skip > 0 else -1
    fields = [lay.frame_previous, lay.frame_code, lay.frame_instr] + (
        [owner] if owner >= 0 else [])
    lo = min(fields) & ~7
    size = max(fields) + 8 - lo
    intish = lay.instr_kind in (LASTI_BYTES, LASTI_UNITS)
    if size > _FRAME_BUF or lay.frame_previous % 8 or lay.frame_code % 8 or (
            lay.frame_instr % (4 if intish else 8)):
        raise ScopeError(f"CPython {lay.version}: frame fields not within {_FRAME_BUF} "
                         "aligned bytes: the stack sampler cannot read its frames")
    rec["runtime"] = rt_runtime
    rec["code_mask"] = ~np.uint64(lay.frame_code_tag_bits)
    rec["interp_head"] = lay.runtime_interpreters_head
    rec["threads_head"] = lay.interp_threads_head
    rec["tstate_next"] = lay.tstate_next
    rec["tstate_native_tid"] = -1 if namespaced else lay.tstate_native_thread_id
    rec["tstate_frame"] = lay.tstate_frame
    rec["cframe_frame"] = lay.cframe_current_frame
    rec["frame_previous"] = lay.frame_previous - lo
    rec["frame_code"] = lay.frame_code - lo
    rec["frame_instr"] = lay.frame_instr - lo
    rec["frame_owner"] = owner - lo if owner >= 0 else 0
    rec["frame_lo"] = lo
    rec["owner_skip"] = lay.frame_owner_skip if owner >= 0 else 256  # (a byte never is)
    rec["flags"] = (_C["SO_INSTR_INT"] if intish else 0) | (
        _C["SO_WALK_ALWAYS"] if WALK_ALWAYS else 0)
    # 3.11+ frames sit side by side in the thread's data stack (generators' in
    # their objects): one read from the start of a frame's page gets its callers
    rec["chunk_mask"] = np.uint64(~4095 & (2**64 - 1)) if lay.minor >= 11 and not PER_FRAME \
        else np.uint64(2**64 - 1)
    rec["frame_size"] = size
    return rec


def stacks_mode(lay: Layout, namespaced: bool = False) -> str:
    """How the sampler finds a thread's state in this version (for `probes`)."""
    if namespaced:
        return "tid -> thread state map read from the process, its namespace's thread " \
               "ids translated (a PID namespace of its own)"
    if lay.tstate_native_thread_id >= 0:
        return "tid -> thread state map, checked against native_thread_id, else the " \
               "thread list walked in the kernel"
    return "tid -> thread state map read from the process (no native thread id before 3.11)"


class _Target:
    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.native = proc.rt.layout.tstate_native_thread_id >= 0 and not proc.namespaced
        self.tids: set[int] = set()
        self.last_scan = 0.0
        self.stale = True           # re-read its thread list at the next chance
        self.frames: dict[tuple[int, int], Frame] = {}  # (code, instruction) -> resolved


class Sampler:
    """Stack sampling for one session: targets' layouts in, samples and stacks out."""

    def __init__(self, program: Program, warn: Callable[[str], None]) -> None:
        self.program = program
        self.warn = warn
        self.targets: dict[int, _Target] = {}
        self.pending: dict[int, float] = {}   # pid -> when it was first tried
        self.kernel_ids: dict[tuple[int, int], tuple[int | None, int]] = {}
        # pid -> stack ids written to stacks: their parent and function
        self.nodes: dict[int, dict[int, tuple[int | None, str | None]]] = {}
        # pid -> (parent id, code, instruction) -> id
        self.tries: dict[int, dict[tuple[int | None, int, int], int]] = {}
        # pid -> its last new stack (outermost first) and its frames' ids
        self.last: dict[int, tuple[np.ndarray, list[int]]] = {}
        self.counts = {"stacks.sampled": 0, "stacks.unresolved_frames": 0,
                       "stacks.unknown": 0, "stacks.processes_unreadable": 0}
        self._no_thread = 0
        self.modes: dict[int, str] = {}

    # -- targets ------------------------------------------------------------

    def add(self, pid: int) -> None:
        """Sample ``pid`` from now on (its layout is read now or, if it cannot be
        yet, at the next polls: a process just exec'd may not have mapped it)."""
        if pid in self.targets:
            return
        try:
            rt = find_runtime(pid)
            proc = Process(rt)
        except ScopeError as e:
            first = self.pending.setdefault(pid, time.monotonic())
            if time.monotonic() - first > _PENDING_S:
                self.pending.pop(pid, None)
                self.counts["stacks.processes_unreadable"] += 1
                self.warn(f"stacks: process {pid} not sampled: {e}")
            return
        self.pending.pop(pid, None)
        try:
            rec = offsets_record(rt.runtime, rt.layout, proc.namespaced)
        except ScopeError as e:
            proc.close()
            self.counts["stacks.processes_unreadable"] += 1
            self.warn(f"stacks: process {pid} not sampled: {e}")
            return
        t = self.targets[pid] = _Target(proc)
        self.modes[pid] = f"CPython {rt.version}: {stacks_mode(rt.layout, proc.namespaced)}"
        self._scan(pid, t)
        self.program.maps["stack_offs"].update(u32(pid), rec.tobytes())

    def thread_started(self, pid: int) -> None:
        t = self.targets.get(pid)
        if t is not None:
            t.stale = True

    def forget(self, pids: set[int]) -> None:
        for pid in pids:
            t = self.targets.pop(pid, None)
            self.pending.pop(pid, None)
            if t is not None:
                t.proc.close()
            self.nodes.pop(pid, None)
            self.tries.pop(pid, None)
            self.last.pop(pid, None)
        if pids:
            self.kernel_ids = {k: v for k, v in self.kernel_ids.items() if k[0] not in pids}

    def _scan(self, pid: int, t: _Target) -> None:
        """Write the process's tid -> thread state map into the kernel's."""
        t.last_scan = time.monotonic()
        t.stale = False
        try:
            found = t.proc.threads()
        except ScopeError:
            return  # exited
        m = self.program.maps["tstates"]
        for tid, tstate in found.items():
            m.update(u32(tid), struct.pack("<QII", tstate, pid, 0))
        for tid in t.tids - found.keys():
            try:
                m.delete(u32(tid))
            except OSError:
                pass
        t.tids = set(found)

    def poll(self, no_thread: int) -> None:
        """Retry pending processes; re-read thread lists where threads appeared or
        samples found no thread state (``no_thread``: the kernel's count)."""
        for pid in list(self.pending):
            self.add(pid)
        missed = no_thread > self._no_thread
        self._no_thread = no_thread
        now = time.monotonic()
        for pid, t in self.targets.items():
            if (t.stale or (missed and not t.native)) and now - t.last_scan >= _RESCAN_S:
                self._scan(pid, t)

    # -- decoding -----------------------------------------------------------

    def stacks(self, recs: np.ndarray, offset_ns: int) -> pa.RecordBatch | None:
        """Resolve new kernel stacks now (their code objects may not outlive the
        next drain by much); rows of the stacks table for frame paths not seen.
        A frame path already known (by its parent and the frame's code object and
        instruction) is not resolved again: new stacks of a deep program mostly
        differ in their innermost frames."""
        rows: list[dict] = []
        for rec in recs:
            pid, kid = int(rec["pid"]), int(rec["stack_id"])
            if (pid, kid) in self.kernel_ids:
                continue
            self.counts["stacks.sampled"] += 1
            frames = rec["frames"][:int(rec["depth"])][::-1]
            self.kernel_ids[(pid, kid)] = (self._path(pid, frames, rows),
                                           int(rec["missing"]))
        return _rows_batch(rows) if rows else None

    def _path(self, pid: int, frames: np.ndarray, rows: list[dict]) -> int | None:
        """The id of the innermost frame's row (``frames`` outermost first). The
        part shared with the process's previous new stack is not walked again."""
        trie = self.tries.setdefault(pid, {})
        prev = self.last.get(pid)
        start = 0
        nodes: list[int] = []
        if prev is not None:
            m = min(len(frames), len(prev[0]))
            same = frames[:m] == prev[0][:m]
            start = m if same.all() else int(same.argmin())
            nodes = prev[1][:start]
        parent = nodes[-1] if nodes else None
        for depth, (code, instr) in enumerate(zip(frames["code"][start:].tolist(),
                                                  frames["instr"][start:].tolist(),
                                                  strict=True), start):
            key = (parent, code, instr)
            node = trie.get(key)
            if node is None:
                node, resolved = self._node(pid, parent, depth, code, instr, rows)
                if resolved:  # (an unreadable frame is tried again at its next stack)
                    trie[key] = node
            nodes.append(node)
            parent = node
        self.last[pid] = (frames, nodes)
        return parent

    def _node(self, pid: int, parent: int | None, depth: int, code: int, instr: int,
              rows: list[dict]) -> tuple[int, bool]:
        """A frame path's id, writing its row if it is new, and whether the frame
        was resolved."""
        t = self.targets.get(pid)
        f = None
        if t is not None:
            f = t.frames.get((code, instr), _MISSING)
            if f is _MISSING:
                try:
                    f = t.proc.frame(code, instr)
                except ScopeError:
                    f = None
                if f is not None:
                    t.frames[(code, instr)] = f
        if f is None:
            self.counts["stacks.unresolved_frames"] += 1
        key = (f"{f.function}\0{f.file}\0{f.first_line}\0{f.line}" if f is not None
               else "\1unresolved")
        node = _node_id(parent or 0, pid, key)
        seen = self.nodes.setdefault(pid, {})
        if node not in seen:
            function = f.function if f is not None else None
            seen[node] = (parent, function)
            path = [function]
            up = parent
            while up is not None:
                up, fn = seen[up]
                path.append(fn)
            rows.append({"pid": pid, "stack_id": node, "parent_stack_id": parent,
                         "depth": depth, "function": function,
                         "file": f.file if f is not None else None,
                         "line": f.first_line if f is not None else None,
                         "current_line": (f.line if f is not None and f.line >= 0
                                          else None),
                         "path": path[::-1]})
        return node, f is not None

    def resolve(self, r: np.ndarray) -> pa.Array:
        """The stack_id column of records with pid and a kernel stack_id (0: none):
        the stacks rows of their innermost frames, NULL where not known. Looked
        up once per distinct stack (a kernel id is seeded with its pid), not per
        record: a busy thread's samples repeat a few stacks."""
        ids = np.zeros(len(r), np.int64)
        known = np.zeros(len(r), bool)
        kids = r["stack_id"]
        some = np.flatnonzero(kids)
        if not len(some):
            return pa.array(ids, mask=~known)
        uniq, first, inv = np.unique(kids[some], return_index=True, return_inverse=True)
        pids = r["pid"][some][first]
        got_ids = np.zeros(len(uniq), np.int64)
        got = np.zeros(len(uniq), bool)
        for i, (pid, kid) in enumerate(zip(pids.tolist(), uniq.tolist(), strict=True)):
            hit = self.kernel_ids.get((pid, kid))
            if hit is not None and hit[0] is not None:
                got_ids[i], got[i] = hit[0], True
        ids[some] = got_ids[inv]
        known[some] = got[inv]
        # its stack record was lost
        self.counts["stacks.unknown"] += int(len(some) - known[some].sum())
        return pa.array(ids, mask=~known)

    def samples(self, r: np.ndarray, offset_ns: int) -> pa.RecordBatch:
        flags = r["flags"]
        return pa.RecordBatch.from_arrays([
            pa.array(r["ts_ns"].astype(np.int64) + offset_ns),
            pa.array(r["pid"].astype(np.int32)),
            pa.array(r["tid"].astype(np.int32)),
            self.resolve(r),
            pa.array((flags & _C["SAMPLE_ONCPU"]) != 0),
            pa.array(r["missing"].astype(np.int32)),
        ], schema=_samples_schema())

    def close(self) -> None:
        self.forget(set(self.targets) | set(self.pending))


def _node_id(parent: int, pid: int, key: str) -> int:
    """A 64-bit id (signed, as the stacks table stores it) of a frame path node.
    The "sample" domain keeps these apart from the call paths' splitmix ids."""
    h = hashlib.blake2b(f"{parent}\0{pid}\0{key}".encode(errors="surrogatepass"),
                        digest_size=8, person=b"scope-sample")
    return int.from_bytes(h.digest(), "little", signed=True)


def _samples_schema() -> pa.Schema:
    return _schema("samples")


def _rows_batch(rows: list[dict]) -> pa.RecordBatch:
    sch = _schema("stacks")
    return pa.RecordBatch.from_arrays([pa.array([r.get(f.name) for r in rows], f.type)
                                       for f in sch], schema=sch)
