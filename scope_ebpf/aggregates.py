"""Exact per-function aggregates: the per-CPU ``fstats`` map -> ``functions`` rows.

The kernel counts every completed call of a traced function (count, total,
min, max, log2 histogram) before any filter, sampling decision or row loss,
so these numbers are the truth the sampled ``calls`` rows are checked
against. Rows are deltas per snapshot interval, so ``sum(calls)`` over the
table is the exact total; min and max are running values since the start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import events
from .decode import Functions, _schema

_TS = pa.timestamp("ns", tz="UTC")


@dataclass
class Totals:
    """Cumulative aggregates, one entry per function id (sorted)."""

    ids: np.ndarray
    count: np.ndarray
    total: np.ndarray
    min: np.ndarray
    max: np.ndarray
    hist: np.ndarray  # (n, SCOPE_HIST_BUCKETS)

    @classmethod
    def empty(cls) -> Totals:
        b = events.const("SCOPE_HIST_BUCKETS")
        z = np.zeros(0, np.int64)
        return cls(np.zeros(0, np.uint32), z, z, z, z, np.zeros((0, b), np.int64))

    def since(self, before: Totals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, total, hist) accumulated since ``before``, aligned with self.ids."""
        count, total, hist = self.count.copy(), self.total.copy(), self.hist.copy()
        if len(before.ids):
            pos = np.minimum(np.searchsorted(before.ids, self.ids), len(before.ids) - 1)
            seen = before.ids[pos] == self.ids
            count[seen] -= before.count[pos[seen]]
            total[seen] -= before.total[pos[seen]]
            hist[seen] -= before.hist[pos[seen]]
        return count, total, hist


def read(program) -> Totals:
    """Sum the per-CPU values of the kernel's fstats map."""
    ids, a = program.fstats()  # a: (functions, cpus)
    if not len(ids):
        return Totals.empty()
    used = a["count"] > 0
    order = np.argsort(ids)
    big = np.iinfo(np.int64).max
    mins = np.where(used, a["min_ns"].astype(np.int64), big).min(axis=1)
    return Totals(
        ids=ids[order],
        count=a["count"].sum(axis=1).astype(np.int64)[order],
        total=a["total_ns"].sum(axis=1).astype(np.int64)[order],
        min=np.where(mins == big, 0, mins)[order],
        max=a["max_ns"].max(axis=1).astype(np.int64)[order],
        hist=a["hist"].sum(axis=1).astype(np.int64)[order],
    )


def functions_batch(now: Totals, delta: tuple[np.ndarray, np.ndarray, np.ndarray],
                    functions: Functions, ts_ns: int) -> pa.RecordBatch | None:
    """``functions`` rows for what happened between two reads (None if nothing):
    ``delta`` is ``now.since(before)``."""
    count, total, hist = delta
    sel = count > 0
    if not sel.any():
        return None
    ids = now.ids[sel]
    function, file, line = functions.columns(ids)
    pids = functions.pids(ids)
    n = len(ids)
    b = hist.shape[1]
    flat = pa.array(hist[sel].reshape(-1))
    return pa.RecordBatch.from_arrays([
        pa.array(np.full(n, ts_ns, np.int64), _TS),
        pa.array(pids),
        function, file, line,
        pa.array(count[sel]),
        pa.array(total[sel]),
        pa.array(now.min[sel]),
        pa.array(now.max[sel]),
        pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * b, b, dtype=np.int32)), flat),
    ], names=_schema("functions").names)
