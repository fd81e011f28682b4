"""Writer behaviour that the rest of scope-ebpf relies on: exact round trips,
atomic renames, rotation names and clear failures on unusable directories."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scope_ebpf.schema import TABLES, arrow_schema, describe
from scope_ebpf.writer import MAX_PENDING_BATCHES, OutputDir, OutputError, TableWriter

T0 = 1_700_000_000_123_456_789


def calls_batch(n: int, start: int = 0, dictionary: bool = False) -> pa.RecordBatch:
    funcs = ["main", "work", None]
    files = ["/app/a.py", "/app/b.py", None]
    idx = pa.array([(start + i) % 3 for i in range(n)], pa.int32())
    if dictionary:
        function = pa.DictionaryArray.from_arrays(
            pa.array([None if i == 2 else i for i in idx.to_pylist()], pa.int32()),
            pa.array(funcs[:2]),
        )
        file = pa.DictionaryArray.from_arrays(
            pa.array([None if i == 2 else i for i in idx.to_pylist()], pa.int32()),
            pa.array(files[:2]),
        )
    else:
        function = pa.array([funcs[i] for i in idx.to_pylist()])
        file = pa.array([files[i] for i in idx.to_pylist()])
    k = range(start, start + n)
    return pa.RecordBatch.from_pydict(
        {
            "start_ns": pa.array([T0 + i for i in k], pa.int64()),
            "duration_ns": pa.array([None if i % 2 else i * 10 for i in k], pa.int64()),
            "pid": pa.array([100] * n, pa.int64()),
            "tid": pa.array([101] * n),
            "depth": pa.array([i % 4 for i in k]),
            "function": function,
            "file": file,
            "line": pa.array([i + 1 for i in k]),
            "return_line": pa.array([None] * n, pa.int32()),
            "weight": pa.array([1] * n),
            "stack_id": pa.array([7] * n, pa.int64()),
        }
    )


def gc_row(ts: int) -> pa.Table:
    return pa.table({"start_ns": pa.array([ts], pa.int64()), "pid": [1], "tid": [1]})


def parts(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_schema_types_and_describe() -> None:
    s = arrow_schema("calls")
    # every *_ns column is an integer: instants ns since the epoch, durations ns
    for t in TABLES:
        for f in arrow_schema(t):
            if f.name.endswith("_ns"):
                assert f.type == pa.int64(), (t, f.name)
    assert [t for t in TABLES if "end_ns" in arrow_schema(t).names] == [
        "calls", "gc", "sched", "imports"]
    assert [t for t in TABLES if "duration_ns" in arrow_schema(t).names] == [
        "calls", "gc", "sched", "imports"]
    assert s.field("function").type == pa.string()
    assert not s.field("pid").nullable and s.field("duration_ns").nullable
    assert set(TABLES) == {"calls", "functions", "sampling", "breaker", "gc", "sched",
                           "imports", "audit", "processes", "threads", "session", "stacks",
                           "samples", "counters"}
    text = describe()
    assert "runq_ns" in text and "ctx_switches_involuntary" in text
    assert "session:" in text
    assert "ns since the Unix epoch" in text.splitlines()[0]
    # the view-only timestamps are listed under their tables
    assert any(ln.split()[:2] == ["end", "timestamptz_ns"] for ln in text.splitlines())


def test_round_trip_exact_values_and_types(tmp_path: Path) -> None:
    w = TableWriter(tmp_path, "calls", session_id="s-1")
    w.write(calls_batch(3))
    w.close()
    assert parts(tmp_path / "calls") == ["part-00000.parquet"]
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    rel = con.sql(
        f"SELECT * FROM read_parquet('{tmp_path}/calls/*.parquet') ORDER BY start_ns"
    )
    assert [str(t) for t in rel.types] == [
        "BIGINT", "BIGINT", "BIGINT", "INTEGER", "INTEGER", "INTEGER", "VARCHAR", "VARCHAR",
        "INTEGER", "INTEGER", "INTEGER", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "BIGINT",
        "VARCHAR",
    ]
    rows = con.sql(
        f"SELECT start_ns, duration_ns, end_ns, pid, tid, depth, function, file, line, "
        f"return_line, weight, session_id FROM read_parquet('{tmp_path}/calls/*.parquet') "
        "ORDER BY 1"
    ).fetchall()
    assert rows == [  # end_ns and session_id: the writer's, in every row
        (T0, 0, T0, 100, 101, 0, "main", "/app/a.py", 1, None, 1, "s-1"),
        (T0 + 1, None, None, 100, 101, 1, "work", "/app/b.py", 2, None, 1, "s-1"),
        (T0 + 2, 20, T0 + 22, 100, 101, 2, None, None, 3, None, 1, "s-1"),
    ]
    # Readers see the plain schema.py types, not the writer's storage choices.
    assert pq.read_schema(tmp_path / "calls" / "part-00000.parquet") == arrow_schema("calls")


@pytest.mark.parametrize("dictionary", [False, True])
def test_string_columns_are_dictionary_encoded(tmp_path: Path, dictionary: bool) -> None:
    w = TableWriter(tmp_path, "calls")
    w.write(calls_batch(5, dictionary=dictionary))
    w.write(calls_batch(5, start=5, dictionary=not dictionary))  # mixed input still works
    w.close()
    md = pq.ParquetFile(tmp_path / "calls" / "part-00000.parquet").metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    rg = md.row_group(0)
    for col in ("function", "file"):
        meta = rg.column(names.index(col))
        assert meta.has_dictionary_page
        assert "RLE_DICTIONARY" in meta.encodings
        assert meta.compression == "ZSTD"
    # statistics only where queries filter (they cost CPU per row group)
    func = rg.column(names.index("function"))
    assert func.statistics is not None and func.statistics.null_count == 3
    assert rg.column(names.index("file")).statistics is None
    back = pq.read_table(tmp_path / "calls").sort_by("start_ns")
    assert back["function"].to_pylist() == ["main", "work", None] * 3 + ["main"]
    assert back["file"].to_pylist()[:3] == ["/app/a.py", "/app/b.py", None]


def test_rotation_by_rows_exact_names(tmp_path: Path) -> None:
    w = TableWriter(tmp_path, "calls", rotate_rows=4)
    w.write(calls_batch(3))
    w.write(calls_batch(3, start=3))  # crosses the limit inside the batch
    w.close()
    d = tmp_path / "calls"
    assert parts(d) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_metadata(d / "part-00000.parquet").num_rows == 4
    assert pq.read_metadata(d / "part-00001.parquet").num_rows == 2
    assert w.rows_written == 6
    # A second session continues the sequence instead of overwriting.
    w2 = TableWriter(tmp_path, "calls", rotate_rows=4)
    w2.write(calls_batch(1))
    w2.close()
    assert parts(d)[-1] == "part-00002.parquet"


def test_rotation_by_time(tmp_path: Path) -> None:
    w = TableWriter(tmp_path, "calls", rotate_seconds=0)
    w.write(calls_batch(1))
    w.write(calls_batch(1, start=1))
    w.close()
    assert parts(tmp_path / "calls") == ["part-00000.parquet", "part-00001.parquet"]


def test_no_tmp_after_close_and_close_idempotent(tmp_path: Path) -> None:
    out = OutputDir(tmp_path / "out")
    out.writer("calls").write(calls_batch(2))
    out.writer("session").write(
        pa.table({"key": ["version", "events_seen"], "value": ["0.1.0", "7"], "count": [None, 7]})
    )
    assert out.writer("calls") is out.writer("calls")
    out.close()
    out.close()
    out.abort_tmp()
    files = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert files == [
        "calls", "calls/part-00000.parquet", "session", "session/part-00000.parquet",
    ]
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700
    with pytest.raises(OutputError):
        out.writer("gc")


def test_empty_table_writes_no_file(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.writer("gc").write(pa.RecordBatch.from_pylist([], schema=arrow_schema("gc")))
    out.close()
    assert not (tmp_path / "gc").exists()


def test_crash_leaves_only_tmp(tmp_path: Path) -> None:
    code = (
        "import os, sys, pyarrow as pa\n"
        "from scope_ebpf.writer import TableWriter\n"
        "w = TableWriter(sys.argv[1], 'gc')\n"
        "w.write(pa.table({'start_ns': pa.array([1], pa.int64()), 'pid': [1], 'tid': [1]}))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert parts(tmp_path / "gc") == [".part-00000.parquet.tmp"]
    # The next session does not reuse (or clobber) the crashed part's number.
    w = TableWriter(tmp_path, "gc")
    w.write(gc_row(2))
    w.close()
    assert parts(tmp_path / "gc") == [".part-00000.parquet.tmp", "part-00001.parquet"]


def test_abort_tmp_removes_only_this_session(tmp_path: Path) -> None:
    (tmp_path / "gc").mkdir()
    (tmp_path / "gc" / ".part-00000.parquet.tmp").write_bytes(b"old")
    out = OutputDir(tmp_path)
    out.writer("gc").write(gc_row(1))
    assert parts(tmp_path / "gc") == [".part-00000.parquet.tmp", ".part-00001.parquet.tmp"]
    out.abort_tmp()
    assert parts(tmp_path / "gc") == [".part-00000.parquet.tmp"]


def test_bad_batches_rejected(tmp_path: Path) -> None:
    w = TableWriter(tmp_path, "gc")
    with pytest.raises(ValueError, match="unknown columns"):
        w.write(pa.table({"start_ns": pa.array([1], pa.int64()), "pid": [1], "tid": [1], "x": [1]}))
    with pytest.raises(ValueError, match="required column 'pid'"):
        w.write(pa.table({"start_ns": pa.array([1], pa.int64()), "pid": [None], "tid": [1]}))
    w.close()
    with pytest.raises(OutputError, match="after close"):
        w.write(gc_row(1))


def test_output_error_on_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        OutputDir(f)
    with pytest.raises(OutputError, match="cannot create output directory") as e:
        OutputDir(f / "sub")
    assert "\n" not in str(e.value)


def test_output_error_not_writable_as_root() -> None:
    # /proc is a directory even root cannot create files in: the probe must catch it.
    with pytest.raises(OutputError, match="is not writable"):
        OutputDir("/proc")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_output_error_read_only_mount(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    code = (
        "import sys\n"
        "from scope_ebpf.writer import OutputDir, OutputError\n"
        "try:\n"
        "    OutputDir(sys.argv[1])\n"
        "except OutputError as e:\n"
        "    print(e)\n"
    )
    script = 'mount -t tmpfs -o ro tmpfs "$1" && exec "$2" -c "$3" "$1"'
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
         str(ro), sys.executable, code],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
    assert proc.stdout == f"output directory {ro} is not writable: Read-only file system\n"


def test_hive_partitions_rotate_on_partition_change_and_bytes(tmp_path):
    """Each closed part lies in exactly one partition; a changed partition or a
    part over rotate_bytes closes it, and tick() closes old parts with no new rows."""
    where = ["host=a/date=2026-11-26/hour=01"]
    w = TableWriter(tmp_path, "calls", rotate_bytes=1, partition=lambda: where[0])
    w.write(calls_batch(10))
    where[0] = "host=a/date=2026-11-26/hour=02"
    w.write(calls_batch(5, start=10))
    w.close()
    parts = sorted(p.relative_to(tmp_path).as_posix() for p in w.parts)
    assert parts == ["calls/host=a/date=2026-11-26/hour=01/part-00000.parquet",
                     "calls/host=a/date=2026-11-26/hour=02/part-00000.parquet"]
    got = duckdb.sql(
        f"SELECT hour, count(*) FROM read_parquet('{tmp_path}/calls/**/*.parquet', "
        "hive_partitioning=true) GROUP BY hour ORDER BY hour").fetchall()
    assert got == [("01", 10), ("02", 5)]

    # bytes: with 64k-row groups a part is checked at each row group written
    w = TableWriter(tmp_path / "b", "calls", rotate_bytes=1)
    w.write(calls_batch(65_536))
    w.write(calls_batch(4_464))
    assert len(w.parts) == 1 and pq.read_metadata(w.parts[0]).num_rows == 65_536
    w.close()
    assert sum(pq.read_metadata(p).num_rows for p in w.parts) == 70_000

    w = TableWriter(tmp_path / "t", "calls", rotate_seconds=0.01)
    w.write(calls_batch(3))
    import time
    time.sleep(0.02)
    w.tick()
    assert len(w.parts) == 1 and not w.closed
    w.close()


def test_a_null_inside_a_dictionary_becomes_a_null_row(tmp_path):
    """Undecodable names arrive as a null dictionary entry, which Parquet cannot store."""
    batch = calls_batch(3, dictionary=True)
    function = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()),
                                              pa.array(["f", None]))
    batch = batch.set_column(batch.schema.get_field_index("function"), "function", function)
    w = TableWriter(tmp_path, "calls")
    w.write(batch)
    w.close()
    assert pq.read_table(w.parts[0])["function"].to_pylist() == ["f", None, "f"]


def test_many_small_batches_are_merged_while_they_wait(tmp_path: Path) -> None:
    """A sparse table gets a tiny batch per poll; they must not pile up until the
    row group fills (their Arrow objects grew RSS by ~0.2 MB/s), and merging
    batches whose dictionaries differ must keep every value."""
    w = TableWriter(tmp_path, "calls")
    n = MAX_PENDING_BATCHES * 3 + 5
    for i in range(n):
        b = calls_batch(2, start=2 * i, dictionary=True)
        names = pa.array([f"f{i}", f"g{i}"])  # a dictionary that grows, as the decoder's
        b = b.set_column(b.schema.get_field_index("function"), "function",
                         pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), names))
        w.write(b)
        assert len(w._pending) <= MAX_PENDING_BATCHES
    w.close()
    back = pq.read_table(w.parts[0]).sort_by("start_ns")
    assert back.num_rows == 2 * n
    assert back["function"].to_pylist() == [f"{p}{i}" for i in range(n) for p in "fg"]
    assert back["line"].to_pylist() == list(range(1, 2 * n + 1))


def test_tracer_arrow_pool_returns_memory_and_is_not_inherited() -> None:
    """Importing scope_ebpf picks jemalloc for Arrow's C++ side without leaving
    ARROW_DEFAULT_MEMORY_POOL in the environment the traced program inherits."""
    code = ("import os, scope_ebpf, pyarrow as pa; "
            "print(pa.default_memory_pool().backend_name, "
            "os.environ.get('ARROW_DEFAULT_MEMORY_POOL'))")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    assert out == ["jemalloc", "None"]
    env["ARROW_DEFAULT_MEMORY_POOL"] = "system"  # an explicit choice is kept
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    assert out == ["system", "system"]


def test_row_groups_are_bounded_by_bytes_as_well_as_rows(tmp_path: Path, monkeypatch) -> None:
    """Wide rows (the functions table's histograms) reach disk by size, not only
    after 64k rows, so what waits in memory stays bounded."""
    import scope_ebpf.writer as writer

    w = TableWriter(tmp_path, "calls")
    one = w._conform(calls_batch(1000, dictionary=True)).nbytes  # as stored: int32 pid...
    monkeypatch.setattr(writer, "ROW_GROUP_BYTES", 2 * one)  # a row group every 2 batches
    for i in range(9):
        w.write(calls_batch(1000, start=1000 * i, dictionary=True))
        assert w._pending_bytes < 2 * one
    w.close()
    md = pq.ParquetFile(w.parts[0]).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [2000] * 4 + [1000]
    assert pq.read_table(w.parts[0])["line"].to_pylist() == list(range(1, 9001))


def test_a_trace_is_refused_unless_appending_and_rows_carry_the_session(tmp_path: Path) -> None:
    root = tmp_path / "out"
    out = OutputDir(root, fresh=True, session_id="first")
    out.writer("gc").write(gc_row(T0))
    out.close()
    assert parts(root / "session") == []  # its reserved part, never written, is gone
    with pytest.raises(OutputError, match=rf"^output directory {root} already holds a trace "
                       r"\(gc/\): give a new -o, or --append to add this session to it$"):
        OutputDir(root, fresh=True)
    out = OutputDir(root, session_id="second")  # appending
    out.writer("gc").write(gc_row(T0 + 1))
    out.close()
    got = duckdb.sql(f"SELECT start_ns, session_id FROM "
                     f"read_parquet('{root}/gc/*.parquet') ORDER BY 1").fetchall()
    assert got == [(T0, "first"), (T0 + 1, "second")]
    # empty table directories (a session that failed before writing) are no trace
    (tmp_path / "empty" / "calls").mkdir(parents=True)
    OutputDir(tmp_path / "empty", fresh=True).close()


def test_a_table_name_taken_by_a_symlink_is_refused_up_front(tmp_path: Path) -> None:
    (tmp_path / "victim").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "calls").symlink_to(tmp_path / "victim")
    with pytest.raises(OutputError, match="calls is a symlink: refusing to follow it"):
        OutputDir(tmp_path / "out")


def test_the_session_part_is_allocated_when_the_output_opens(tmp_path: Path) -> None:
    """So the counters are written even once the disk is full."""
    from scope_ebpf.writer import SESSION_RESERVE

    out = OutputDir(tmp_path)
    (tmp,) = (tmp_path / "session").iterdir()
    assert tmp.name == ".part-00000.parquet.tmp"
    assert tmp.stat().st_blocks * 512 >= SESSION_RESERVE
    out.writer("session").write(pa.table({"key": ["k"], "value": ["v"]}))
    out.close()
    assert parts(tmp_path / "session") == ["part-00000.parquet"]
    assert pq.read_table(tmp_path / "session").to_pylist()[0]["key"] == "k"  # truncated
