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


SQL = "SELECT start_ns, duration_ns, function, file, weight FROM calls ORDER BY start_ns"


def test_views_round_trip_types(trace: Path) -> None:
    con = connect(trace)
    assert sorted(r[0] for r in con.sql("SHOW TABLES").fetchall()) == sorted(TABLES)
    rel = con.sql("SELECT * FROM calls ORDER BY start_ns")
    assert [str(t) for t in rel.types] == [
        "TIMESTAMPTZ_NS", "BIGINT", "INTEGER", "INTEGER", "INTEGER", "VARCHAR", "VARCHAR",
        "INTEGER", "INTEGER", "INTEGER", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "VARCHAR",
    ]
    assert con.sql("SELECT epoch_ns(start_ns), return_line FROM calls ORDER BY 1").fetchall() == [
        (T0, None),
        (T0 + 1000, None),
    ]


def test_empty_views_have_schema_columns(trace: Path) -> None:
    con = connect(trace)
    rel = con.sql("SELECT * FROM gc")
    assert rel.columns == [c.name for c in TABLES["gc"].columns]
    assert [str(t) for t in rel.types] == [
        "TIMESTAMPTZ_NS", "BIGINT", "INTEGER", "INTEGER", "INTEGER", "BIGINT", "VARCHAR",
    ]
    assert rel.fetchall() == []
    # Joining a present and an absent table works the same as two present ones.
    assert con.sql("SELECT count(*) FROM calls JOIN sched USING (tid)").fetchall() == [(0,)]


def test_csv_exact(trace: Path) -> None:
    assert run_query(trace, SQL, "csv") == (
        "start_ns,duration_ns,function,file,weight\n"
        "2023-11-14T22:13:20.123456789Z,1500,main,/a.py,1\n"
        '2023-11-14T22:13:20.123457789Z,,"say ""hi"", bye",,4\n'
    )


def test_json_exact(trace: Path) -> None:
    text = run_query(trace, SQL, "json")
    assert text == (
        '[{"start_ns": "2023-11-14T22:13:20.123456789Z", "duration_ns": 1500, '
        '"function": "main", "file": "/a.py", "weight": 1}, '
        '{"start_ns": "2023-11-14T22:13:20.123457789Z", "duration_ns": null, '
        '"function": "say \\"hi\\", bye", "file": null, "weight": 4}]\n'
    )
    assert json.loads(text)[1]["function"] == 'say "hi", bye'


def test_table_exact(trace: Path) -> None:
    assert run_query(trace, SQL) == (
        "start_ns                        duration_ns  function       file   weight\n"
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
