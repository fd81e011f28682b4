"""DuckDB over an output directory: one view per table, results as text.

Every table always exists as a view (empty when it has no parts) so a saved
query works on any trace, not only on traces that happened to record GC.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from .errors import ScopeError
from .schema import TABLES, VIEW_TIMES, arrow_schema
from .textsafe import json_text, safe
from .units import parse_duration

Format = Literal["table", "csv", "json"]
MAX_CELL = 60


class QueryError(ScopeError):
    """The directory cannot be queried or the SQL failed (one-line message)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _layout(path: Path) -> str | None:
    """'flat' (run/trace: parts in the table directory), 'hive' (the daemon's
    host=/date=/hour= partitions, or many hosts' copied together) or None."""
    if not path.is_dir():
        return None
    if any(path.glob("*.parquet")):
        return "flat"
    if any(path.glob("host=*/**/*.parquet")):
        return "hive"
    return None


# Partition columns of a daemon tree, and the filters `query` accepts on them.
PARTITIONS = ("host", "date", "hour")


def _time_column(table: str) -> str | None:
    names = arrow_schema(table).names
    return next((c for c in ("start_ns", "ts_ns") if c in names), None)


def _row_filter(table: str, pid: int | None, since_ns: int | None,
                until_ns: int | None, session: str | None = None) -> list[str]:
    """Conditions of --pid/--since/--until/--session on one table (session has
    only the last)."""
    conds = [f"session_id = {_sql_str(session)}"] if session is not None else []
    names = arrow_schema(table).names
    if pid is not None and "pid" in names:
        conds.append(f"pid = {int(pid)}")
    col = _time_column(table)
    if col and since_ns is not None:
        conds.append(f"{col} >= {int(since_ns)}")
    if col and until_ns is not None:
        conds.append(f"{col} < {int(until_ns)}")
    return conds


def _utc(col: str) -> str:
    """SQL: an integer instant as TIMESTAMPTZ_NS. timezone('UTC', ...) fixes the
    zone, where a cast would read the naive timestamp in the session's TimeZone."""
    return f"timezone('UTC', make_timestamp_ns({_ident(col)}))"


def _upgrade(table: str, source: str, types: dict[str, str]) -> str:
    """``source`` with the current columns, whatever scope-ebpf wrote its parts:
    instants as integers (they were TIMESTAMPTZ_NS), end_ns, session_id and the
    session's value_int (added later)."""
    names = arrow_schema(table).names
    fixes = [f"epoch_ns({_ident(c)}) AS {_ident(c)}" for c in VIEW_TIMES
             if c in names and "TIMESTAMP" in types.get(c, "")]
    if fixes:
        source = f"(SELECT * REPLACE ({', '.join(fixes)}) FROM {source})"
    added = []
    if "session_id" not in types:  # written before session ids: one unnamed session
        added.append("NULL::VARCHAR AS session_id")
    if "end_ns" in names and "end_ns" not in types:
        added.append("start_ns + duration_ns AS end_ns")
    if table == "session" and "value_int" not in types:
        added.append("CASE WHEN count IS NOT NULL OR key IN ('start_ns', 'end_ns') "
                     "THEN TRY_CAST(value AS BIGINT) END AS value_int")
    if added:
        source = f"(SELECT *, {', '.join(added)} FROM {source})"
    return source


