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

from .. import events
from ..decode import Functions, _schema


@dataclass
class Totals:
    """Cumulative aggregates, one entry per function id (sorted)."""

    ids: np.ndarray
    count: np.ndarray
    total: np.ndarray
    min: np.ndarray
    max: np.ndarray
    dropped: np.ndarray
    lost: np.ndarray
    hist: np.ndarray  # (n, SCOPE_HIST_BUCKETS)
    self_ns: np.ndarray
    self_offcpu_ns: np.ndarray
    self_gil_ns: np.ndarray

    _SUMS = ("count", "total", "dropped", "lost", "hist", "self_ns", "self_offcpu_ns",
             "self_gil_ns")

    @classmethod
    def empty(cls) -> Totals:
        b = events.const("SCOPE_HIST_BUCKETS")
        z = np.zeros(0, np.int64)
        return cls(np.zeros(0, np.uint32), z, z, z, z, z, z, np.zeros((0, b), np.int64), z, z, z)

    def _in(self, before: Totals) -> tuple[np.ndarray, np.ndarray]:
        """(position in before.ids, found there) of each of self.ids."""
        if not len(before.ids):
            return np.zeros(len(self.ids), np.int64), np.zeros(len(self.ids), bool)
        pos = np.minimum(np.searchsorted(before.ids, self.ids), len(before.ids) - 1)
        return pos, before.ids[pos] == self.ids

    def since(self, before: Totals) -> Delta:
        """What accumulated since ``before``, aligned with self.ids."""
        d = {name: getattr(self, name).copy() for name in self._SUMS}
        pos, seen = self._in(before)
        for name, a in d.items():
            a[seen] -= getattr(before, name)[pos[seen]]
        return Delta(**d)

    def hold(self, before: Totals, ready: np.ndarray) -> Totals:
        """These totals, except that ids not ``ready`` keep their values of
        ``before`` (or stay out): what a snapshot may write now."""
        if ready.all():
            return self
        pos, seen = self._in(before)
        seen &= ~ready
        keep = ready | seen
        fields = {}
        for name in ("count", "total", "min", "max", "dropped", "lost", "hist", "self_ns",
                     "self_offcpu_ns", "self_gil_ns"):
            a = getattr(self, name).copy()
            if seen.any():
                a[seen] = getattr(before, name)[pos[seen]]
            fields[name] = a[keep]
        return Totals(ids=self.ids[keep], **fields)


@dataclass
class Delta:
    """Aggregates accumulated between two reads, aligned with the later one's ids."""

    count: np.ndarray
    total: np.ndarray
    dropped: np.ndarray
    lost: np.ndarray
    hist: np.ndarray
    self_ns: np.ndarray
    self_offcpu_ns: np.ndarray
    self_gil_ns: np.ndarray


def read(program) -> Totals:
    """Sum the per-CPU values of the kernel's fstats map (and its spill map's)."""
    ids, a = program.fstats()  # a: (functions, cpus + 1)
    if not len(ids):
        return Totals.empty()
    # min_ns 0: no completed call in that CPU's value (entries start zeroed)
    timed = (a["count"] > 0) & (a["min_ns"] != 0)
    order = np.argsort(ids)
    big = np.iinfo(np.int64).max
    mins = np.where(timed, a["min_ns"], big).astype(np.int64).min(axis=1)
    return Totals(
        ids=ids[order],
        count=a["count"].sum(axis=1).astype(np.int64)[order],
        total=a["total_ns"].sum(axis=1).astype(np.int64)[order],
        min=np.where(mins == big, 0, mins)[order],
        max=a["max_ns"].max(axis=1).astype(np.int64)[order],
        dropped=a["dropped"].sum(axis=1).astype(np.int64)[order],
        lost=a["lost"].sum(axis=1).astype(np.int64)[order],
        hist=a["hist"].sum(axis=1).astype(np.int64)[order],
        self_ns=a["self_ns"].sum(axis=1).astype(np.int64)[order],
        self_offcpu_ns=a["self_offcpu_ns"].sum(axis=1).astype(np.int64)[order],
        self_gil_ns=a["self_gil_ns"].sum(axis=1).astype(np.int64)[order],
    )


def functions_batch(now: Totals, delta: Delta, functions: Functions, ts_ns: int,
                    user_dropped: dict[int, int] | None = None) -> pa.RecordBatch | None:
    """``functions`` rows for what happened between two reads (None if nothing):
    ``delta`` is ``now.since(before)``; ``user_dropped``: rows the controller
    dropped meanwhile (decisions the kernel applied late), per function id."""
    dropped = delta.dropped.copy()
    if user_dropped:
        pos = np.minimum(np.searchsorted(now.ids, list(user_dropped)), max(len(now.ids) - 1, 0))
        for p, (fid, n) in zip(pos.tolist(), user_dropped.items(), strict=True):
            if len(now.ids) and now.ids[p] == fid:
                dropped[p] += n
    sel = (delta.count > 0) | (dropped > 0) | (delta.lost > 0)
    if not sel.any():
        return None
    ids = now.ids[sel]
    function, file, line = functions.columns(ids)
    pids = functions.pids(ids)
    n = len(ids)
    b = delta.hist.shape[1]
    flat = pa.array(delta.hist[sel].reshape(-1))
    timed = now.count[sel] > now.lost[sel]  # min/max only exist once a call completed
    return pa.RecordBatch.from_arrays([
        pa.array(np.full(n, ts_ns, np.int64)),
        pa.array(pids),
        function, file, line,
        pa.array(delta.count[sel]),
        pa.array(delta.total[sel]),
        pa.array(now.min[sel], mask=~timed),
        pa.array(now.max[sel], mask=~timed),
        pa.array(dropped[sel]),
        pa.array(delta.lost[sel]),
        pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * b, b, dtype=np.int32)), flat),
        pa.array(delta.self_ns[sel]),
        pa.array(delta.self_offcpu_ns[sel]),
        pa.array(delta.self_gil_ns[sel]),
    ], names=_schema("functions").names)
