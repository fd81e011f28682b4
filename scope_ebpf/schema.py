"""The one definition of every output table.

The writer casts to these schemas, the query layer builds empty views from
them and ``scope-ebpf schema`` prints them, so a column is added or renamed in
exactly one place and the three can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa

# Every *_ns column is an int64: an instant is nanoseconds since the Unix epoch
# (UTC), a duration nanoseconds, so start_ns + duration_ns, end_ns - start_ns or
# max(ts_ns) - min(ts_ns) is plain integer arithmetic in any reader of the Parquet.
INSTANT = pa.int64()

# The query layer's views add these TIMESTAMPTZ_NS columns computed from the
# integer instants (the Parquet files hold only the integers).
VIEW_TIMES = {"start_ns": "start", "end_ns": "end", "ts_ns": "ts"}


@dataclass(frozen=True)
class Column:
    """One output column; ``nullable=False`` is enforced by the writer."""

    name: str
    type: pa.DataType
    description: str
    nullable: bool = True


@dataclass(frozen=True)
class Table:
    """One output table: a directory of Parquet parts with this schema."""

    name: str
    description: str
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name!r} has no column {name!r}")


def _req(name: str, type_: pa.DataType, description: str) -> Column:
    return Column(name, type_, description, nullable=False)


def _opt(name: str, type_: pa.DataType, description: str) -> Column:
    return Column(name, type_, description, nullable=True)


_PID = _req("pid", pa.int32(), "process id (kernel tgid)")
_TID = _req("tid", pa.int32(), "thread id (kernel pid)")
# Derived (the writer fills it), so an interval's end is a column, not arithmetic.
_END = _opt("end_ns", INSTANT, "start_ns + duration_ns: when it ended, ns since the Unix "
            "epoch (UTC); NULL when duration_ns is")

_TABLE_LIST = (
    Table(
        "calls",
        "One row per Python call: a frame's start or resume (generators, coroutines) to its "
        "return, yield or unwind; creating a generator is not a call (README: the call model).",
        (
            _req("start_ns", INSTANT, "when the call was entered: ns since the Unix epoch (UTC)"),
            _opt(
                "duration_ns",
                pa.int64(),
                "ns from entry to return; NULL if the call was still open when tracing "
                "stopped or the thread exited",
            ),
            _END,
            _PID,
            _TID,
            _req("depth", pa.int32(), "stack depth, 0 = outermost traced frame of the thread"),
            _opt("function", pa.string(), "function name; NULL if missing or not UTF-8"),
            _opt("file", pa.string(), "source file; NULL if missing or not UTF-8"),
            _opt("line", pa.int32(), "line of the def, as given by the entry probe"),
            _opt("return_line", pa.int32(), "line executing at return, from the return probe"),
            _req(
                "weight",
                pa.int32(),
                "calls this row stands for: 1 = every call kept, k when sampled 1-in-k",
            ),
            _req("stack_id", pa.int64(), "the call's path from its thread's outermost traced "
                 "frame (join stacks on pid, stack_id): equal paths, equal ids"),
            _opt("self_ns", pa.int64(), "duration_ns minus its traced children's durations, "
                 "measured in the kernel (exact whatever rows are sampled); NULL if open"),
            _opt("offcpu_ns", pa.int64(), "ns of the call spent off the CPU (sleeping, I/O, "
                 "preempted, waiting for the GIL), its children's included; NULL if open"),
            _opt("self_offcpu_ns", pa.int64(), "ns off the CPU while this call was on top: "
                 "self_ns - self_offcpu_ns is its on-CPU self time; NULL if open"),
            _opt("self_gil_ns", pa.int64(), "of self_offcpu_ns, ns spent waiting to take the "
                 "GIL (sched probe set; sched rows with state 'gil'); NULL if open"),
        ),
    ),
    Table(
        "stacks",
        "One row per call path (the stack_id of calls rows), sent by the kernel the first "
        "time the path is entered, and one per frame path of sampled stacks (the stack_id "
        "of samples rows; current_line set): parents before their children.",
        (
            _PID,
            _req("stack_id", pa.int64(), "id of the path (a 64-bit hash of its function ids; "
                 "of a sampled path, of its frames' functions, files and lines, hashed "
                 "apart from call paths)"),
            _opt("parent_stack_id", pa.int64(), "the path without its last call; NULL at a "
                 "thread's outermost traced frame"),
            _req("depth", pa.int32(), "calls on the path minus one (the calls rows' depth)"),
            _opt("function", pa.string(), "the path's last function (sampled: the qualified "
                 "name on 3.11+); NULL if a sampled frame's code could not be read"),
            _opt("file", pa.string(), "its source file"),
            _opt("line", pa.int32(), "its def line"),
            _opt("current_line", pa.int32(), "sampled paths: the line the frame was "
                 "executing (a caller's call site); NULL for call paths"),
            _opt("path", pa.list_(pa.string()), "function names from the outermost frame to "
                 "this one; NULL if a parent path was lost (kernel.paths_lost)"),
        ),
    ),
    Table(
        "samples",
        "One row per timer sample of a thread of a process traced with the stacks probe "
        "set (--sample-hz a second per CPU, while the thread runs).",
        (
            _req("ts_ns", INSTANT, "when the sample was taken: ns since the Unix epoch (UTC)"),
            _PID,
            _TID,
            _opt("stack_id", pa.int64(), "the sampled Python stack: the stacks row of its "
                 "innermost frame (join stacks on pid, stack_id; parent_stack_id leads "
                 "outwards); NULL if the thread ran no Python frame or its stack could not "
                 "be read (session: kernel.samples_*)"),
            _req("oncpu", pa.bool_(), "true: the thread was running on a CPU (timer samples)"),
            _req("missing_frames", pa.int32(), "outermost frames of a deeper stack left out "
                 "of stack_id's path (counted in the kernel, not recorded); 0 if none"),
        ),
    ),
    Table(
        "gc",
        "One row per garbage collection (USDT gc__start/gc__done).",
        (
            _req("start_ns", INSTANT, "when the collection started: ns since the Unix epoch (UTC)"),
            _opt("duration_ns", pa.int64(), "ns the collection took; NULL if it never finished"),
            _END,
            _PID,
            _TID,
            _opt("generation", pa.int32(), "generation collected (0, 1 or 2)"),
            _opt("collected", pa.int64(), "objects collected"),
            _opt("stack_id", pa.int64(), "the Python stack that started the collection "
                 "(stacks probe set): "
                 "the stacks row of its innermost frame (join stacks on pid, stack_id); NULL "
                 "if not taken"),
        ),
    ),
    Table(
        "sched",
        "One row per off-CPU interval of a traced thread (sched_switch/sched_wakeup).",
        (
            _req("start_ns", INSTANT, "when the thread left the CPU: ns since the Unix epoch "
                 "(UTC)"),
            _opt("duration_ns", pa.int64(), "ns off-CPU; NULL if it never came back"),
            _END,
            _PID,
            _TID,
            _req("state", pa.string(), "why it left: 'gil' (waiting to take the GIL) | "
                 "'sleeping' | 'io' | 'preempted' | 'other'"),
            _req("prev_state", pa.int64(), "raw kernel task state at the switch"),
            _opt("runq_ns", pa.int64(), "run-queue latency, ns from wakeup to back on a CPU"),
            _opt("function", pa.string(), "Python function on top of the stack when it left"),
            _opt("file", pa.string(), "source file of that function"),
            _opt("line", pa.int32(), "def line of that function"),
            _opt("stack_id", pa.int64(), "the Python stack when it blocked (stacks probe set; "
                 "not for preemptions; a walk a ms per thread, 16 saved: kernel.offcpu_*): "
                 "the stacks row of its innermost frame (join stacks on pid, stack_id); NULL "
                 "if not taken"),
        ),
    ),
    Table(
        "functions",
        "Exact per-function aggregates from per-CPU BPF maps, one row per function and "
        "snapshot interval (every few seconds and at stop): exact whatever calls rows were "
        "filtered, sampled or cut by the breaker, so sum(calls) is the true call count.",
        (
            _req("ts_ns", INSTANT, "when the snapshot was taken (end of the interval): "
                 "ns since the Unix epoch (UTC)"),
            _PID,
            _opt("function", pa.string(), "function name"),
            _opt("file", pa.string(), "source file"),
            _opt("line", pa.int32(), "def line"),
            _req("calls", pa.int64(), "calls completed in the interval (calls deeper than "
                 "the shadow stack are counted at entry)"),
            _req("total_ns", pa.int64(), "their summed duration"),
            _opt("min_ns", pa.int64(), "shortest call since tracing began"),
            _opt("max_ns", pa.int64(), "longest call since tracing began"),
            _req("dropped", pa.int64(), "of these calls, how many have no calls row by choice: "
                 "--include/--exclude, --min-duration, --tid/--thread-name, or sampling"),
            _req("lost", pa.int64(), "of these calls, how many have no calls row by force: "
                 "deeper than the shadow stack (counted at entry, no duration) or a full "
                 "ring buffer; calls - dropped - lost = completed calls rows"),
            _req("hist", pa.list_(pa.int64()), "log2 latency histogram of the interval: "
                 "hist[i] counts calls with 2^i <= duration_ns < 2^(i+1) (last bucket open)"),
            _req("self_ns", pa.int64(), "the completed calls' summed self time (calls.self_ns), "
                 "exact whatever rows were kept"),
            _req("self_offcpu_ns", pa.int64(), "of which off the CPU (calls.self_offcpu_ns)"),
            _req("self_gil_ns", pa.int64(), "of which waiting to take the GIL "
                 "(calls.self_gil_ns)"),
        ),
    ),
    Table(
        "sampling",
        "Every change of a function's 1-in-k call sampling, and of the row budget.",
        (
            _req("ts_ns", INSTANT, "when it changed: ns since the Unix epoch (UTC)"),
            _opt("pid", pa.int32(), "process of the function (NULL for budget changes)"),
            _opt("function", pa.string(), "function name (NULL for budget changes)"),
            _opt("file", pa.string(), "source file"),
            _opt("rate", pa.float64(), "measured calls/s that led to the change"),
            _opt("old_k", pa.int32(), "previous k"),
            _opt("new_k", pa.int32(), "new k: calls rows now carry weight k"),
            _opt("budget", pa.float64(), "call rows/s budget in force"),
            _req("reason", pa.string(), "'rate' | 'kernel buffer loss' | 'controller cpu'"),
        ),
    ),
    Table(
        "breaker",
        "Circuit breaker transitions: 'open' (function probes detached), 'half-open' "
        "(re-attached on probation), 'closed'.",
        (
            _req("ts_ns", INSTANT, "when it changed state: ns since the Unix epoch (UTC)"),
            _req("state", pa.string(), "'open' | 'half-open' | 'closed'"),
            _opt("rate", pa.float64(), "probe hits/s that caused it (for 'open')"),
            _opt("limit", pa.float64(), "the --breaker-rate in force"),
            _opt("backoff_s", pa.float64(), "seconds until the next re-attach (for 'open')"),
            _req("reason", pa.string(), "what caused it"),
            _opt("selector", pa.int32(), "the daemon selector (1-based) whose own budget "
                 "tripped; null: the host-wide breaker"),
            _opt("pid", pa.int32(), "the process whose own budget tripped; null: the "
                 "selector's or the host's"),
        ),
    ),
    Table(
        "imports",
        "One row per module import that ran the finders/loaders (USDT "
        "import__find__load__start/done); cached imports do not fire.",
        (
            _req("start_ns", INSTANT, "when the import started: ns since the Unix epoch (UTC)"),
            _opt("duration_ns", pa.int64(), "ns to find and load the module, nested imports "
                 "included"),
            _END,
            _PID,
            _TID,
            _opt("module", pa.string(), "module name (NULL if not valid UTF-8)"),
            _opt("found", pa.bool_(), "whether a module was found and loaded"),
            _req("depth", pa.int32(), "0 for an import made by user code, 1+ for the "
                 "imports it triggered"),
        ),
    ),
    Table(
        "audit",
        "One row per audit event raised by a traced process (PEP 578, USDT audit): "
        "open, exec, compile, socket.connect, subprocess.Popen, import, ...",
        (
            _req("ts_ns", INSTANT, "when it happened: ns since the Unix epoch (UTC)"),
            _PID,
            _TID,
            _opt("event", pa.string(), "audit event name (NULL if not valid UTF-8)"),
            _opt("stack_id", pa.int64(), "the Python stack that raised it (stacks probe set): "
                 "the stacks row of its innermost frame (join stacks on pid, stack_id); NULL "
                 "if not taken"),
        ),
    ),
    Table(
        "processes",
        "Lifecycle events and periodic resource samples of traced processes.",
        (
            _req("ts_ns", INSTANT, "when it happened or was sampled: ns since the Unix epoch "
                 "(UTC)"),
            _PID,
            _req("event", pa.string(),
                 "'start' (traced from here on: given by pid, launched, or found "
                 "by an exe-mode probe) | 'sample' (once a second) | 'fork' | 'exec' | "
                 "'exit' | 'thread'"),
            _opt("parent_pid", pa.int32(), "parent process id"),
            _opt("tid", pa.int32(), "thread id, for 'thread' events"),
            _opt("exe", pa.string(), "executable path"),
            _opt("cmdline", pa.string(), "command line, space separated"),
            _opt("python_version", pa.string(), "Python version of the interpreter"),
            _opt("uid", pa.int32(), "real user id"),
            _opt("user", pa.string(), "user name of uid on the tracing host"),
            _opt("cgroup", pa.string(), "cgroup path (v2), e.g. /system.slice/web.service"),
            _opt("container_id", pa.string(), "64-hex container id found in the cgroup path"),
            _opt("netns", pa.int64(), "inode of the network namespace (/proc/PID/ns/net)"),
            _opt("addresses", pa.list_(pa.string()),
                 "interface addresses inside that namespace, as name=addr/prefixlen"),
            _opt("rss_bytes", pa.int64(), "resident set size in bytes"),
            _opt("cpu_user_s", pa.float64(), "cumulative user CPU seconds"),
            _opt("cpu_system_s", pa.float64(), "cumulative system CPU seconds"),
            _opt("num_threads", pa.int32(), "number of threads"),
            _opt("num_fds", pa.int32(), "number of open file descriptors"),
            _opt("ctx_switches_voluntary", pa.int64(), "cumulative voluntary context switches"),
            _opt(
                "ctx_switches_involuntary", pa.int64(), "cumulative involuntary context switches"
            ),
            _opt("adopt_ns", pa.int64(), "'start' rows of processes adopted at their exec "
                 "(daemon): ns from the exec, as the kernel saw it, to their tracing; NULL "
                 "otherwise"),
            _opt("new_binary", pa.bool_(), "'start' rows: true if this process's "
                 "interpreter file had no probes until it was adopted (a new binary: its "
                 "events before adoption are missing), false if the file was attached before"),
        ),
    ),
    Table(
        "threads",
        "One row when a traced thread is first seen (created, or found running) and "
        "again whenever its name changes (README: thread names).",
        (
            _req("ts_ns", INSTANT, "ns since the Unix epoch (UTC) of the sighting or the change"),
            _PID,
            _TID,
            _opt("os_name", pa.string(), "kernel thread name (comm, at most 15 bytes); "
                 "CPython 3.14+ sets it from the threading.Thread name"),
            _opt("python_name", pa.string(), "threading.Thread name where known: from the "
                 "`run` hook on 3.11 (at most 45 bytes), the OS name of a renamed thread "
                 "on 3.14+; else NULL"),
            _req("source", pa.string(), "where python_name comes from: 'python' (the hook) "
                 "| 'os' (the kernel name, or no python_name)"),
        ),
    ),
    Table(
        "counters",
        "Every counter of the session table, written every rotate_seconds (each snapshot "
        "a finished Parquet part of its own) and at stop: a tracer killed with SIGKILL "
        "leaves its counters up to its last rotation. Cumulative since the session "
        "started; the last snapshot of a stopped session equals its session table.",
        (
            _req("ts_ns", INSTANT, "ns since the Unix epoch (UTC) of the snapshot"),
            _req("key", pa.string(), "the counter, as in the session table"),
            _req("count", pa.int64(), "its value then"),
        ),
    ),
    Table(
        "session",
        "Key/value facts about the trace: host, kernel, version, targets, probes, "
        "start_ns/end_ns and every counter (events seen, records written, records lost). "
        "Typed by column: every value is in value as text, and an integer one also in "
        "value_int.",
        (
            _req("key", pa.string(), "name of the fact or counter"),
            _opt("value", pa.string(), "its value as text"),
            _opt("count", pa.int64(), "the value, for counters only (so sum(count) never "
                 "adds up times)"),
            _opt("value_int", pa.int64(), "the value when it is an integer: start_ns and "
                 "end_ns (ns since the Unix epoch, UTC) and every counter; NULL for text"),
        ),
    ),
)

# Last in every table, filled by the writer: a directory written with --append
# (and a daemon's tree, one session per start or reload) holds several sessions.
SESSION_ID = _req("session_id", pa.string(),
                  "the tracing session that wrote the row (also the session table's "
                  "session_id key): tells apart sessions appended to one directory")

TABLES: dict[str, Table] = {t.name: replace(t, columns=t.columns + (SESSION_ID,))
                            for t in _TABLE_LIST}


def arrow_schema(table_name: str) -> pa.Schema:
    """Plain types only: dictionary encoding is a storage choice of the writer."""
    try:
        table = TABLES[table_name]
    except KeyError:
        raise KeyError(f"unknown table {table_name!r}; known: {', '.join(TABLES)}") from None
    return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in table.columns])


def type_name(type_: pa.DataType) -> str:
    """The Arrow type's name as a listing shows it."""
    return str(type_)


