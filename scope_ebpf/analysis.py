"""What a trace says, computed in DuckDB from the Parquet output.

Every figure of ``scope-ebpf report`` comes from here, as SQL over the views
of :func:`scope_ebpf.query.connect` (a run's directory or a fleet tree, with
its filters), so the work scales with DuckDB rather than with Python loops.
The results are small: lists of dicts that report.py renders.

Self time and call paths come from the kernel, which knows a call's
children when it returns (calls.self_ns, calls.stack_id and the stacks
table), so they hold for sampled rows too: weight x self time on the full
path is an unbiased estimate.

A function's *total* is one figure wherever it is shown (tables, the flame
graph's tooltips, the terminal summary): the wall time of its completed calls,
counting only its outermost activation on each path. A recursive call nested
in another call of the same function (on the kernel-recorded path, the same
function, file and line) adds nothing, as its time is already inside the outer
call's (:func:`outermost_stacks`). It is computed as the exact total of
`functions` (every call) minus the nested calls' durations x weight from the
`calls` rows, so a function that does not recurse keeps its exact total
whatever rows were filtered or sampled, and a recursive one's is exact for
complete rows and unbiased for sampled ones (see :func:`_prepare_totals`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from .events import LOSSES
from .query import sessions as list_sessions
from .units import human_ns

TOP_N = 15
WINDOWS = 30            # rate and GC windows across the trace (at least 100 ms each)
BUCKETS = 20            # latency windows per function, of consecutive calls
OUTLIER_MADS = 5.0      # a window's median latency this many (scaled) MADs above ...
OUTLIER_RATIO = 3.0     # ... and this many times the function's usual median
RATE_RATIO = 5.0        # a window's call count this many times the usual
MIN_CALLS = 20          # calls a window needs for its median to count (5 made noise)
RATE_MIN_CALLS = 1000   # calls a window needs before its rate can be called a jump ...
RATE_MIN_WINDOWS = 8    # ... among this many windows with calls (the usual rate's base)
GC_STORM_SHARE = 0.10   # GC pauses taking this share of a window
TIMELINE_MAX_RECTS = 4000
TRACE_MAX_CALLS = 5000  # rows of the page's time-ordered view: the longest calls ...
TRACE_MAX_LEVELS = 40   # ... at most this many levels below each thread's outermost call


@dataclass
class Finding:
    kind: str           # 'latency', 'rate', 'gc storm'
    subject: str        # function or 'gc'
    text: str
    sql: str            # the rows behind it
    anchor: str = ""


@dataclass
class Analysis:
    tables: dict[str, int]                  # rows per table
    span_ns: tuple[int, int] | None         # first and last event
    top: list[dict] = field(default_factory=list)
    self_top: list[dict] = field(default_factory=list)    # by on-CPU self time
    waiting: list[dict] = field(default_factory=list)     # by off-CPU self time
    folded: list[tuple[str, int]] = field(default_factory=list)  # stack, weighted self ns
    # per thread: ((pid, tid), [(frames root first as (function, file, line), on-CPU ns)])
    thread_stacks: list[tuple[tuple[int, int], list[tuple[tuple[Frame, ...], int]]]] = field(
        default_factory=list)
    # sampled (stacks set): CPU ns per thread and path from samples (count / hz), and
    # off-CPU ns from sched rows with stacks, the state as the outermost frame
    cpu_stacks: list[tuple[tuple[int, int], list[tuple[tuple[Frame, ...], int]]]] = field(
        default_factory=list)
    offcpu_stacks: list[tuple[tuple[int, int], list[tuple[tuple[Frame, ...], int]]]] = field(
        default_factory=list)
    sample_hz: int = 0
    # (pid, file, def line) -> on-CPU self and total ns from the samples, and their
    # function's name there: beside the exact rows' figures where both exist
    sampled: dict[tuple, dict] = field(default_factory=dict)
    gc_by_gen: list[dict] = field(default_factory=list)
    gc_series: list[dict] = field(default_factory=list)
    gc_longest: list[dict] = field(default_factory=list)
    gc_triggers: list[dict] = field(default_factory=list)
    offcpu: list[dict] = field(default_factory=list)
    gil: list[dict] = field(default_factory=list)  # GIL waits per thread
    runq: dict[str, Any] = field(default_factory=dict)
    timeline: list[dict] = field(default_factory=list)
    thread_names: dict[tuple[int, int], str] = field(default_factory=dict)  # (pid, tid)
    findings: list[Finding] = field(default_factory=list)
    recommendations: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # what the kernel counted as lost
    session: dict[str, str] = field(default_factory=dict)
    sessions: list[dict] = field(default_factory=list)  # query.sessions(): id, t0, t1, ...
    notes: list[str] = field(default_factory=list)  # several sessions: what each lasted
    # (pid, function, file, line) -> calls, total_ns (outermost activations' wall time),
    # total_cpu_ns (their on-CPU time): the one total of each function, every view's
    totals: dict[tuple, dict] = field(default_factory=dict)
    path_prefix: str = ""                   # labels show files relative to it
    sampled_rows: int = 0                   # calls rows standing for several calls
    # the time-ordered view: the longest calls, and what was left out
    trace_calls: list[dict] = field(default_factory=list)
    trace_info: dict[str, int] = field(default_factory=dict)
    # every call row per thread, time-ordered (analyze(exact_rows=True), speedscope):
    # ((pid, tid), [(start, end, depth, function, file, line)]), times from span_ns[0]
    thread_calls: list[tuple[tuple[int, int], list[tuple]]] = field(default_factory=list)

    def where(self, file: str | None, line: int | None) -> str:
        """"path/to/file.py:12": the file relative to path_prefix (else in full)."""
        return f"{rel_path(file, self.path_prefix)}:{line if line is not None else '?'}"

    def label(self, function: str | None, file: str | None, line: int | None) -> str:
        """A frame's name on the page: "function (path/to/file.py:12)"."""
        return f"{function or '?'} ({self.where(file, line)})"