def connect(root: str | Path, where: dict[str, str] | None = None, *, pid: int | None = None,
            since_ns: int | None = None, until_ns: int | None = None,
            session: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory database whose views read the parts in place (nothing is copied).

    A daemon's Hive tree gains the columns host, date and hour; ``where``
    (e.g. ``{"host": "web-17", "date": "2026-11-26"}``) keeps only those
    partitions, and DuckDB then does not open the files of the others.
    ``pid`` and ``since_ns``/``until_ns`` (UTC epoch ns, on each table's start_ns
    or ts_ns) keep only those rows; ``session`` only that session's rows (a
    directory written with --append holds several), and it must be there.
    """
    root = Path(root)
    if not root.is_dir():
        raise QueryError(f"no such output directory: {root}")
    where = {k: v for k, v in (where or {}).items() if v is not None}
    unknown = set(where) - set(PARTITIONS)
    if unknown:
        raise QueryError(f"unknown partition filter {', '.join(sorted(unknown))}")
    layouts = {name: _layout(root / name) for name in TABLES}
    present = [name for name, lay in layouts.items() if lay]
    if not present:
        raise QueryError(f"no scope-ebpf tables in {root} (expected e.g. {root}/calls/*.parquet "
                         f"or {root}/calls/host=H/date=D/hour=HH/*.parquet)")
    if where and not any(layouts[n] == "hive" for n in present):
        raise QueryError(f"{root} is not a daemon (host=/date=/hour=) tree: "
                         "--host/--date/--hour do not apply")
    con = duckdb.connect(":memory:")
    try:
        # Timestamps are UTC; without this DuckDB renders them in the local zone.
        con.execute("SET TimeZone = 'UTC'")
        for name in TABLES:
            conds = _row_filter(name, pid, since_ns, until_ns, session)
            if layouts[name] == "flat":
                glob = str((root / name).resolve() / "*.parquet")
                # union_by_name keeps old parts readable after a column is added.
                opts = "union_by_name = true"
            elif layouts[name] == "hive":
                glob = str((root / name).resolve() / "**" / "*.parquet")
                # partition values stay strings ('01'): what the paths say
                conds += [f"{k} = {_sql_str(str(v))}" for k, v in where.items()]
                opts = ("hive_partitioning = true, hive_types_autocast = false, "
                        "union_by_name = true")
            if layouts[name]:
                source = _parts(con, name, glob, opts)
            else:
                source = f"({_empty_select(con, name)})"
            times = "".join(f", {_utc(c)} AS {_ident(v)}" for c, v in VIEW_TIMES.items()
                            if c in arrow_schema(name).names)
            con.execute(f"CREATE VIEW {_ident(name)} AS SELECT *{times} FROM {source}"
                        + (f" WHERE {' AND '.join(conds)}" if conds else ""))
    except duckdb.Error as e:
        con.close()
        raise QueryError(f"cannot open {root}: {_one_line(e)}") from e
    if session is not None and not con.execute(
            "SELECT count(*) FROM (SELECT 1 FROM session UNION ALL SELECT 1 FROM processes)"
    ).fetchall()[0][0]:
        con.close()
        raise QueryError(f"no session {session!r} in {root}: " + _session_list(root, where))
    return con


def _parts(con: duckdb.DuckDBPyConnection, table: str, glob: str, opts: str) -> str:
    """SQL reading a table's parts with today's columns. Parts whose instants are
    Parquet timestamps (written before they were integers: a daemon's tree or an
    --append directory spans the upgrade) are read apart, since one read_parquet
    cannot unify TIMESTAMPTZ_NS with BIGINT, and upgraded before the union."""
    old: list[str] = []
    if any(c in arrow_schema(table).names for c in VIEW_TIMES):
        old = [r[0] for r in con.execute(
            "SELECT DISTINCT file_name FROM parquet_schema(?) WHERE name IN "
            "('start_ns', 'ts_ns') AND logical_type ILIKE '%timestamp%' ORDER BY 1",
            [glob]).fetchall()]
    if not old:
        source = f"read_parquet({_sql_str(glob)}, {opts})"
        return _upgrade(table, source, _column_types(con, source))
    everything = [r[0] for r in con.execute(
        "SELECT DISTINCT file_name FROM parquet_schema(?) ORDER BY 1", [glob]).fetchall()]
    new = sorted(set(everything) - set(old))
    sources = [f"read_parquet([{', '.join(map(_sql_str, files))}], {opts})"
               for files in (new, old) if files]
    # today's parts first: BY NAME keeps the first input's column order
    return "(" + " UNION ALL BY NAME ".join(
        f"SELECT * FROM {_upgrade(table, src, _column_types(con, src))}"
        for src in sources) + ")"


def _column_types(con: duckdb.DuckDBPyConnection, source: str) -> dict[str, str]:
    rel = con.sql(f"SELECT * FROM {source}")
    return {n: str(t) for n, t in zip(rel.columns, rel.types, strict=True)}


def _session_list(root: Path, where: dict[str, str]) -> str:
    con = connect(root, where)
    try:
        ids = [r["session_id"] for r in sessions(con)]
    finally:
        con.close()
    if not [i for i in ids if i is not None]:
        return "it has no session ids (written by an older scope-ebpf)"
    shown = ", ".join(i or "(no id)" for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
    return f"it holds {shown}"


def sessions(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The sessions in the views, in order of start: session_id (None: written
    before session ids), t0/t1 (first event and end of the last, epoch ns; None
    without calls, gc or sched rows) and stop_reason (None: never closed)."""
    cur = con.execute("""
        WITH ev AS (
            SELECT session_id, min(start_ns) AS t0, max(coalesce(end_ns, start_ns)) AS t1
            FROM calls GROUP BY ALL
            UNION ALL SELECT session_id, min(start_ns), max(end_ns) FROM gc GROUP BY ALL
            UNION ALL SELECT session_id, min(start_ns), max(end_ns) FROM sched GROUP BY ALL
            UNION ALL SELECT session_id, NULL, NULL FROM processes GROUP BY ALL),
        facts AS (
            SELECT session_id, max(value) FILTER (WHERE key = 'stop_reason') AS stop_reason,
                   max(value_int) FILTER (WHERE key = 'start_ns') AS started
            FROM session GROUP BY ALL),
        ids AS (SELECT session_id FROM ev UNION SELECT session_id FROM facts)
        SELECT ids.session_id, min(ev.t0) AS t0, max(ev.t1) AS t1,
               any_value(facts.stop_reason) AS stop_reason
        FROM ids
        LEFT JOIN ev ON ev.session_id IS NOT DISTINCT FROM ids.session_id
        LEFT JOIN facts ON facts.session_id IS NOT DISTINCT FROM ids.session_id
        GROUP BY ids.session_id
        ORDER BY coalesce(any_value(facts.started), min(ev.t0)) NULLS LAST, ids.session_id""")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _empty_select(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """Column types come from DuckDB's own Arrow mapping, so they equal what the
    same table read from Parquet would have (e.g. BIGINT for int64)."""
    schema = arrow_schema(table)
    types = con.from_arrow(schema.empty_table()).types
    cols = ", ".join(
        f"CAST(NULL AS {t}) AS {_ident(f.name)}" for f, t in zip(schema, types, strict=True)
    )
    return f"SELECT {cols} WHERE false"


def _timestamp_strings(col: pa.ChunkedArray) -> list[str | None]:
    """ISO-8601 with full precision; Python datetimes would drop the nanoseconds."""
    typ = col.type
    assert isinstance(typ, pa.TimestampType)
    if typ.tz is not None:
        col = col.cast(pa.timestamp(typ.unit, tz="UTC"))
        fmt = "%Y-%m-%dT%H:%M:%SZ"
    else:
        fmt = "%Y-%m-%dT%H:%M:%S"
    return pc.strftime(col, format=fmt).to_pylist()


def _plain(value: Any) -> Any:
    """A JSON-representable value; text for anything JSON has no type for."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        # DuckDB's sum() of integers is HUGEINT, which arrives as a decimal.
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return int(value)
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _columns(result: pa.Table) -> list[list[Any]]:
    cols: list[list[Any]] = []
    for col in result.columns:
        if pa.types.is_timestamp(col.type):
            cols.append(_timestamp_strings(col))
        else:
            cols.append([_plain(v) for v in col.to_pylist()])
    return cols


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _cell(value: Any) -> str:
    text = safe(_text(value))  # names come from the traced program: no raw controls
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def format_table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned text, numbers right-aligned, with a row count so empty results are visible."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows) and bool(rows)
        for i in range(len(names))
    ]
    widths = [
        max([len(safe(n))] + [len(r[i]) for r in cells]) for i, n in enumerate(names)
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line([safe(n) for n in names]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out) + "\n"


def format_csv(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV whose cells show control characters escaped (a CR or an OSC sequence in a
    name would act on the terminal the CSV is printed to)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([safe(n) for n in names])
    for row in rows:
        w.writerow(["" if v is None else safe(_text(v)) for v in row])
    return buf.getvalue()


def format_json(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return json_text([dict(zip(names, r, strict=True)) for r in rows]) + "\n"


_FORMATTERS = {"table": format_table, "csv": format_csv, "json": format_json}


def resolve_time(root: str | Path, where: dict[str, str] | None, text: str | None,
                 option: str, session: str | None = None) -> int | None:
    """--since/--until: ISO UTC time, or +DURATION after the trace's (or the
    session's) first event."""
    if text is None:
        return None
    if text.startswith("+"):
        offset = parse_duration(text[1:], option)
        con = connect(root, where, session=session)
        try:
            first = con.execute(
                "SELECT min(t) FROM (SELECT min(start_ns) AS t FROM calls UNION ALL "
                "SELECT min(start_ns) FROM gc UNION ALL SELECT min(start_ns) FROM sched "
                "UNION ALL SELECT min(ts_ns) FROM processes)").fetchone()[0]
        finally:
            con.close()
        if first is None:
            raise QueryError(f"{option} {text}: the trace has no events to count from")
        return int(first) + offset
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{option}: cannot read {text!r}: use ISO UTC time "
                         "(2026-11-26T10:00:00) or +DURATION (+1.5s)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


# Named queries of `scope-ebpf query --top/--gc/--offcpu`.
NAMED = {
    "top": """
        SELECT function, file, line, pid, sum(calls) AS calls, sum(total_ns) / 1e6 AS total_ms,
               sum(total_ns) / nullif(sum(calls), 0) / 1e3 AS mean_us, max(max_ns) / 1e6 AS max_ms
        FROM functions WHERE function IS DISTINCT FROM '<module>'
        GROUP BY ALL ORDER BY total_ms DESC LIMIT 20""",
    "gc": """
        SELECT pid, generation, count(*) AS collections, sum(duration_ns) / 1e6 AS total_ms,
               quantile_cont(duration_ns, 0.5) / 1e6 AS p50_ms, max(duration_ns) / 1e6 AS max_ms,
               sum(collected) AS collected
        FROM gc GROUP BY ALL ORDER BY pid, generation""",
    "offcpu": """
        SELECT coalesce(function, '(no Python frame)') AS function, file, line, state,
               count(*) AS intervals, sum(duration_ns) / 1e6 AS off_cpu_ms,
               quantile_cont(runq_ns, 0.9) / 1e3 AS runq_p90_us
        FROM sched GROUP BY ALL ORDER BY off_cpu_ms DESC LIMIT 20""",
}


def run_query(root: str | Path, sql: str, fmt: Format = "table",
              where: dict[str, str] | None = None, **filters: Any) -> str:
    """Run one SQL statement over the trace and render its result."""
    if fmt not in _FORMATTERS:
        raise QueryError(f"unknown format {fmt!r}; use one of: {', '.join(_FORMATTERS)}")
    con = connect(root, where, **filters)
    try:
        rel = con.sql(sql)
        if rel is None:  # a statement without a result, e.g. SET
            return ""
        result = rel.to_arrow_table()
    except duckdb.Error as e:
        raise QueryError(_one_line(e)) from e
    finally:
        con.close()
    names = result.column_names
    cols = _columns(result)
    rows = [list(r) for r in zip(*cols, strict=True)] if cols else []
    return _FORMATTERS[fmt](names, rows)
