"""Atomic, rotating Parquet parts: one directory of parts per table.

With a ``partition`` function (the daemon), parts go to
``ROOT/<table>/<partition()>/`` instead, e.g. ``host=H/date=D/hour=HH``, and a
part is closed when its partition changes, so every closed file belongs to
exactly one Hive partition.

A part is written under a hidden ``.tmp`` name and renamed only after its footer
is on disk, so a reader (or DuckDB glob) never sees a half-written file, and a
crash leaves at most one ``.tmp`` per table instead of a corrupt part. Rotation
bounds both the data lost on a crash and the memory a long trace holds.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import safefs
from .errors import ScopeError
from .safefs import Ownership
from .schema import TABLES, arrow_schema

# The tracer shares the host with its target: Arrow's thread pools (one thread
# per CPU by default) would let a big Parquet write take every core at once.
pa.set_cpu_count(1)
pa.set_io_thread_count(1)

# Rows buffered before a row group is written: small probe batches would
# otherwise become thousands of tiny row groups that DuckDB reads slowly.
ROW_GROUP_ROWS = 64 * 1024
# ... or once this much waits: a wide table (functions, a 64-bucket histogram
# per row) would otherwise hold ~40 MB before its row group fills.
ROW_GROUP_BYTES = 8 << 20
# ... or once the oldest waiting row is this old: a sparse table (sched, ~1k
# rows/s on a busy host) would otherwise keep a whole part's rows in memory.
ROW_GROUP_SECONDS = 10.0
# Small batches waiting for a row group are merged once this many pile up: a
# sparse table (sched, gc) gets one tiny batch per poll, and each batch's
# Arrow objects cost kilobytes, which grew RSS by ~0.2 MB/s until rotation.
MAX_PENDING_BATCHES = 64


_STATS_COLUMNS = {"start_ns", "end_ns", "ts_ns", "duration_ns", "pid", "tid", "function", "event",
                  "key", "session_id"}

_PART_RE = re.compile(r"^\.?part-(\d+)\.parquet(?:\.tmp)?$")
_DICT_STRING = pa.dictionary(pa.int32(), pa.string())


class OutputError(ScopeError):
    """The output directory cannot be created or written (one-line message)."""


def new_session_id() -> str:
    """A session's id: its UTC start second (so ids sort by time) and 24 random bits."""
    return time.strftime("%Y%m%dT%H%M%SZ-", time.gmtime()) + secrets.token_hex(3)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class TableWriter:
    """Appends batches of one table to ``ROOT/<table>/part-NNNNN.parquet``.

    Not meant to be shared between threads for writing, but ``close()`` may be
    called from a signal handler or another thread: it takes a re-entrant lock
    so the handler cannot deadlock against a write in the same thread.
    """

    def __init__(
        self,
        root: str | Path,
        table: str,
        rotate_rows: int = 2_000_000,
        rotate_seconds: float = 60,
        rotate_bytes: int = 0,
        partition: Callable[[], str] | None = None,
        root_fd: int | None = None,
        owner: Ownership = safefs.AS_CREATED,
        session_id: str | None = None,
        reserve: int = 0,
    ) -> None:
        """``session_id`` fills the session_id column of every row (a new id if
        None). ``reserve`` bytes are allocated for the first part right away, so
        that it can still be written once the disk is full (the session table)."""
        if rotate_rows < 1:
            raise ValueError("rotate_rows must be >= 1")
        self.table = table
        self.schema = arrow_schema(table)
        self.root = Path(root)
        self.base = self.root / table
        self.partition = partition
        self.dir = self.base / partition() if partition else self.base
        self.owner = owner
        # Everything is reached from the root's fd, never by path: see safefs.
        self._own_root = root_fd is None
        self._root_fd = safefs.open_root(str(root), owner) if root_fd is None else root_fd
        self._dir_fd: int | None = None
        self._dir_rel: str | None = None
        self._file_fd: int | None = None
        self._sink = None
        self.rotate_bytes = rotate_bytes
        self.rotate_rows = rotate_rows
        self.rotate_seconds = rotate_seconds
        self.rows_written = 0
        self.rows_finished = 0  # in parts closed and published
        self.failed = False  # a write failed: the open part's rows are lost
        self.parts: list[Path] = []
        self._string_cols = [f.name for f in self.schema if pa.types.is_string(f.type)]
        self._lock = threading.RLock()
        self._closed = False
        self._seq = 0  # of the open part
        self._writer: pq.ParquetWriter | None = None
        self._part_schema: pa.Schema | None = None
        self._tmp: str | None = None    # names inside the part's directory
        self._final: str | None = None
        self._part_rows = 0
        self._part_started = 0.0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._pending_since = 0.0  # monotonic time of the oldest waiting batch
        self.session_id = session_id or new_session_id()
        # one-entry dictionary: the constant column costs 4 bytes a row in memory
        self._sid_dict = pa.array([self.session_id], pa.string())
        self._sid_zeros = pa.array(np.zeros(0, np.int32))
        self._reserved = False  # the open tmp file was preallocated, nothing written yet
        if reserve:
            self._reserve(reserve)

    # -- public -----------------------------------------------------------

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        """Append rows; they reach disk at the next row group, rotation or close."""
        with self._lock:
            if self._closed:
                raise OutputError(f"{self.table}: write after close")
            batches = data.to_batches() if isinstance(data, pa.Table) else [data]
            for raw in batches:
                batch = self._conform(raw)
                offset = 0
                while offset < batch.num_rows:
                    if self._writer is not None and self._part_is_old():
                        self._close_part()
                    chunk = batch.slice(offset, self.rotate_rows - self._part_rows)
                    if self._writer is None:
                        self._open_part(chunk)
                    self._append(chunk)
                    offset += chunk.num_rows
                    if self._writer is not None and self._part_rows >= self.rotate_rows:
                        self._close_part()

    def close(self) -> None:
        """Finalize the open part; safe to repeat and to call after a failure."""
        with self._lock:
            if self._closed:
                if self._tmp is not None:  # a write failed (disk full): drop the part
                    self.abort()
                return
            self._closed = True
            try:
                if self._writer is not None:
                    self._close_part()
                elif self._tmp is not None:  # reserved, never written
                    self.abort()
            except OutputError:
                self.abort()  # a part that cannot be finished leaves no .tmp behind
                raise
            finally:
                self._release()

    def _release(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = self._dir_rel = None
        if self._own_root and self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def abort(self) -> None:
        """Drop the unfinished part and its ``.tmp`` file; never raises for I/O."""
        with self._lock:
            self._closed = True
            self._pending.clear()
            self._pending_rows = self._pending_bytes = 0
            if self._writer is not None:
                try:
                    self._writer.close()
                except (OSError, pa.ArrowException):
                    pass
                self._writer = None
            self._close_file()
            if self._tmp is not None and self._dir_fd is not None:
                try:
                    os.unlink(self._tmp, dir_fd=self._dir_fd)
                except OSError:
                    pass
                self._tmp = None
            self._release()

    def finish_part(self) -> None:
        """Close the open part now (it appears under its final name); the next
        write opens another."""
        with self._lock:
            if not self._closed and self._writer is not None:
                self._close_part()

    def tick(self) -> None:
        """Close the open part if it is due by age or partition, or write the waiting
        rows as a row group once they are ROW_GROUP_SECONDS old; even with no new rows."""
        with self._lock:
            if self._closed or self._writer is None:
                return
            if self._part_is_old():
                self._close_part()
            elif self._pending and time.monotonic() - self._pending_since >= ROW_GROUP_SECONDS:
                self._flush()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- internals --------------------------------------------------------

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Cast to the table schema, keeping dictionary-encoded strings as they are.

        Dictionary input is kept because the Parquet writer can then emit the
        dictionary page directly instead of hashing every string again.
        """
        have = set(batch.schema.names)
        extra = have - set(self.schema.names)
        if extra:
            raise ValueError(f"{self.table}: unknown columns {sorted(extra)}")
        arrays: list[pa.Array] = []
        fields: list[pa.Field] = []
        done: dict[str, pa.Array] = {}
        for field in self.schema:
            if field.name == "session_id":
                arr = self._session_ids(batch.num_rows)
            elif field.name == "end_ns" and "end_ns" not in have:
                # derived here, once for every producer; both come earlier in the schema
                # and were cast to int64 already; a NULL duration gives a NULL end
                arr = pc.add(done["start_ns"], done["duration_ns"])
            elif field.name in have:
                arr = batch.column(field.name)
            elif field.nullable:
                arr = pa.nulls(batch.num_rows, field.type)
            else:
                raise ValueError(f"{self.table}: missing required column {field.name!r}")
            if pa.types.is_dictionary(arr.type) and pa.types.is_string(field.type):
                if arr.type != _DICT_STRING:
                    arr = arr.cast(_DICT_STRING)
                if arr.dictionary.null_count:
                    # Parquet cannot store a null inside the dictionary (an undecodable
                    # name): make those rows null instead
                    arr = pc.dictionary_encode(arr.cast(pa.string())).cast(_DICT_STRING)
            elif arr.type != field.type:
                arr = arr.cast(field.type)
            if not field.nullable and arr.null_count:
                raise ValueError(f"{self.table}: NULL in required column {field.name!r}")
            arrays.append(arr)
            done[field.name] = arr
            fields.append(field.with_type(arr.type))
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))

    def _session_ids(self, n: int) -> pa.Array:
        """This writer's id for ``n`` rows, whatever the batch said (rows_to_batch
        leaves it null): one session, one id."""
        if len(self._sid_zeros) < n:
            self._sid_zeros = pa.array(np.zeros(max(n, 2 * len(self._sid_zeros)), np.int32))
        return pa.DictionaryArray.from_arrays(self._sid_zeros[:n], self._sid_dict)

    def _match_part(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Make a batch fit the open part, whose string columns may be dictionaries."""
        assert self._part_schema is not None
        if batch.schema == self._part_schema:
            return batch
        arrays = []
        for arr, field in zip(batch.columns, self._part_schema, strict=True):
            if arr.type != field.type:
                if pa.types.is_dictionary(field.type):
                    arr = pc.dictionary_encode(arr).cast(field.type)
                else:
                    arr = arr.cast(field.type)
            arrays.append(arr)
        return pa.RecordBatch.from_arrays(arrays, schema=self._part_schema)

    def _part_is_old(self) -> bool:
        if time.monotonic() - self._part_started >= self.rotate_seconds:
            return True
        return self.partition is not None and self.base / self.partition() != self.dir

    def _next_seq(self) -> int:
        """Continue after any part (or leftover tmp) already in the directory.

        Looked up at every part: another writer (a daemon's session being
        replaced on reload) may share the directory."""
        seqs = [int(m.group(1)) for name in os.listdir(self._dir_fd)
                if (m := _PART_RE.match(name))]
        return max(seqs, default=-1) + 1

    def _create_file(self) -> None:
        """The next part's ``.tmp`` file, in the directory of the current partition."""
        rel = self.table + (f"/{self.partition()}" if self.partition else "")
        if rel != self._dir_rel or not self._dir_alive():
            if self._dir_fd is not None:
                os.close(self._dir_fd)
                self._dir_fd = None
            self._dir_fd = safefs.subdir(self._root_fd, rel, self.owner)
            self._dir_rel, self.dir = rel, self.root / rel
        seq = self._next_seq()
        while True:
            final = f"part-{seq:05d}.parquet"
            tmp = f".{final}.tmp"
            try:
                self._file_fd = safefs.create(self._dir_fd, tmp, self.owner)
                break
            except FileExistsError:
                seq += 1  # another writer took it meanwhile
        self._seq = seq
        self._tmp, self._final = tmp, final

    def _reserve(self, size: int) -> None:
        """Create the first part now, with ``size`` bytes allocated: a full disk
        then cannot stop this table (the session's counters) from being written."""
        try:
            self._create_file()
            os.posix_fallocate(self._file_fd, 0, size)
        except (OSError, ScopeError) as e:
            self.abort()
            raise OutputError(f"cannot create a part in {self.dir}: {_reason(e)}") from e
        self._reserved = True

    def _open_part(self, first: pa.RecordBatch) -> None:
        try:
            if self._file_fd is None:
                self._create_file()
            self._sink = os.fdopen(os.dup(self._file_fd), "wb")
            self._part_schema = first.schema
            self._writer = pq.ParquetWriter(
                self._sink,
                first.schema,
                compression="zstd",
                use_dictionary=self._string_cols,
                # min/max where queries filter (time, process, duration); the
                # other columns' statistics cost CPU on every row group for nothing
                write_statistics=[c for c in self.schema.names if c in _STATS_COLUMNS],
                # Readers should see the plain schema.py types, not our
                # in-memory dictionary choice; Parquet types carry the rest.
                store_schema=False,
            )
        except (OSError, ScopeError) as e:
            self._closed = self.failed = True
            raise OutputError(f"cannot create a part in {self.dir}: {_reason(e)}") from e
        self._part_rows = 0
        self._part_started = time.monotonic()

    def _dir_alive(self) -> bool:
        """False once retention or shipping removed the (empty) directory."""
        return self._dir_fd is not None and os.fstat(self._dir_fd).st_nlink > 0

    def _close_file(self) -> None:
        if self._sink is not None:
            try:
                self._sink.close()
            except OSError:
                pass
            self._sink = None
        if self._file_fd is not None:
            os.close(self._file_fd)
            self._file_fd = None

    def _append(self, batch: pa.RecordBatch) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(self._match_part(batch))
        self._pending_rows += batch.num_rows
        self._pending_bytes += batch.nbytes
        self._part_rows += batch.num_rows
        self.rows_written += batch.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()
        elif len(self._pending) >= MAX_PENDING_BATCHES:
            # one batch again (differing dictionaries are unified)
            self._pending = [pa.concat_batches(self._pending)]

    def _flush(self, rotate: bool = True) -> None:
        if not self._pending:
            return
        assert self._writer is not None
        # Detach first: a signal handler calling close() mid-flush must not
        # write the same rows a second time.
        batches, self._pending, self._pending_rows = self._pending, [], 0
        self._pending_bytes = 0
        table = pa.Table.from_batches(batches, schema=self._part_schema)
        try:
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
            self._sink.flush()
            full = self.rotate_bytes and os.fstat(self._file_fd).st_size >= self.rotate_bytes
        except OSError as e:
            self._closed = self.failed = True
            raise OutputError(f"cannot write {self.dir / self._final}: {_reason(e)}") from e
        if full and rotate:
            self._close_part()

    def _close_part(self) -> None:
        assert self._writer is not None and self._tmp is not None and self._final is not None
        self._flush(rotate=False)
        try:
            self._writer.close()
            self._writer = None
            size = self._sink.tell()
            self._sink.close()
            self._sink = None
            if self._reserved:  # the footer must end the file: drop the unused space
                os.ftruncate(self._file_fd, size)
                self._reserved = False
            os.fsync(self._file_fd)
            self._close_file()
            while True:
                try:
                    safefs.publish(self._dir_fd, self._tmp, self._final)
                    break
                except FileExistsError:  # taken meanwhile (never replaced): the next one
                    self._seq += 1
                    self._final = f"part-{self._seq:05d}.parquet"
            os.fsync(self._dir_fd)  # without this the rename may not survive a power loss
        except OSError as e:
            # The part is unusable; keep the tmp name so abort() can remove it.
            self._closed = self.failed = True
            raise OutputError(f"cannot finish {self.dir / self._final}: {_reason(e)}") from e
        self.parts.append(self.dir / self._final)
        self.rows_finished += self._part_rows
        self._tmp = self._final = None
        self._part_schema = None
        self._part_rows = 0