def rel_path(file: str | None, prefix: str) -> str:
    """file relative to prefix (a directory), or file itself when not under it."""
    if not file:
        return "?"
    if prefix and file.startswith(prefix + "/"):
        return file[len(prefix) + 1:]
    return file


def path_prefix(files: list[str | None]) -> str:
    """The longest directory every absolute file is under ("" for none but /):
    labels drop it, the page names it."""
    dirs = [os.path.dirname(f) for f in files if f and f.startswith("/")]
    if not dirs:
        return ""
    common = os.path.commonpath(dirs)
    return "" if common == "/" else common


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def analyze(con: duckdb.DuckDBPyConnection, exact_rows: bool = False) -> Analysis:
    """Every section of the report from the views of ``con``; with
    ``exact_rows``, also every call row per thread (a.thread_calls)."""
    tables = {t: _count(con, t) for t in ("calls", "functions", "gc", "sched", "imports",
                                          "processes", "threads", "breaker", "sampling",
                                          "session")}
    a = Analysis(tables=tables, span_ns=_span(con))
    a.session = {k: v for k, v in con.execute(
        "SELECT key, value FROM session WHERE key <> 'warning'").fetchall()}
    a.sessions = list_sessions(con)
    if len(a.sessions) > 1:
        a.notes = _session_notes(a.sessions)
    if not tables["calls"] and not tables["functions"]:
        a.missing.append("no function calls were recorded (calls probes off, an interpreter "
                         "without function probes, or the target exited at once)")
    if not tables["gc"]:
        a.missing.append("no garbage collections were recorded")
    if not tables["sched"]:
        a.missing.append("no off-CPU intervals were recorded (sched probes off?)")
    if not tables["session"]:
        a.missing.append("no session table: the trace was not closed (tracer killed?)"
                         + _COUNTERS_KEPT)
    elif len(a.sessions) > 1:
        a.missing += [f"session {s['session_id']}: no session table: it was not closed "
                      "(tracer killed?)" + _COUNTERS_KEPT
                      for s in a.sessions if s["stop_reason"] is None]
    if tables["session"]:
        a.lost = _losses(con)
    a.path_prefix = path_prefix([f for f, in con.execute(
        "SELECT DISTINCT file FROM calls UNION SELECT DISTINCT file FROM functions "
        "UNION SELECT DISTINCT file FROM sched").fetchall()])
    if tables["calls"] or tables["functions"]:
        _prepare_totals(con)
        a.totals = {(r["pid"], r["function"], r["file"], r["line"]): r
                    for r in _rows(con, "SELECT * FROM ft")}
    if tables["calls"]:
        _prepare_calls(con)
        a.top = top_functions(con)
        a.self_top = self_time(con)
        a.waiting = self_time(con, "self_offcpu_ns")
        a.folded = folded(con)
        a.thread_stacks = thread_stacks(con)
        a.sampled_rows = con.execute("SELECT count(*) FROM calls WHERE weight > 1").fetchone()[0]
        a.trace_calls, a.trace_info = trace_calls(con, a.span_ns)
        if exact_rows:
            a.thread_calls = thread_calls(con, a.span_ns)
    elif tables["functions"]:
        a.top = top_functions(con)  # no rows: nested calls are not known, totals count them
    if tables["gc"]:
        a.gc_by_gen = _rows(con, """
            SELECT generation, count(*) AS collections, sum(duration_ns) AS total_ns,
                   max(duration_ns) AS max_ns, quantile_cont(duration_ns, 0.5) AS p50_ns,
                   sum(collected) AS collected
            FROM gc GROUP BY generation ORDER BY generation""")
        a.gc_series = gc_series(con, a.span_ns)
        a.gc_longest = gc_longest(con, tables["calls"] > 0)
        if tables["calls"]:
            a.gc_triggers = gc_triggers(con)
    if _has_column(con, "samples", "stack_id") and _count(con, "samples"):
        a.sample_hz = int(a.session.get("sample_hz") or 99)
        a.cpu_stacks = cpu_stacks(con, a.sample_hz)
        a.sampled = sampled_functions(a.cpu_stacks)
        if a.self_top:  # exact rows: the sampled estimate beside each
            for r in a.self_top + a.waiting:
                got = a.sampled.get((r["pid"], r["file"], r["line"]))
                r["sampled_cpu_ns"] = got["self_ns"] if got else 0
        else:  # stacks only (or calls from no probe): hot code from the samples
            a.self_top = sampled_top(a.sampled)
    if tables["sched"] and _has_column(con, "sched", "stack_id"):
        a.offcpu_stacks = offcpu_stacks(con)
    if tables["sched"]:
        a.offcpu = _rows(con, f"""
            SELECT coalesce(function, '(no Python frame)') AS function, file, line, state,
                   count(*) AS intervals, sum(duration_ns) AS total_ns,
                   max(duration_ns) AS max_ns
            FROM sched GROUP BY ALL ORDER BY total_ns DESC LIMIT {TOP_N}""")
        a.gil = _rows(con, f"""
            SELECT pid, tid, count(*) AS intervals, sum(duration_ns) AS total_ns,
                   max(duration_ns) AS max_ns
            FROM sched WHERE state = 'gil' GROUP BY ALL ORDER BY total_ns DESC LIMIT {TOP_N}""")
        a.runq = _rows(con, """
            SELECT count(*) AS intervals,
                   quantile_cont(runq_ns, 0.5) AS p50_ns, quantile_cont(runq_ns, 0.9) AS p90_ns,
                   quantile_cont(runq_ns, 0.99) AS p99_ns, max(runq_ns) AS max_ns
            FROM sched""")[0]
    a.timeline = timeline(con, a.span_ns, tables)
    if tables["threads"]:
        a.thread_names = thread_names(con)
    a.findings = anomalies(con, a.span_ns, tables)
    a.recommendations = recommendations(con, a)
    return a


