"""Query layer: views over parts, empty views for absent tables, exact output text."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from scope_ebpf.query import QueryError, connect, run_query
from scope_ebpf.schema import TABLES
from scope_ebpf.writer import OutputDir

T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


@pytest.fixture()
def trace(tmp_path: Path) -> Path:
    out = OutputDir(tmp_path / "trace")
    out.writer("calls").write(
        pa.table(
            {
                "start_ns": pa.array([T0, T0 + 1000], pa.int64()),
                "duration_ns": pa.array([1500, None], pa.int64()),
                "pid": [7, 7],
                "tid": [8, 8],
                "depth": [0, 1],
                "function": ["main", 'say "hi", bye'],
                "file": ["/a.py", None],
                "line": [1, 22],
                "weight": [1, 4],
                "stack_id": [1, 2],
            }
        )
    )
    out.writer("session").write(
        pa.table({"key": ["records_lost"], "value": ["0"], "count": pa.array([0], pa.int64())})
    )
    out.close()
    return tmp_path / "trace"


# start: the view's timestamp of the integer start_ns, rendered with every digit
SQL = "SELECT start, duration_ns, function, file, weight FROM calls ORDER BY start_ns"


def test_views_round_trip_types(trace: Path) -> None:
    con = connect(trace)
    assert sorted(r[0] for r in con.sql("SHOW TABLES").fetchall()) == sorted(TABLES)
    rel = con.sql("SELECT * FROM calls ORDER BY start_ns")
    # the Parquet columns, then the view's timestamps of start_ns and end_ns
    assert rel.columns[-3:] == ["session_id", "start", "end"]
    assert [str(t) for t in rel.types] == [
        "BIGINT", "BIGINT", "BIGINT", "INTEGER", "INTEGER", "INTEGER", "VARCHAR", "VARCHAR",
        "INTEGER", "INTEGER", "INTEGER", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "BIGINT",
        "VARCHAR",
        "TIMESTAMPTZ_NS", "TIMESTAMPTZ_NS",
    ]
    assert con.sql("SELECT start_ns, end_ns, epoch_ns(start), epoch_ns(\"end\"), return_line "
                   "FROM calls ORDER BY 1").fetchall() == [
        (T0, T0 + 1500, T0, T0 + 1500, None),
        (T0 + 1000, None, T0 + 1000, None, None),
    ]
    # integers compose: no binder error, no casts
    assert con.sql("SELECT max(start_ns) - min(start_ns), sum(start_ns + duration_ns = end_ns) "
                   "FROM calls").fetchall() == [(1000, 1)]


def test_empty_views_have_schema_columns(trace: Path) -> None:
    con = connect(trace)
    rel = con.sql("SELECT * FROM gc")
    assert rel.columns == [c.name for c in TABLES["gc"].columns] + ["start", "end"]
    assert [str(t) for t in rel.types] == [
        "BIGINT", "BIGINT", "BIGINT", "INTEGER", "INTEGER", "INTEGER", "BIGINT", "BIGINT",
        "VARCHAR", "TIMESTAMPTZ_NS", "TIMESTAMPTZ_NS",
    ]
    assert rel.fetchall() == []
    # Joining a present and an absent table works the same as two present ones.
    assert con.sql("SELECT count(*) FROM calls JOIN sched USING (tid)").fetchall() == [(0,)]


def test_csv_exact(trace: Path) -> None:
    assert run_query(trace, SQL, "csv") == (
        "start,duration_ns,function,file,weight\n"
        "2023-11-14T22:13:20.123456789Z,1500,main,/a.py,1\n"
        '2023-11-14T22:13:20.123457789Z,,"say ""hi"", bye",,4\n'
    )


def test_json_exact(trace: Path) -> None:
    text = run_query(trace, SQL, "json")
    assert text == (
        '[{"start": "2023-11-14T22:13:20.123456789Z", "duration_ns": 1500, '
        '"function": "main", "file": "/a.py", "weight": 1}, '
        '{"start": "2023-11-14T22:13:20.123457789Z", "duration_ns": null, '
        '"function": "say \\"hi\\", bye", "file": null, "weight": 4}]\n'
    )
    assert json.loads(text)[1]["function"] == 'say "hi", bye'


def test_table_exact(trace: Path) -> None:
    assert run_query(trace, SQL) == (
        "start                           duration_ns  function       file   weight\n"
        "------------------------------  -----------  -------------  -----  ------\n"
        "2023-11-14T22:13:20.123456789Z         1500  main           /a.py       1\n"
        "2023-11-14T22:13:20.123457789Z         NULL  say \"hi\", bye  NULL        4\n"
        "(2 rows)\n"
    )


def test_table_truncates_long_cells(trace: Path) -> None:
    text = run_query(trace, "SELECT repeat('x', 100) AS s")
    assert text.splitlines()[2] == "x" * 59 + "…"


def test_counters_and_aggregates(trace: Path) -> None:
    assert run_query(trace, "SELECT key, count FROM session", "csv") == (
        "key,count\nrecords_lost,0\n"
    )
    assert run_query(trace, "SELECT sum(weight) AS n FROM calls", "json") == '[{"n": 5}]\n'


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="no such output directory"):
        connect(tmp_path / "nope")


def test_dir_without_tables(tmp_path: Path) -> None:
    (tmp_path / "calls").mkdir()
    (tmp_path / "calls" / ".part-00000.parquet.tmp").write_bytes(b"partial")
    with pytest.raises(QueryError, match="no scope-ebpf tables"):
        connect(tmp_path)


def test_bad_sql_one_line(trace: Path) -> None:
    with pytest.raises(QueryError) as e:
        run_query(trace, "SELECT nope FROM calls")
    msg = str(e.value)
    assert "\n" not in msg and "nope" in msg
    with pytest.raises(QueryError, match="unknown format"):
        run_query(trace, "SELECT 1", "xml")  # type: ignore[arg-type]


def test_view_timestamps_are_utc_whatever_the_time_zone(trace: Path) -> None:
    """start is the instant of start_ns, also after a user changes TimeZone."""
    con = connect(trace)
    con.execute("SET TimeZone = 'Asia/Kolkata'")
    assert con.sql("SELECT bool_and(epoch_ns(start) = start_ns), "
                   "bool_and(start = make_timestamp_ns(start_ns) AT TIME ZONE 'UTC') "
                   "FROM calls").fetchall() == [(True, True)]


def test_parts_written_with_timestamps_read_as_integers(tmp_path: Path) -> None:
    """A trace from before integer times (TIMESTAMP start_ns, no end_ns, session
    values only as text) reads with today's columns."""
    import pyarrow.parquet as pq

    ts = pa.timestamp("ns", tz="UTC")
    (tmp_path / "gc").mkdir()
    pq.write_table(pa.table({
        "start_ns": pa.array([T0, T0 + 10], pa.int64()).cast(ts),
        "duration_ns": pa.array([5, None], pa.int64()),
        "pid": pa.array([1, 1], pa.int32()), "tid": pa.array([1, 1], pa.int32()),
        "session_id": ["old", "old"]}), tmp_path / "gc" / "part-00000.parquet")
    (tmp_path / "session").mkdir()
    pq.write_table(pa.table({
        "key": ["start_ns", "end_ns", "rows.gc", "host"],
        "value": [str(T0), str(T0 + 99), "2", "h"],
        "count": pa.array([None, None, 2, None], pa.int64()),
        "session_id": ["old"] * 4}), tmp_path / "session" / "part-00000.parquet")
    con = connect(tmp_path)
    assert con.sql("SELECT start_ns, end_ns, epoch_ns(start) FROM gc ORDER BY 1").fetchall() == [
        (T0, T0 + 5, T0), (T0 + 10, None, T0 + 10)]
    assert con.sql("SELECT key, value_int FROM session ORDER BY key").fetchall() == [
        ("end_ns", T0 + 99), ("host", None), ("rows.gc", 2), ("start_ns", T0)]