# Bytes allocated for the session table when the output opens (a session table
# with 1,000 target pids and a few warnings is ~20 kB).
SESSION_RESERVE = 128 * 1024


class OutputDir:
    """The session's output root: validates it up front, hands out one writer per table.

    ``fresh``: refuse a directory that already holds a trace (any table's entry),
    so that two sessions are never mixed unless asked for (``run --append``).
    Without ``partition`` the session table's part is created and allocated up
    front, so the counters survive a disk that fills up.
    """

    def __init__(
        self,
        root: str | Path,
        rotate_rows: int = 2_000_000,
        rotate_seconds: float = 60,
        rotate_bytes: int = 0,
        partition: Callable[[], str] | None = None,
        owner: Ownership = safefs.AS_CREATED,
        session_id: str | None = None,
        fresh: bool = False,
    ) -> None:
        self.root = Path(root)
        self.session_id = session_id or new_session_id()
        self.fresh = fresh
        self.rotate_rows = rotate_rows
        self.rotate_seconds = rotate_seconds
        self.rotate_bytes = rotate_bytes
        self.partition = partition
        self.owner = owner
        self._writers: dict[str, TableWriter] = {}
        self._closed = False
        self._lock = threading.RLock()
        self._fd = self._prepare()
        if partition is None:
            try:
                self._writers["session"] = self._new_writer("session", SESSION_RESERVE)
            except OutputError:
                self._close_fd()
                raise

    def _prepare(self) -> int:
        """Fail before tracing starts, not minutes later at the first rotation.

        Permission bits say little when running as root, so writability is
        proven by creating and deleting a real file (catches read-only mounts).
        """
        root = self.root
        try:
            fd = safefs.open_root(str(root), self.owner)
        except ScopeError as e:
            raise OutputError(str(e)) from None
        except OSError as e:
            raise OutputError(f"cannot create output directory {root}: {_reason(e)}") from e
        probe = f".scope-ebpf-probe-{os.getpid()}"
        try:
            os.close(safefs.create(fd, probe, safefs.AS_CREATED))
            os.unlink(probe, dir_fd=fd)
        except OSError as e:
            os.close(fd)
            raise OutputError(f"output directory {root} is not writable: {_reason(e)}") from e
        try:
            self._check_tables(fd)
        except OSError as e:
            os.close(fd)
            raise OutputError(f"cannot read output directory {root}: {_reason(e)}") from e
        except OutputError:
            os.close(fd)
            raise
        return fd

    def _check_tables(self, fd: int) -> None:
        """What is already there: a trace (refused when ``fresh``), or a table's
        name taken by something other than a directory (never followed)."""
        found = []
        for name in TABLES:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                raise OutputError(f"{self.root / name} is a symlink: refusing to follow it")
            if not stat.S_ISDIR(st.st_mode):
                raise OutputError(f"{self.root / name} is not a directory")
            sub = os.open(name, safefs.DIR_FLAGS, dir_fd=fd)
            try:
                if os.listdir(sub):  # empty: a session that failed before writing
                    found.append(name)
            finally:
                os.close(sub)
        if found and self.fresh:
            raise OutputError(
                f"output directory {self.root} already holds a trace "
                f"({', '.join(n + '/' for n in found[:3])}{', ...' if len(found) > 3 else ''}): "
                "give a new -o, or --append to add this session to it")

    def bytes_on_disk(self) -> int:
        """Bytes of every part under the root, finished or in progress."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    continue
        return total

    def tick(self) -> None:
        """Rotate every part that is due (the daemon calls this each loop)."""
        with self._lock:
            for w in self._writers.values():
                w.tick()

    def writer(self, table: str) -> TableWriter:
        with self._lock:
            if self._closed:
                raise OutputError(f"output directory {self.root} is already closed")
            if table not in TABLES:
                raise KeyError(f"unknown table {table!r}")
            w = self._writers.get(table)
            if w is None:
                w = self._writers[table] = self._new_writer(table)
            return w

    @property
    def writers(self) -> dict[str, TableWriter]:
        """The writers opened so far, by table."""
        return self._writers

    def _new_writer(self, table: str, reserve: int = 0) -> TableWriter:
        return TableWriter(self.root, table, self.rotate_rows, self.rotate_seconds,
                           self.rotate_bytes, self.partition, self._fd, self.owner,
                           self.session_id, reserve)

    def close(self) -> None:
        """Close every writer even if one fails, then report the first failure."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            first: OutputError | None = None
            try:
                for w in self._writers.values():
                    try:
                        w.close()
                    except OutputError as e:
                        first = first or e
            finally:
                self._close_fd()
            if first is not None:
                raise first

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort_tmp(self) -> None:
        """Remove this session's unfinished ``.tmp`` parts, never those of other runs."""
        with self._lock:
            self._closed = True
            for w in self._writers.values():
                w.abort()
            self._close_fd()

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Even on error the rows collected so far are worth keeping.
        try:
            self.close()
        finally:
            self.abort_tmp()