SESSIONS_LISTED = 20


def _session_notes(sessions: list[dict]) -> list[str]:
    """Several sessions (--append, a daemon's restarts): say so, and what each
    lasted, rather than one span across the gaps between them."""
    out = [f"{len(sessions)} sessions in this directory: the figures combine them "
           "(pick one with --session ID)"]
    for s in sessions[:SESSIONS_LISTED]:
        lasted = (f"{human_ns(s['t1'] - s['t0'])} of events" if s["t0"] is not None
                  else "no events")
        out.append(f"session {s['session_id'] or '(no id: older scope-ebpf)'}: {lasted}, "
                   f"{s['stop_reason'] or 'not closed'}")
    if len(sessions) > SESSIONS_LISTED:
        out.append(f"... and {len(sessions) - SESSIONS_LISTED} more")
    return out


def _span(con: duckdb.DuckDBPyConnection) -> tuple[int, int] | None:
    lo, hi = con.execute("""
        SELECT min(t0), max(t1) FROM (
            SELECT min(start_ns) AS t0, max(coalesce(end_ns, start_ns)) AS t1 FROM calls
            UNION ALL SELECT min(start_ns), max(end_ns) FROM gc
            UNION ALL SELECT min(start_ns), max(end_ns) FROM sched)""").fetchone()
    return (int(lo), int(hi)) if lo is not None else None