VIEW_TYPE = "timestamptz_ns (view)"

HEADER = """\
Every *_ns column is an int64: an instant is ns since the Unix epoch (UTC), a
duration is ns, so start_ns + duration_ns = end_ns and max(ts_ns) - min(ts_ns)
are integer arithmetic. The Parquet files hold only these integers; the views of
`scope-ebpf query` and `report` add start, end and ts, the same instants as
TIMESTAMPTZ_NS (UTC): SELECT start, "end" FROM calls (END is an SQL keyword).
"""


def view_times(table: Table) -> list[tuple[str, str]]:
    """(view column, integer column) pairs the query layer adds to a table's view."""
    names = {c.name for c in table.columns}
    return [(view, col) for col, view in VIEW_TIMES.items() if col in names]


def describe() -> str:
    """Aligned plain text so it reads well in a terminal and greps well in a pipe."""
    rows = [
        (c.name, type_name(c.type) + ("" if c.nullable else " not null"), c.description)
        for t in TABLES.values()
        for c in t.columns
    ]
    name_w = max(len(r[0]) for r in rows)
    type_w = max([len(r[1]) for r in rows] + [len(VIEW_TYPE)])
    out: list[str] = [HEADER.rstrip("\n")]
    for t in TABLES.values():
        out.append("")
        out.append(f"{t.name}: {t.description}")
        for c in t.columns:
            typ = type_name(c.type) + ("" if c.nullable else " not null")
            out.append(f"  {c.name:<{name_w}}  {typ:<{type_w}}  {c.description}")
        for view, col in view_times(t):
            out.append(f"  {view:<{name_w}}  {VIEW_TYPE:<{type_w}}  {col} as a UTC timestamp "
                       "(query views only, not in the Parquet)")
    return "\n".join(out) + "\n"
