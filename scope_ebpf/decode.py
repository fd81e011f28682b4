"""Turn batches of kernel records into Arrow record batches, column-wise.

No Python code runs per call record: numpy does the arithmetic and the
function names are dictionary-encoded by id. The only per-record Python work
is for function names (once per function) and process events (rare).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import events, schema

_C = events.constants()


def _text(raw: bytes) -> str | None:
    """A C string of a kernel record: up to its first NUL (what follows is the
    ring buffer's stale bytes of earlier records, not zeroed by the kernel).
    Probe strings are untrusted bytes: invalid UTF-8 becomes null."""
    try:
        return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


class Functions:
    """Interned functions: kernel id -> (pid, name, file, line), dictionary-encoded.

    Also holds the controller's per-function decisions (keep, sampling k) as
    arrays parallel to the sorted ids, so applying them to a batch of calls is
    one vectorised lookup.
    """

    def __init__(self) -> None:
        self._ids = np.zeros(0, np.uint32)     # sorted kernel ids
        self._pid = np.zeros(0, np.int32)
        self._name = np.zeros(0, np.int32)     # per sorted id: index into names, -1 = null
        self._file = np.zeros(0, np.int32)
        self._line = np.zeros(0, np.int32)
        self._keep = np.zeros(0, bool)
        self._key_name = np.zeros(0, np.uint64)  # the kernel's func_key, to write verdicts
        self._key_file = np.zeros(0, np.uint64)
        self._k = np.zeros(0, np.int64)
        self._strings: list[str] = []
        self._string_index: dict[str, int] = {}
        self._dictionary: pa.Array | None = None
        self.count = 0

    def _intern(self, s: str | None) -> int:
        if s is None:
            return -1
        i = self._string_index.get(s)
        if i is None:
            i = self._string_index[s] = len(self._strings)
            self._strings.append(s)
            self._dictionary = None
        return i

    def add(self, recs: np.ndarray) -> list[tuple[int, str | None, str | None]]:
        """Learn functions; return the new ones as (id, name, file) for the matcher."""
        if not len(recs):
            return []
        flags = recs["flags"].tolist()
        names = [None if f & _C["FUNC_NAME_NULL"] else _text(n)
                 for n, f in zip(recs["name"].tolist(), flags, strict=True)]
        files = [None if f & _C["FUNC_FILE_NULL"] else _text(n)
                 for n, f in zip(recs["file"].tolist(), flags, strict=True)]
        n = len(recs)
        ids = np.concatenate([self._ids, recs["func_id"]])
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        cols = {
            "_pid": recs["pid"].astype(np.int32),
            "_name": np.array([self._intern(x) for x in names], np.int32),
            "_file": np.array([self._intern(x) for x in files], np.int32),
            "_line": recs["line"].astype(np.int32),
            "_keep": np.ones(n, bool),
            "_key_name": recs["key_name"],
            "_key_file": recs["key_file"],
            "_k": np.ones(n, np.int64),
        }
        for attr, new in cols.items():
            setattr(self, attr, np.concatenate([getattr(self, attr), new])[order])
        self.count += n
        return list(zip(recs["func_id"].tolist(), names, files, strict=True))

    def find(self, func_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, known) of kernel ids in the sorted arrays."""
        if not len(self._ids):
            return np.zeros(len(func_ids), np.int64), np.zeros(len(func_ids), bool)
        pos = np.minimum(np.searchsorted(self._ids, func_ids), len(self._ids) - 1)
        return pos, self._ids[pos] == func_ids

    def dictionary(self) -> pa.Array:
        if self._dictionary is None:
            self._dictionary = pa.array(self._strings, pa.string())
        return self._dictionary

    def columns(self, func_ids: np.ndarray,
                found: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[pa.Array, pa.Array, pa.Array]:
        """(function, file, line) columns for an array of kernel function ids."""
        pos, known = found if found is not None else self.find(func_ids)
        name = np.where(known, self._name[pos] if len(self._ids) else -1, -1)
        file = np.where(known, self._file[pos] if len(self._ids) else -1, -1)
        line = np.where(known, self._line[pos] if len(self._ids) else 0, 0)
        d = self.dictionary()
        return (
            pa.DictionaryArray.from_arrays(pa.array(name, pa.int32(), mask=name < 0), d),
            pa.DictionaryArray.from_arrays(pa.array(file, pa.int32(), mask=file < 0), d),
            pa.array(line, pa.int32(), mask=~known),
        )

    def pids(self, func_ids: np.ndarray) -> np.ndarray:
        pos, known = self.find(func_ids)
        return np.where(known, self._pid[pos] if len(self._ids) else 0, 0).astype(np.int32)

    def describe(self, func_id: int) -> tuple[int | None, str | None, str | None, int | None]:
        """(pid, name, file, line) of one function id."""
        pos, known = self.find(np.array([func_id], np.uint32))
        if not known[0]:
            return None, None, None, None
        i = int(pos[0])
        name, file = int(self._name[i]), int(self._file[i])
        return (int(self._pid[i]), self._strings[name] if name >= 0 else None,
                self._strings[file] if file >= 0 else None, int(self._line[i]))

    def kept(self, func_ids: np.ndarray) -> np.ndarray:
        """Whether the matcher keeps each function (unknown ids: yes)."""
        pos, known = self.find(func_ids)
        if not len(self._ids):
            return np.ones(len(func_ids), bool)
        return np.where(known, self._keep[pos], True)

    def pids_of(self, func_ids: np.ndarray) -> np.ndarray:
        """The process of each of these function ids; -1 for an unknown id."""
        pos, known = self.find(func_ids)
        return np.where(known, self._pid[pos] if len(self._ids) else -1, -1)

    def ids_of(self, pids: set[int]) -> list[int]:
        """Function ids interned for these processes."""
        if not pids or not len(self._ids):
            return []
        return self._ids[np.isin(self._pid, list(pids))].tolist()

    def forget(self, func_ids: list[int]) -> None:
        """Drop functions (of exited processes); strings no function uses any more
        go too once they are half the table, so a host running ever-new scripts
        keeps a bounded registry."""
        if not func_ids or not len(self._ids):
            return
        keep = ~np.isin(self._ids, np.array(func_ids, np.uint32))
        for attr in ("_ids", "_pid", "_name", "_file", "_line", "_keep", "_key_name",
                     "_key_file", "_k"):
            setattr(self, attr, getattr(self, attr)[keep])
        used = np.unique(np.concatenate([self._name, self._file]))
        used = used[used >= 0]
        if len(used) * 2 > len(self._strings):
            return
        remap = np.full(len(self._strings) + 1, -1, np.int32)  # [-1] stays -1
        remap[used] = np.arange(len(used), dtype=np.int32)
        self._name, self._file = remap[self._name], remap[self._file]
        self._strings = [self._strings[i] for i in used.tolist()]
        self._string_index = {x: i for i, x in enumerate(self._strings)}
        self._dictionary = None

    def __len__(self) -> int:
        return len(self._ids)

    def kernel_keys(self, func_ids: list[int]) -> list[tuple[int, tuple[int, int, int, int]]]:
        """(id, (name, file, pid, line)) of known ids: the kernel's func_key fields."""
        pos, known = self.find(np.array(func_ids, np.uint32))
        return [(int(self._ids[p]), (int(self._key_name[p]), int(self._key_file[p]),
                                     int(self._pid[p]), int(self._line[p])))
                for p in pos[known]]

    def set_keep(self, func_ids: list[int], keep: bool) -> None:
        pos, known = self.find(np.array(func_ids, np.uint32))
        self._keep[pos[known]] = keep

    def set_k(self, func_id: int, k: int) -> None:
        pos, known = self.find(np.array([func_id], np.uint32))
        if known[0]:
            self._k[pos[0]] = k

    def row_filter(self, found: tuple[np.ndarray, np.ndarray], weights: np.ndarray,
                   rng: np.random.Generator, exempt: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Apply the decisions to calls the kernel sent before it had them.

        Rows of dropped functions go; a row kept at 1-in-w while the function's
        k is now larger is kept with probability w/k and then weighs k, so
        sum(weight) stays an unbiased count. ``found`` is find(func_ids);
        ``exempt`` rows are never thinned (calls the kernel keeps whatever k).
        Returns (mask, weights).
        """
        pos, known = found
        if not len(self._ids):
            return np.ones(len(weights), bool), weights
        keep = np.where(known, self._keep[pos], True)
        k = np.where(known, self._k[pos], 1)
        w = weights.astype(np.int64)
        thin = k > w
        if exempt is not None:
            thin &= ~exempt
        if thin.any():
            keep &= ~thin | (rng.random(len(w)) * k < w)
            w = np.where(thin, k, w)
        return keep, w


class Paths:
    """Call paths the kernel announced: stack id -> (pid, parent id, names).

    The kernel sends a path before any row that carries it and parents before
    children, so a path's names are its parent's plus its own function's."""

    def __init__(self) -> None:
        self._names: dict[int, tuple[str | None, ...] | None] = {}
        self._pid: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._names)

    def add(self, recs: np.ndarray, functions: Functions) -> pa.RecordBatch | None:
        """Rows of the stacks table for the paths not seen before, or None."""
        ids = recs["stack_id"].view(np.int64).tolist()
        parents = recs["parent_id"].view(np.int64).tolist()
        fresh = [i for i, sid in enumerate(ids) if sid not in self._names]
        if not fresh:
            return None
        sub = recs[fresh]
        function, file, line = functions.columns(sub["func_id"])
        names = function.to_pylist()
        paths: list[list[str | None] | None] = []
        for i, name in zip(fresh, names, strict=True):
            sid, parent = ids[i], parents[i]
            if parent == 0:
                path: tuple[str | None, ...] | None = (name,)
            else:
                above = self._names.get(parent)
                path = None if above is None else (*above, name)  # parent's announcement lost
            self._names[sid] = path
            self._pid[sid] = int(recs["pid"][i])
            paths.append(None if path is None else list(path))
        parent_col = recs["parent_id"][fresh].view(np.int64)
        return pa.RecordBatch.from_arrays([
            pa.array(sub["pid"].astype(np.int32)),
            pa.array(sub["stack_id"].view(np.int64)),
            pa.array(parent_col, mask=parent_col == 0),
            pa.array(sub["depth"].astype(np.int32)),
            function, file, line,
            pa.nulls(len(fresh), pa.int32()),
            pa.array(paths, pa.list_(pa.string())),
        ], names=_schema("stacks").names)

    def forget(self, pids: set[int]) -> None:
        """Drop the paths of exited processes (their function ids go too)."""
        gone = [sid for sid, pid in self._pid.items() if pid in pids]
        for sid in gone:
            del self._names[sid], self._pid[sid]


class Decoder:
    """Record arrays -> Arrow batches in the schema of scope_ebpf.schema."""

    def __init__(self, mono_to_wall_ns: int) -> None:
        self.offset = mono_to_wall_ns
        self.functions = Functions()
        self.paths = Paths()

    def _ts(self, mono: np.ndarray) -> pa.Array:
        """Kernel monotonic ns -> ns since the Unix epoch (UTC)."""
        return pa.array(mono.astype(np.int64) + self.offset)

    def calls(self, r: np.ndarray, weight: np.ndarray | None = None,
              found: tuple[np.ndarray, np.ndarray] | None = None) -> pa.RecordBatch:
        """``weight`` overrides the records' own; ``found`` is functions.find(ids)."""
        function, file, line = self.functions.columns(r["func_id"], found)
        is_open = (r["flags"] & _C["CALL_OPEN"]) != 0
        no_line = is_open | ((r["flags"] & _C["CALL_NO_RETURN_LINE"]) != 0)
        return pa.RecordBatch.from_arrays([
            self._ts(r["start_ns"]),
            pa.array(r["duration_ns"].astype(np.int64), mask=is_open),
            pa.array(r["pid"].astype(np.int32)),
            pa.array(r["tid"].astype(np.int32)),
            pa.array(r["depth"].astype(np.int32)),
            function, file, line,
            pa.array(r["return_line"], pa.int32(), mask=no_line),
            pa.array((r["weight"] if weight is None else weight).astype(np.int32)),
            pa.array(r["stack_id"].view(np.int64)),
            pa.array(r["self_ns"].astype(np.int64), mask=is_open),
            pa.array(r["offcpu_ns"].astype(np.int64), mask=is_open),
            pa.array(r["self_offcpu_ns"].astype(np.int64), mask=is_open),
            pa.array(r["self_gil_ns"].astype(np.int64), mask=is_open),
        ], names=_schema("calls").names)

    def open_calls(self, frames: list[tuple[int, int, int, int, int, int]]) -> pa.RecordBatch:
        """Rows for calls still open at stop: call records flagged open, as the
        kernel sends for a thread that exits mid-call (null duration, return line)."""
        r = np.zeros(len(frames), events.dtypes()["call_event"])
        if frames:
            a = np.array(frames, np.uint64)
            (r["pid"], r["tid"], r["depth"], r["start_ns"], r["func_id"],
             r["stack_id"]) = a.T
        r["flags"] = _C["CALL_OPEN"]
        r["weight"] = 1
        return self.calls(r)

    def gc(self, r: np.ndarray, stacks: pa.Array | None = None) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([
            self._ts(r["start_ns"]),
            pa.array(r["duration_ns"].astype(np.int64)),
            pa.array(r["pid"].astype(np.int32)),
            pa.array(r["tid"].astype(np.int32)),
            pa.array(r["generation"].astype(np.int32)),
            pa.array(r["collected"].astype(np.int64)),
            _no_stacks(r) if stacks is None else stacks,
        ], names=_schema("gc").names)

    def sched(self, r: np.ndarray, stacks: pa.Array | None = None) -> pa.RecordBatch:
        function, file, line = self.functions.columns(r["func_id"])
        st = r["prev_state"]
        preempted = (st == 0) | (st >= 0x100)
        state = np.select(  # a wait for the GIL is one, however the thread slept in it
            [r["gil"] != 0, preempted, (st & 2) != 0, (st & 1) != 0],
            ["gil", "preempted", "io", "sleeping"], "other")
        runq_known = preempted | (r["woken"] != 0)
        return pa.RecordBatch.from_arrays([
            self._ts(r["start_ns"]),
            pa.array(r["duration_ns"].astype(np.int64)),
            pa.array(r["pid"].astype(np.int32)),
            pa.array(r["tid"].astype(np.int32)),
            pa.array(state).dictionary_encode(),
            pa.array(st.astype(np.int64)),
            pa.array(r["runq_ns"].astype(np.int64), mask=~runq_known),
            function, file, line,
            _no_stacks(r) if stacks is None else stacks,
        ], names=_schema("sched").names)

    def imports(self, r: np.ndarray) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([
            self._ts(r["start_ns"]),
            pa.array(r["duration_ns"].astype(np.int64)),
            pa.array(r["pid"].astype(np.int32)),
            pa.array(r["tid"].astype(np.int32)),
            _strings(r["module"]),
            pa.array(r["found"] != 0),
            pa.array(r["depth"].astype(np.int32)),
        ], names=_schema("imports").names)

    def audit(self, r: np.ndarray, stacks: pa.Array | None = None) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([
            self._ts(r["ts_ns"]),
            pa.array(r["pid"].astype(np.int32)),
            pa.array(r["tid"].astype(np.int32)),
            _strings(r["event"]),
            _no_stacks(r) if stacks is None else stacks,
        ], names=_schema("audit").names)

    def proc_events(self, r: np.ndarray) -> list[dict]:
        """Process lifecycle rows (few): dicts in the processes schema."""
        kinds = {_C["PROC_FORK"]: "fork", _C["PROC_EXEC"]: "exec",
                 _C["PROC_EXIT"]: "exit", _C["PROC_THREAD"]: "thread",
                 _C["PROC_ATTACH"]: "start", _C["PROC_RENAME"]: "rename"}
        rows = []
        for rec in r:
            kind = kinds.get(int(rec["kind"]), "other")
            row = {"ts_ns": int(rec["ts_ns"]) + self.offset, "pid": int(rec["pid"]),
                   "event": kind, "tid": int(rec["tid"])}
            if kind == "fork":  # the row is about the child, its parent is the target
                row.update(pid=int(rec["other_pid"]), parent_pid=int(rec["pid"]))
            elif kind in ("thread", "rename"):
                # a new thread starts with its creator's name; a rename carries the new one
                row["tid"] = int(rec["other_pid"])
                # (a rename's name is copied as is: what follows its NUL is not zeroed)
                row["comm"] = _text(bytes(rec["comm"]))
            elif kind == "exec":  # (the kernel copies up to the NUL; after it: old bytes)
                row["exe"] = _text(bytes(rec["filename"]))
            elif kind == "start":  # adopted by the kernel: what it saw of the process
                cookie, argc = int(rec["other_pid"]), int(rec["argc"])
                row.update(cookie=None if cookie == _C["NO_COOKIE"] else cookie,
                           uid=int(rec["uid"]), cgroup_id=int(rec["cgroup_id"]))
                if argc:  # (the last one may be cut, and what follows it is not ours)
                    args = bytes(rec["filename"]).split(b"\0")[:min(argc, 4096)]
                    row["argv"] = [_text(a) or "" for a in args]
            rows.append(row)
        return rows


def _strings(col: np.ndarray) -> pa.Array:
    """Fixed-size C strings -> dictionary-encoded Arrow strings, invalid UTF-8 as null.

    Decoded once per distinct value: these columns repeat a few names."""
    uniq, inverse = np.unique(col, return_inverse=True)
    # raw values that differ only after their NUL are one string
    texts: dict[str | None, int] = {}
    index = np.array([texts.setdefault(_text(b), len(texts)) for b in uniq.tolist()], np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(index[inverse]), pa.array(
        list(texts), pa.string()))


def rows_to_batch(table: str, rows: list[dict]) -> pa.RecordBatch:
    """A batch from a few dict rows (missing keys are null); for rare events."""
    sch = _schema(table)
    cols = [pa.array([row.get(f.name) for row in rows], f.type) for f in sch]
    return pa.RecordBatch.from_arrays(cols, schema=sch)


# Filled by the writer, never decoded: end_ns is start_ns + duration_ns.
_WRITER_COLUMNS = ("end_ns", "session_id")


def _schema(table: str) -> pa.Schema:
    """The columns decoded here: the writer's own (_WRITER_COLUMNS) left out."""
    sch = schema.arrow_schema(table)
    return pa.schema([f for f in sch if f.name not in _WRITER_COLUMNS])


def _no_stacks(r: np.ndarray) -> pa.Array:
    """A stack_id column of NULLs (no stacks probe set)."""
    return pa.nulls(len(r), pa.int64())