def outermost_stacks(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """(pid, stack_id, outermost) per path of `stacks`: outermost is false where
    the path's last function (function, file and line) is already on the path
    above it, i.e. a call on that path is a nested (recursive) activation.

    One walk down each process's tree of paths, keeping a count of the
    functions on the current path: linear in the number of paths, however deep
    a recursion runs. A path whose parent was lost starts a tree of its own."""
    nodes: dict[tuple[int, int], tuple] = {}
    parent_of: dict[tuple[int, int], int | None] = {}
    for pid, sid, parent, fn, file, line in con.execute(
            "SELECT DISTINCT pid, stack_id, parent_stack_id, function, file, line "
            "FROM stacks").fetchall():
        nodes[(pid, sid)] = (fn or "?", file, line)
        parent_of[(pid, sid)] = parent
    children: dict[tuple[int, int], list[tuple[int, int]]] = {}
    roots = []
    for key, parent in parent_of.items():
        if parent is not None and (key[0], parent) in nodes:
            children.setdefault((key[0], parent), []).append(key)
        else:
            roots.append(key)
    outer: dict[tuple[int, int], bool] = {}
    on_path: dict[tuple, int] = {}
    todo: list[tuple[tuple[int, int], bool]] = [(r, False) for r in roots]
    while todo:
        key, leaving = todo.pop()
        fn = nodes[key]
        if leaving:
            on_path[fn] -= 1
            continue
        if key in outer:  # a cycle of hashes: never expected, never looped on
            continue
        outer[key] = not on_path.get(fn)
        on_path[fn] = on_path.get(fn, 0) + 1
        todo.append((key, True))
        todo.extend((child, False) for child in children.get(key, ()))
    return pa.table({"pid": pa.array([k[0] for k in outer], pa.int32()),
                     "stack_id": pa.array([k[1] for k in outer], pa.int64()),
                     "outermost": pa.array(list(outer.values()), pa.bool_())})


_SAME_FN = ("{a}.pid = {b}.pid AND {a}.function = {b}.function "
            "AND {a}.file IS NOT DISTINCT FROM {b}.file AND {a}.line IS NOT DISTINCT FROM {b}.line")


def _prepare_totals(con: duckdb.DuckDBPyConnection) -> None:
    """Temp tables outer_stacks (outermost_stacks) and ft: every function's
    calls (exact, from `functions`, else sum(weight) of its rows) and total:
    `functions`' total minus the durations x weight of its nested (recursive)
    rows, or without `functions`, its outermost rows' durations x weight;
    total_cpu_ns, its outermost rows' on-CPU time (duration minus off-CPU)."""
    con.register("outer_arrow", outermost_stacks(con))
    con.execute("CREATE OR REPLACE TEMP TABLE outer_stacks AS SELECT * FROM outer_arrow")
    con.unregister("outer_arrow")
    # A call whose path is unknown (lost) counts as outermost.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE ft AS
        WITH r AS (
            SELECT c.pid, coalesce(c.function, '?') AS function, c.file, c.line,
                   sum(c.weight) AS calls,
                   coalesce(sum(c.duration_ns * c.weight) FILTER (o.outermost = false), 0)
                       AS nested_ns,
                   sum(c.duration_ns * c.weight) FILTER (o.outermost IS DISTINCT FROM false)
                       AS outer_ns,
                   sum((c.duration_ns - coalesce(c.offcpu_ns, 0)) * c.weight)
                       FILTER (o.outermost IS DISTINCT FROM false) AS outer_cpu_ns
            FROM calls c LEFT JOIN outer_stacks o USING (pid, stack_id)
            WHERE c.duration_ns IS NOT NULL GROUP BY ALL),
        f AS (SELECT pid, coalesce(function, '?') AS function, file, line,
                     sum(calls) AS calls, sum(total_ns) AS total_ns
              FROM functions GROUP BY ALL)
        SELECT coalesce(f.pid, r.pid) AS pid, coalesce(f.function, r.function) AS function,
               coalesce(f.file, r.file) AS file, coalesce(f.line, r.line) AS line,
               coalesce(f.calls, r.calls)::BIGINT AS calls,
               CASE WHEN f.total_ns IS NULL THEN coalesce(r.outer_ns, 0)
                    ELSE greatest(f.total_ns - coalesce(r.nested_ns, 0), 0) END::BIGINT
                   AS total_ns,
               coalesce(r.outer_cpu_ns, 0)::BIGINT AS total_cpu_ns
        FROM f FULL JOIN r ON {_SAME_FN.format(a='f', b='r')}""")


def _prepare_calls(con: duckdb.DuckDBPyConnection) -> None:
    """Temp table c: calls with ids, open calls ending at the trace's end."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE c AS
        WITH base AS (
            SELECT start_ns AS s, duration_ns, pid, tid, depth,
                   coalesce(function, '?') AS function, file, line, weight, stack_id
            FROM calls)
        SELECT row_number() OVER (ORDER BY s, depth) AS id, s,
               coalesce(duration_ns, max(s + coalesce(duration_ns, 0)) OVER () - s) AS d,
               duration_ns IS NULL AS open, pid, tid, depth, function, file, line,
               weight::BIGINT AS weight, stack_id
        FROM base""")


def top_functions(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """By total time (ft: each function's one total), with exact counts, means
    and maxima from `functions` (every call, before any filter or sampling)
    where it has them, latency percentiles from `calls` rows."""
    has_f = _count(con, "functions") > 0
    f = """f AS (SELECT pid, coalesce(function, '?') AS function, file, line,
                    sum(calls) AS calls, sum(total_ns) AS total_ns, max(max_ns) AS max_ns
             FROM functions GROUP BY ALL)""" if has_f else \
        "f AS (SELECT NULL::INTEGER AS pid, NULL AS function, NULL AS file, NULL::INTEGER AS " \
        "line, NULL::BIGINT AS calls, NULL::BIGINT AS total_ns, NULL::BIGINT AS max_ns " \
        "WHERE false)"
    return _rows(con, f"""
        WITH r AS (SELECT pid, coalesce(function, '?') AS function, file, line,
                          sum(duration_ns * weight) / sum(weight) AS mean_ns,
                          max(duration_ns) AS max_ns,
                          quantile_cont(duration_ns, 0.5) AS p50_ns,
                          quantile_cont(duration_ns, 0.9) AS p90_ns,
                          quantile_cont(duration_ns, 0.99) AS p99_ns
                   FROM calls WHERE duration_ns IS NOT NULL GROUP BY ALL), {f}
        SELECT ft.pid, ft.function, ft.file, ft.line, ft.calls, ft.total_ns, ft.total_cpu_ns,
               coalesce(f.total_ns / nullif(f.calls, 0), r.mean_ns) AS mean_ns,
               coalesce(f.max_ns, r.max_ns) AS max_ns, r.p50_ns, r.p90_ns, r.p99_ns
        FROM ft LEFT JOIN r ON {_SAME_FN.format(a='r', b='ft')}
        LEFT JOIN f ON {_SAME_FN.format(a='f', b='ft')}
        WHERE ft.function <> '<module>'
        ORDER BY ft.total_ns DESC, ft.function LIMIT {TOP_N}""")


def self_time(con: duckdb.DuckDBPyConnection, by: str = "self_cpu_ns") -> list[dict]:
    """Functions by self time, the kernel's (a call's duration minus its traced
    children's), split into on- and off-CPU and ranked by ``by`` (on-CPU: hot
    code; self_offcpu_ns: waiting code); weight x time is unbiased for sampled
    rows. total_ns is the function's one total (outermost activations)."""
    return _rows(con, f"""
        SELECT s.*, ft.total_ns FROM (
        SELECT pid, coalesce(function, '?') AS function, file, line,
               sum(weight) AS calls,
               sum(self_ns * weight) AS self_ns,
               sum((self_ns - self_offcpu_ns) * weight) AS self_cpu_ns,
               sum(self_offcpu_ns * weight) AS self_offcpu_ns,
               sum(coalesce(self_gil_ns, 0) * weight) AS self_gil_ns
        FROM calls WHERE self_ns IS NOT NULL
        GROUP BY ALL) s LEFT JOIN ft ON {_SAME_FN.format(a='s', b='ft')}
        WHERE {by} > 0 ORDER BY {by} DESC, s.function LIMIT {TOP_N}""")


def _frame_sql(alias: str) -> str:
    return (f"replace(coalesce({alias}.function, '?'), ';', ':') || ' (' || "
            f"replace(coalesce({alias}.file, '?'), ';', ':') || ':' || "
            f"coalesce({alias}.line::VARCHAR, '?') || ')'")


def folded(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    """Folded stacks ("a;b;c weight"): each call's on-CPU self time x weight on
    its kernel-recorded path (stacks), so sampled rows keep their parents and
    waiting (sleep, I/O, locks, the GIL) does not pass for work. Frames are
    "function (/full/path/file.py:line)"."""
    multi = con.execute("SELECT count(DISTINCT pid) > 1 FROM calls").fetchone()[0]
    root = "'pid ' || s.pid::VARCHAR || ';' || " if multi else ""
    return [(p, int(w)) for p, w in con.execute(f"""
        WITH RECURSIVE s AS (
            SELECT DISTINCT pid, stack_id, parent_stack_id, function, file, line FROM stacks),
        paths(pid, stack_id, path) AS (
            SELECT s.pid, s.stack_id, {root}{_frame_sql('s')} FROM s
            WHERE s.parent_stack_id IS NULL
            UNION ALL
            SELECT s.pid, s.stack_id, paths.path || ';' || {_frame_sql('s')}
            FROM s JOIN paths ON s.pid = paths.pid AND s.parent_stack_id = paths.stack_id),
        w AS (SELECT pid, stack_id, sum((self_ns - self_offcpu_ns) * weight) AS w FROM calls
              WHERE self_ns IS NOT NULL GROUP BY ALL)
        SELECT coalesce(path, 'pid ' || w.pid::VARCHAR || ';(path lost)') AS path, sum(w) AS w
        FROM w LEFT JOIN paths USING (pid, stack_id)
        GROUP BY 1 HAVING sum(w) > 0 ORDER BY 1""").fetchall()]


Frame = tuple[str, "str | None", "int | None"]  # function, file, line


def _has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    try:
        con.execute(f"SELECT {column} FROM {table} LIMIT 0")
    except duckdb.Error:
        return False
    return True


ThreadStacks = list[tuple[tuple[int, int], list[tuple[tuple[Frame, ...], int]]]]


def _weighted(con: duckdb.DuckDBPyConnection, sql: str) -> ThreadStacks:
    """(pid, tid, stack_id, weight[, outermost frame]) rows per thread and path."""
    frames = _paths(con)
    out: dict[tuple[int, int], list[tuple[tuple[Frame, ...], int]]] = {}
    for pid, tid, sid, w, *first in con.execute(sql).fetchall():
        path = frames(pid, sid) if sid is not None else (("(no stack)", None, None),)
        if first:
            path = ((first[0], None, None), *path)
        out.setdefault((pid, tid), []).append((path, int(w)))
    return list(out.items())


def cpu_stacks(con: duckdb.DuckDBPyConnection, hz: int) -> ThreadStacks:
    """CPU time per thread and path from timer samples: each one 1/hz seconds."""
    return _weighted(con, f"""
        SELECT pid, tid, stack_id, count(*) * {1_000_000_000 // max(hz, 1)} FROM samples
        WHERE oncpu AND stack_id IS NOT NULL GROUP BY ALL ORDER BY ALL""")


_COUNTERS_KEPT = "; its counters up to its last rotation are in the counters table"


def sampled_functions(stacks: ThreadStacks) -> dict[tuple, dict]:
    """(pid, file, def line) -> {function, self_ns, total_ns} from sampled CPU
    stacks: self where the function is the innermost frame, total where it is on
    the stack at all (once per sample, however often it recurses). Keyed by file
    and def line: the call rows name a 3.11+ function by co_name, the samples by
    its qualified name."""
    out: dict[tuple, dict] = {}
    for (pid, _tid), paths in stacks:
        for frames, ns in paths:
            seen = set()
            for fn, file, line in frames:
                if file is None or (file, line) in seen:
                    continue  # (no stack), or recursion: counted once
                seen.add((file, line))
                d = out.setdefault((pid, file, line), {"function": fn, "self_ns": 0,
                                                       "total_ns": 0})
                d["total_ns"] += ns
            fn, file, line = frames[-1]
            if file is not None:
                out[(pid, file, line)]["self_ns"] += ns
    return out


def sampled_top(sampled: dict[tuple, dict]) -> list[dict]:
    """Hot code rows from the samples alone (no call rows): calls, off-CPU and wall
    self time are not known there."""
    rows = [{"pid": pid, "function": d["function"], "file": file, "line": line,
             "calls": None, "self_cpu_ns": d["self_ns"], "self_offcpu_ns": None,
             "self_gil_ns": None, "self_ns": None, "total_ns": d["total_ns"],
             "sampled_cpu_ns": d["self_ns"]}
            for (pid, file, line), d in sampled.items() if d["self_ns"] > 0]
    rows.sort(key=lambda r: (-r["self_cpu_ns"], r["function"]))
    return rows[:TOP_N]


def offcpu_stacks(con: duckdb.DuckDBPyConnection) -> ThreadStacks:
    """Off-CPU time per thread, state and path of the sched rows that have a stack
    (the state, 'gil' included, as the outermost frame)."""
    return _weighted(con, """
        SELECT pid, tid, stack_id, sum(duration_ns), 'off-CPU: ' || state FROM sched
        WHERE stack_id IS NOT NULL AND duration_ns > 0 GROUP BY ALL ORDER BY ALL""")


def _paths(con: duckdb.DuckDBPyConnection):
    """A function (pid, stack_id) -> frames outermost first, from the stacks table."""
    nodes = {(pid, sid): (parent, (fn or "?", file, line)) for pid, sid, parent, fn, file, line
             in con.execute("SELECT DISTINCT pid, stack_id, parent_stack_id, function, file, "
                            "line FROM stacks").fetchall()}
    memo: dict[tuple[int, int], tuple[Frame, ...]] = {}

    def frames(pid: int, sid: int) -> tuple[Frame, ...]:
        chain: list[tuple[int, int]] = []
        key: tuple[int, int] | None = (pid, sid)
        while key is not None and key in nodes and key not in memo:  # paths run 1000 deep
            chain.append(key)
            parent = nodes[key][0]
            key = (pid, parent) if parent is not None else None
        if key is None:
            base: tuple[Frame, ...] = ()
        elif key in memo:
            base = memo[key]
        else:  # a parent whose announcement was lost (kernel.paths_lost)
            base = (("(path lost)", None, None),)
        for k in reversed(chain):
            base = memo[k] = (*base, nodes[k][1])
        return memo.get((pid, sid), base)

    return frames


def thread_stacks(con: duckdb.DuckDBPyConnection
                  ) -> list[tuple[tuple[int, int], list[tuple[tuple[Frame, ...], int]]]]:
    """On-CPU self time x weight per thread and path, paths as frames with file
    and line (for exports that keep threads apart, like py-spy's)."""
    frames = _paths(con)
    out: dict[tuple[int, int], list[tuple[tuple[Frame, ...], int]]] = {}
    for pid, tid, sid, w in con.execute("""
            SELECT pid, tid, stack_id, sum((self_ns - self_offcpu_ns) * weight) FROM calls
            WHERE self_ns IS NOT NULL GROUP BY ALL HAVING sum((self_ns - self_offcpu_ns)
            * weight) > 0 ORDER BY ALL""").fetchall():
        out.setdefault((pid, tid), []).append((frames(pid, sid), int(w)))
    return list(out.items())


def window_ns(span: tuple[int, int] | None) -> int:
    if span is None:
        return 1_000_000_000
    return max(100_000_000, math.ceil((span[1] - span[0]) / WINDOWS))


def gc_series(con: duckdb.DuckDBPyConnection, span: tuple[int, int] | None) -> list[dict]:
    w = window_ns(span)
    t0 = span[0] if span else 0
    return _rows(con, f"""
        SELECT (start_ns - {t0}) // {w} AS win, generation,
               count(*) AS collections, sum(duration_ns) AS total_ns, max(duration_ns) AS max_ns
        FROM gc GROUP BY ALL ORDER BY win, generation""") if span else []


def _running_at(source: str) -> str:
    """SQL: the id in c of the innermost traced call of the same thread running
    at source.s."""
    return f"""(SELECT c.id FROM c WHERE c.pid = {source}.pid AND c.tid = {source}.tid
                  AND c.s <= {source}.s AND c.s + c.d >= {source}.s
                ORDER BY c.depth DESC LIMIT 1)"""


def gc_longest(con: duckdb.DuckDBPyConnection, with_calls: bool) -> list[dict]:
    """The longest pauses, each with the function running when it started
    (running: function, running_file, running_line; NULL outside traced calls)."""
    if not with_calls:
        return _rows(con, """
            SELECT start, pid, tid, generation, duration_ns, collected, NULL AS running,
                   NULL AS running_file, NULL AS running_line
            FROM gc ORDER BY duration_ns DESC LIMIT 10""")
    return _rows(con, f"""
        WITH g AS (SELECT *, start_ns AS s FROM gc ORDER BY duration_ns DESC LIMIT 10),
        r AS (SELECT g.*, {_running_at('g')} AS running_id FROM g)
        SELECT r.start, r.pid, r.tid, r.generation, r.duration_ns, r.collected,
               c.function AS running, c.file AS running_file, c.line AS running_line
        FROM r LEFT JOIN c ON c.id = r.running_id ORDER BY r.duration_ns DESC""")


def gc_triggers(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Which Python functions (function, file, line) were running when
    collections started; function '(outside traced calls)' for none."""
    return _rows(con, f"""
        WITH g AS (SELECT *, start_ns AS s FROM gc),
        r AS (SELECT generation, duration_ns, {_running_at('g')} AS running_id FROM g)
        SELECT coalesce(c.function, '(outside traced calls)') AS function, c.file, c.line,
               count(*) AS collections, sum(duration_ns) AS total_ns,
               max(generation) AS max_generation
        FROM r LEFT JOIN c ON c.id = r.running_id
        GROUP BY ALL ORDER BY total_ns DESC LIMIT {TOP_N}""")


def timeline(con: duckdb.DuckDBPyConnection, span: tuple[int, int] | None,
             tables: dict[str, int]) -> list[dict]:
    """Rectangles per thread (calls near the top of each stack, GC, off-CPU),
    dropping the ones too short to see at this scale."""
    if span is None:
        return []
    t0, t1 = span
    min_ns = max(1, (t1 - t0) // 1500)
    parts = []
    if tables["calls"]:
        parts.append(f"""
            SELECT 'call' AS kind, pid, tid, s - {t0} AS start, d AS dur,
                   depth - min(depth) OVER (PARTITION BY pid, tid) AS level,
                   function AS label FROM c WHERE d >= {min_ns}""")
    if tables["gc"]:
        parts.append(f"""
            SELECT 'gc' AS kind, pid, tid, start_ns - {t0} AS start,
                   duration_ns AS dur, 0 AS level, 'gen ' || generation::VARCHAR AS label
            FROM gc WHERE duration_ns >= {min_ns}""")
    if tables["sched"]:
        parts.append(f"""
            SELECT 'off-cpu ' || state AS kind, pid, tid, start_ns - {t0} AS start,
                   duration_ns AS dur, 0 AS level, coalesce(function, '') AS label
            FROM sched WHERE duration_ns >= {min_ns}""")
    if not parts:
        return []
    return _rows(con, f"""
        SELECT * FROM ({' UNION ALL '.join(parts)})
        WHERE kind <> 'call' OR level < 4
        ORDER BY dur DESC LIMIT {TIMELINE_MAX_RECTS}""")


def trace_calls(con: duckdb.DuckDBPyConnection, span: tuple[int, int] | None
                ) -> tuple[list[dict], dict[str, int]]:
    """The time-ordered view's rows: the TRACE_MAX_CALLS longest calls (a call is
    never shorter than a call inside it, so a shown call's callers are shown
    too) at most TRACE_MAX_LEVELS levels below their thread's outermost call;
    times from the trace's start. Returns the rows, by thread and start, and
    what was left out: calls (all rows), shown, deeper (rows below the levels
    shown), shortest_ns (the shortest call shown)."""
    if span is None:
        return [], {}
    t0 = span[0]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE tc AS
        SELECT pid, tid, s - {t0} AS start, d AS dur, open,
               depth - min(depth) OVER (PARTITION BY pid, tid) AS level,
               function, file, line, weight
        FROM c""")
    shown = _rows(con, f"""
        SELECT * FROM (SELECT * FROM tc WHERE level < {TRACE_MAX_LEVELS}
                       ORDER BY dur DESC, start LIMIT {TRACE_MAX_CALLS})
        ORDER BY pid, tid, start, level""")
    calls, deeper = con.execute(f"SELECT count(*), count(*) FILTER (WHERE level >= "
                                f"{TRACE_MAX_LEVELS}) FROM tc").fetchone()
    return shown, {"calls": calls, "shown": len(shown), "deeper": deeper,
                   "shortest_ns": min((r["dur"] for r in shown), default=0),
                   "levels": TRACE_MAX_LEVELS}


def thread_calls(con: duckdb.DuckDBPyConnection, span: tuple[int, int] | None
                 ) -> list[tuple[tuple[int, int], list[tuple]]]:
    """Every call row per thread: (start, end, depth, function, file, line), times
    from the trace's start, by start then depth (callers first); a call still
    open at the end of the trace ends there."""
    if span is None:
        return []
    out: dict[tuple[int, int], list[tuple]] = {}
    for pid, tid, *row in con.execute(f"""
            SELECT pid, tid, s - {span[0]}, s + d - {span[0]}, depth, function, file, line
            FROM c ORDER BY pid, tid, s, depth, d DESC""").fetchall():
        out.setdefault((pid, tid), []).append(tuple(row))
    return list(out.items())


def thread_names(con: duckdb.DuckDBPyConnection) -> dict[tuple[int, int], str]:
    """(pid, tid) -> the thread's last name: its Python name where known, else its
    OS name (threads table)."""
    return {(pid, tid): name for pid, tid, name in con.execute("""
        SELECT pid, tid, arg_max(coalesce(python_name, os_name), ts_ns)
        FROM threads WHERE coalesce(python_name, os_name) IS NOT NULL
        GROUP BY pid, tid""").fetchall()}


def anomalies(con: duckdb.DuckDBPyConnection, span: tuple[int, int] | None,
              tables: dict[str, int]) -> list[Finding]:
    """Latency outliers (window medians against the median and MAD of all
    windows), sudden rate changes and GC storms."""
    if span is None:
        return []
    w, t0 = window_ns(span), span[0]
    out: list[Finding] = []
    if tables["calls"]:
        # Windows of consecutive calls (1/BUCKETS of a function's calls each), so a
        # function that runs only briefly still gets enough windows to compare.
        for r in _rows(con, f"""
            WITH numbered AS (
                SELECT pid, function, file, line, s, d,
                       (row_number() OVER (fn ORDER BY s) - 1) * {BUCKETS}
                           // count(*) OVER fn AS win
                FROM c WHERE NOT open
                WINDOW fn AS (PARTITION BY pid, function, file, line)),
            win AS (
                SELECT pid, function, file, line, win, count(*) AS n, median(d) AS med,
                       min(s) AS a, max(s + d) AS b
                FROM numbered GROUP BY ALL),
            usual AS (
                SELECT pid, function, file, line, median(med) AS base, count(*) AS windows
                FROM win WHERE n >= {MIN_CALLS} GROUP BY ALL),
            spread AS (
                SELECT win.pid, win.function, win.file, win.line, base, windows,
                       median(abs(med - base)) AS mad
                FROM win JOIN usual USING (pid, function, file, line)
                WHERE n >= {MIN_CALLS} GROUP BY ALL),
            flagged AS (
                SELECT win.*, base, win - row_number() OVER (
                           PARTITION BY pid, function, file, line ORDER BY win) AS island
                FROM win JOIN spread USING (pid, function, file, line)
                WHERE windows >= 4 AND n >= {MIN_CALLS}
                  AND med > base + {OUTLIER_MADS} * 1.4826 * greatest(mad, 0.05 * base)
                  AND med > {OUTLIER_RATIO} * base)
            -- adjacent outlying windows are one finding
            SELECT pid, function, file, line, any_value(base) AS base, sum(n) AS n,
                   sum(med * n) / sum(n) AS med, min(a) AS a, max(b) AS b
            FROM flagged GROUP BY pid, function, file, line, island
            ORDER BY sum(med * n) / sum(n) / any_value(base) DESC LIMIT 20"""):
            a, b = r["a"], r["b"]
            out.append(Finding(
                "latency", r["function"],
                f"{r['function']} (pid {r['pid']}) was {r['med'] / r['base']:.0f}x slower "
                f"(median {ns_text(r['med'])} vs usually {ns_text(r['base'])}, {r['n']} calls) "
                f"from +{(a - t0) / 1e9:.3f} s to +{(b - t0) / 1e9:.3f} s",
                _calls_sql(r, a, b)))
        for r in _rows(con, f"""
            WITH win AS (SELECT pid, function, file, line, (s - {t0}) // {w} AS win,
                                sum(weight) AS n FROM c GROUP BY ALL),
            usual AS (SELECT pid, function, file, line, median(n) AS base, count(*) AS windows
                      FROM win GROUP BY ALL)
            SELECT win.*, base FROM win JOIN usual USING (pid, function, file, line)
            WHERE windows >= {RATE_MIN_WINDOWS} AND n >= {RATE_MIN_CALLS}
              AND n > {RATE_RATIO} * base
            ORDER BY n / base DESC LIMIT 10"""):
            a, b = t0 + r["win"] * w, t0 + (r["win"] + 1) * w
            out.append(Finding(
                "rate", r["function"],
                f"{r['function']} (pid {r['pid']}) was called {r['n']:,} times in "
                f"{w / 1e9:.1f} s from +{(a - t0) / 1e9:.1f} s, {r['n'] / r['base']:.0f}x its "
                f"usual {r['base']:,.0f}", _calls_sql(r, a, b)))
    if tables["gc"]:
        for r in _rows(con, f"""
            WITH win AS (
                SELECT pid, (start_ns - {t0}) // {w} AS win, count(*) AS n,
                       sum(duration_ns) AS pause_ns
                FROM gc GROUP BY ALL HAVING sum(duration_ns) > {GC_STORM_SHARE} * {w}),
            islands AS (SELECT *, win - row_number() OVER (PARTITION BY pid ORDER BY win)
                                  AS island FROM win)
            SELECT pid, min(win) AS first, max(win) + 1 AS last, sum(n) AS n,
                   sum(pause_ns) AS pause_ns
            FROM islands GROUP BY pid, island ORDER BY pause_ns DESC LIMIT 10"""):
            a, b = t0 + r["first"] * w, t0 + r["last"] * w
            out.append(Finding(
                "gc storm", "gc",
                f"GC storm in pid {r['pid']}: {r['n']} collections paused it for "
                f"{ns_text(r['pause_ns'])} ({r['pause_ns'] / (b - a):.0%} of the time) from "
                f"+{(a - t0) / 1e9:.1f} s to +{(b - t0) / 1e9:.1f} s",
                f"SELECT * FROM gc WHERE pid = {r['pid']} AND start_ns "
                f"BETWEEN {a} AND {b} ORDER BY start_ns"))
    for i, f in enumerate(out):
        f.anchor = f"finding-{i}"
    return out


def _calls_sql(r: dict, a: int, b: int) -> str:
    fn = str(r["function"]).replace("'", "''")
    file = str(r["file"]).replace("'", "''")
    return (f"SELECT * FROM calls WHERE pid = {r['pid']} AND function = '{fn}' "
            f"AND file = '{file}' AND start_ns BETWEEN {a} AND {b} "
            "ORDER BY start_ns")


IO_MIN_NS = 10_000_000  # I/O advice only for a function that waited at least this long


def recommendations(con: duckdb.DuckDBPyConnection, a: Analysis) -> list[dict]:
    """Rule-based advice, each with the evidence that triggered it."""
    out = []
    gen2 = [g for g in a.gc_by_gen if g["generation"] == 2]
    if gen2 and gen2[0]["max_ns"] >= 20_000_000:
        rss = con.execute("SELECT max(rss_bytes) FROM processes").fetchone()[0]
        out.append({
            "title": "Freeze the start-up heap: gc.freeze() after initialisation",
            "evidence": f"gen-2 collections paused the process up to {ns_text(gen2[0]['max_ns'])} "
                        f"({gen2[0]['collections']} of them, {ns_text(gen2[0]['total_ns'])} in all)"
                        + (f" with an RSS of up to {rss / 2**20:,.0f} MiB" if rss else "")
                        + ": objects that live for the whole run are scanned again each time",
        })
    waits = {(w["function"], w["file"]): w for w in a.waiting}
    for r in a.offcpu:
        if r["state"] == "io" and r["function"] != "(no Python frame)":
            # the calls' own figures, off-CPU <= self <= wall by construction; sched's
            # intervals also cover calls that never completed (or had no row)
            w = waits.get((r["function"], r["file"]))
            off, total = ((min(r["total_ns"], w["self_offcpu_ns"] - w["self_gil_ns"]),
                           w["total_ns"]) if w else
                          (r["total_ns"], _function_total(con, r["function"], r["file"])))
            if total and total >= off >= max(0.5 * total, IO_MIN_NS):
                out.append({
                    "title": f"{r['function']} is I/O-bound",
                    "evidence": f"{ns_text(off)} of its {ns_text(total)} wall time "
                                "was spent off-CPU waiting for I/O: batch, cache, or make it "
                                "concurrent",
                })
    gil_ns = sum(r["total_ns"] for r in a.gil)
    if a.span_ns and gil_ns >= max(100_000_000, 0.1 * (a.span_ns[1] - a.span_ns[0])):
        spinners = [w for w in a.waiting if w["self_gil_ns"] > 0.5 * w["self_offcpu_ns"]]
        where = f", most in {spinners[0]['function']}" if spinners else ""
        out.append({
            "title": "Threads wait for the GIL: run CPU-bound work in processes (or native "
                     "code that releases the GIL)",
            "evidence": f"{len(a.gil)} threads waited {ns_text(gil_ns)} to take the GIL{where}; "
                        "Python code in threads runs one at a time",
        })
    for r in a.offcpu:
        if r["state"] == "sleeping" and r["function"] != "(no Python frame)" \
                and r["total_ns"] >= 100_000_000:
            out.append({
                "title": f"{r['function']} sleeps or waits",
                "evidence": f"{r['intervals']} waits totalling {ns_text(r['total_ns'])} "
                            f"(longest {ns_text(r['max_ns'])}) with the thread off-CPU",
            })
            break
    trips = con.execute("SELECT count(*) FROM breaker WHERE state = 'open'").fetchone()[0]
    if trips:
        out.append({
            "title": "Trace fewer functions: narrow --include (or raise --breaker-rate)",
            "evidence": f"the circuit breaker opened {trips} time(s): the probe rate exceeded "
                        "its limit and function probes were detached for a while",
        })
    if a.lost:
        out.append({"title": "Data was lost: lower --max-rate or filter with --include",
                    "evidence": "; ".join(a.lost)})
    sampled = con.execute("SELECT count(*) FROM sampling WHERE new_k > 1").fetchone()[0]
    if sampled:
        out.append({"title": "Call rows are sampled: use `functions` for exact counts",
                    "evidence": f"{sampled} sampling decision(s) kept 1 call in k for hot "
                                "functions; rows carry the weight k"})
    return out


def _losses(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every loss the session counted, as "N what" lines."""
    rows = con.execute("SELECT key, sum(count) FROM session WHERE key LIKE 'kernel.%' "
                       "GROUP BY key").fetchall()
    counts = {k.removeprefix("kernel."): int(n or 0) for k, n in rows}
    return [f"{counts[k]:,} {what}" for k, what in LOSSES.items() if counts.get(k)]


def _function_total(con: duckdb.DuckDBPyConnection, function: str, file: str | None) -> int:
    r = con.execute("SELECT sum(total_ns) FROM functions WHERE function = ? AND "
                    "file IS NOT DISTINCT FROM ?", [function, file]).fetchone()[0]
    return int(r or 0)


def ns_text(ns: float | int | None) -> str:
    """human_ns for a value that may be missing ("-")."""
    return "-" if ns is None else human_ns(int(ns))
