"""Integer times that compose, checked on a real trace: every *_ns column is a
BIGINT, end_ns = start_ns + duration_ns, the views' start/end/ts are the same
instants, the session's start/end are integers, and the README's SQL runs."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import PY311, program, rows, scope

from scope_ebpf.query import connect, run_query
from scope_ebpf.schema import TABLES, VIEW_TIMES, arrow_schema, describe

pytestmark = pytest.mark.kernel

README = Path(__file__).resolve().parent.parent / "README.md"
INTERVALS = ("calls", "gc", "sched", "imports")


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report_app.py: calls, forced GCs, a sleep (sched) and imports, in ~2 s."""
    out = tmp_path_factory.mktemp("times") / "out"
    r = scope("run", "-o", str(out), "--", PY311, program("report_app.py"))
    assert r.returncode == 0, r.stderr
    for table in ("calls", "gc", "sched", "session"):
        assert rows(out, f"SELECT count(*) FROM {table}")[0][0] > 0, table
    return out


def _session(out: Path) -> tuple[int, int]:
    (start, end), = rows(out, """
        SELECT max(value_int) FILTER (WHERE key = 'start_ns'),
               max(value_int) FILTER (WHERE key = 'end_ns') FROM session""")
    return start, end


def test_every_ns_column_in_the_parquet_is_an_integer(trace: Path) -> None:
    con = duckdb.connect()
    for table in TABLES:
        if not (trace / table).is_dir():
            continue
        rel = con.sql(f"SELECT * FROM read_parquet('{trace}/{table}/*.parquet')")
        types = dict(zip(rel.columns, map(str, rel.types), strict=True))
        assert {c: t for c, t in types.items() if c.endswith("_ns")} == {
            c: "BIGINT" for c in arrow_schema(table).names if c.endswith("_ns")}, table


@pytest.mark.parametrize("table", INTERVALS)
def test_end_is_start_plus_duration_in_every_row(trace: Path, table: str) -> None:
    """In the Parquet itself (not computed by a view): exact integer equality,
    and NULL exactly where the duration is."""
    if not (trace / table).is_dir():
        pytest.skip(f"the trace has no {table} rows")
    (n, equal, open_, bad), = duckdb.sql(f"""
        SELECT count(*), count(*) FILTER (WHERE start_ns + duration_ns = end_ns),
               count(*) FILTER (WHERE duration_ns IS NULL AND end_ns IS NULL),
               count(*) FILTER (WHERE end_ns < start_ns)
        FROM read_parquet('{trace}/{table}/*.parquet')""").fetchall()
    assert n > 0 and equal + open_ == n and bad == 0
    if table == "calls":
        assert equal > 1000  # hot, steady, spin: a real sample, not an empty check


def test_spans_are_integers_within_the_session(trace: Path) -> None:
    start, end = _session(trace)
    assert isinstance(start, int) and isinstance(end, int) and end >= start
    (span, first, last, open_), = rows(trace, """
        SELECT max(start_ns) - min(start_ns), min(start_ns), max(end_ns),
               count(*) FILTER (WHERE end_ns IS NULL) FROM calls""")
    assert isinstance(span, int)
    assert 0 < span <= end - start
    # every call started and ended inside the session's own start..end
    assert start <= first and last <= end and open_ == 0
    for table in ("gc", "sched"):
        (lo, hi), = rows(trace, f"SELECT min(start_ns), max(end_ns) FROM {table}")
        assert start <= lo and hi <= end, table
    # the report_app ran ~2 s: the span is seconds, not a unit mix-up
    assert 0.5e9 < span < 60e9


def test_session_times_are_typed_values(trace: Path) -> None:
    assert rows(trace, """
        SELECT key, typeof(value_int), value_int::VARCHAR = value, count IS NULL FROM session
        WHERE key IN ('start_ns', 'end_ns') ORDER BY key""") == [
        ("end_ns", "BIGINT", True, True), ("start_ns", "BIGINT", True, True)]
    start, end = _session(trace)
    # the README's form: integer arithmetic on the typed column
    assert rows(trace, """
        SELECT max(value_int) FILTER (WHERE key = 'end_ns')
               - max(value_int) FILTER (WHERE key = 'start_ns') FROM session""") == [
        (end - start,)]
    # counters: in count and value_int alike; text facts in value only
    assert rows(trace, "SELECT count(*) FROM session WHERE count IS NOT NULL "
                       "AND count IS DISTINCT FROM value_int") == [(0,)]
    assert rows(trace, "SELECT value_int FROM session WHERE key = 'stop_reason'") == [(None,)]


def test_view_timestamps_are_the_integer_instants(trace: Path) -> None:
    con = connect(trace)
    try:
        for table in TABLES:
            names = arrow_schema(table).names
            for col, view in VIEW_TIMES.items():
                if col not in names:
                    continue
                t = con.sql(f'SELECT {col}, "{view}" FROM {table}').to_arrow_table()
                assert t.schema.field(view).type == pa.timestamp("ns", tz="UTC"), table
                # the timestamp's own ns value is the integer, every digit
                same = pc.equal(t[view].cast(pa.int64()), t[col])
                assert same.null_count == t[col].null_count, (table, col)
                assert pc.all(same).as_py() in (True, None), (table, col)
        n = con.execute("SELECT count(*) FROM calls").fetchone()[0]
        assert con.execute("SELECT count(*) FROM calls WHERE start = "
                           "make_timestamp_ns(start_ns) AT TIME ZONE 'UTC'").fetchone()[0] == n
    finally:
        con.close()


def _readme_sql() -> list[str]:
    """The README's DuckDB examples: ```sql blocks and `scope-ebpf query out "SQL"`."""
    text = README.read_text()
    found = [b.strip() for b in re.findall(r"```sql\n(.*?)```", text, re.S)]
    found += [q.strip() for q in re.findall(r'scope-ebpf query out "\n(.*?)"\n', text, re.S)]
    return found


def test_readme_sql_examples_run_on_a_real_trace(trace: Path) -> None:
    examples = _readme_sql()
    assert len(examples) >= 6  # the parser still finds them
    for sql in examples:
        sql = sql.replace("'out/", f"'{trace}/")
        text = run_query(trace, sql)
        assert text.rstrip().splitlines()[-1] != "(0 rows)", sql


def test_schema_output_shows_the_shape_and_its_example_runs(trace: Path) -> None:
    text = scope("schema").stdout
    assert text == describe() + "\n"  # the CLI prints what schema.py says
    lines = text.splitlines()
    calls = lines[lines.index(next(ln for ln in lines if ln.startswith("calls:"))):]
    cols = [ln.split()[:2] for ln in calls[1:calls.index("")]]
    assert cols[:3] == [["start_ns", "int64"], ["duration_ns", "int64"], ["end_ns", "int64"]]
    assert cols[-2:] == [["start", "timestamptz_ns"], ["end", "timestamptz_ns"]]
    (example,) = re.findall(r"SELECT .*? FROM \w+", text)
    assert run_query(trace, example).splitlines()[0].split() == ["start", "end"]