def test_parts_of_both_formats_in_one_table_read_together(tmp_path: Path) -> None:
    """An --append directory or a daemon tree that spans the upgrade: old parts
    (timestamp instants) and new ones (integers) are one table."""
    import pyarrow.parquet as pq

    ts = pa.timestamp("ns", tz="UTC")
    for layout in ("flat", "hive"):
        root = tmp_path / layout
        sub = "host=h/date=2023-11-14/hour=22" if layout == "hive" else ""
        (root / "gc" / sub).mkdir(parents=True)
        pq.write_table(pa.table({
            "start_ns": pa.array([T0], pa.int64()).cast(ts),
            "duration_ns": pa.array([5], pa.int64()),
            "pid": pa.array([1], pa.int32()), "tid": pa.array([1], pa.int32()),
            "session_id": ["old"]}), root / "gc" / sub / "part-00000.parquet")
        out = OutputDir(root, session_id="new", partition=(lambda s=sub: s) if sub else None)
        out.writer("gc").write(pa.table({"start_ns": pa.array([T0 + 10], pa.int64()),
                                         "duration_ns": pa.array([7], pa.int64()),
                                         "pid": [1], "tid": [1]}))
        out.close()
        con = connect(root)
        rel = con.sql("SELECT * FROM gc")
        assert rel.columns[:3] == ["start_ns", "duration_ns", "end_ns"], layout
        assert con.sql("SELECT session_id, start_ns, end_ns, epoch_ns(start) FROM gc "
                       "ORDER BY 2").fetchall() == [
            ("old", T0, T0 + 5, T0), ("new", T0 + 10, T0 + 17, T0 + 10)], layout
        assert con.sql("SELECT max(start_ns) - min(start_ns) FROM gc").fetchall() == [(10,)]
