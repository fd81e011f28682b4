"""Budgets per daemon selector and per process, enforced in the kernel.

Each selector with calls is a budget group (its index + 1, in the upper bits
of a target's probe mask, see TARGET_GROUP_SHIFT). The group and each of its
processes have a breaker (probe hits per 100 ms window) and a row guard (call
rows per 100 ms window) of their own in BPF: a noisy selector, or a noisy
process within one, is tripped or sampled alone while the others keep every
call; a tripped budget re-admits on its own after BUDGET_COOLDOWN_NS. The
host-wide breaker (safety.Breaker) stays as the last resort that detaches,
with HOST_FACTOR times the budgets' sum: a budget may admit its 100 ms worth
within one 10 ms window of the host's, so only what budgets cannot bound
trips it.
This module writes the limits and reads back what the kernel decided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import events
from ..maps import u32

_BUDGET = events.dtypes()["budget"]
MAX_GROUPS = events.const("MAX_GROUPS")
SHIFT = events.const("TARGET_GROUP_SHIFT")
_HIT_WINDOW_S = events.const("BUDGET_WINDOW_NS") / 1e9
_ROW_WINDOW_S = events.const("GUARD_WINDOW_NS") / 1e9
HOST_FACTOR = 10


@dataclass(frozen=True)
class Rates:
    """Per second: probe hits that trip a breaker, call rows before sampling
    (0 = none), for the selector as a whole and for each of its processes."""

    breaker_rate: float
    max_rate: float
    process_breaker_rate: float
    process_max_rate: float


def group_mask(group: int) -> int:
    """The bits of a target's mask that name its budget group (0: none)."""
    if not 0 <= group < MAX_GROUPS:
        raise ValueError(f"budget group {group} out of range")
    return group << SHIFT


class Budgets:
    """The kernel's per-group and per-process budgets of one session."""

    def __init__(self, program) -> None:
        self.program = program
        self.rates: dict[int, Rates] = {}
        self.trips: dict[int, int] = {}           # group -> its trips (and its processes')
        self._proc_trips: dict[int, int] = {}     # pid -> ...
        self._gone: set[int] = set()              # exited: dropped after the next poll
        self.totals = {"trips": 0, "skipped": 0, "sampled": 0}

    def configure(self, rates: dict[int, Rates]) -> None:
        """Set every group's limits (groups not named are turned off); processes
        take their group's new per-process limits from their next call."""
        m = self.program.maps["budgets"]
        for group in range(1, MAX_GROUPS):
            old = self.rates.get(group)
            new = rates.get(group)
            if old == new:
                continue
            rec = np.frombuffer(m.lookup(u32(group)), _BUDGET)[0].copy()
            r = new or Rates(0, 0, 0, 0)
            rec["hit_limit"] = _limit(r.breaker_rate, _HIT_WINDOW_S)
            rec["row_limit"] = _limit(r.max_rate, _ROW_WINDOW_S)
            rec["proc_hit_limit"] = _limit(r.process_breaker_rate, _HIT_WINDOW_S)
            rec["proc_row_limit"] = _limit(r.process_max_rate, _ROW_WINDOW_S)
            rec["group"] = group
            m.update(u32(group), rec.tobytes())
        pm = self.program.maps["proc_budgets"]
        changed = {g for g in set(rates) | set(self.rates) if rates.get(g) != self.rates.get(g)}
        if changed and self.rates:
            keys, values, n = pm.dump()
            recs = np.frombuffer(values, _BUDGET, count=n)
            for key, rec in zip(np.frombuffer(keys, "<u4", count=n), recs, strict=True):
                if int(rec["group"]) in changed:
                    pm.delete(u32(int(key)))  # made again with the new limits
        self.rates = dict(rates)

    def poll(self) -> list[dict]:
        """Trips since the last poll, as breaker rows (selector, and the pid for a
        process's own budget, exited ones' too); updates ``totals``."""
        try:
            return self._poll() if self.rates else []
        finally:
            self._drop_gone()

    def _poll(self) -> list[dict]:
        _keys, values, n = self.program.maps["budgets"].dump()
        totals = {"trips": 0, "skipped": 0, "sampled": 0}
        grew: dict[int, int] = {}
        for rec in np.frombuffer(values, _BUDGET, count=n):
            g = int(rec["group"])
            if not g:
                continue
            for k in totals:
                totals[k] += int(rec[k])
            t = int(rec["trips"])
            if t > self.trips.get(g, 0):
                grew[g] = t - self.trips.get(g, 0)
            self.trips[g] = t
        self.totals = totals
        rows: list[dict] = []
        if not grew:
            return rows
        own: dict[int, int] = {}
        keys, values, n = self.program.maps["proc_budgets"].dump()
        for pid, rec in zip(np.frombuffer(keys, "<u4", count=n).tolist(),
                            np.frombuffer(values, _BUDGET, count=n), strict=True):
            g, t = int(rec["group"]), int(rec["trips"])
            d = t - self._proc_trips.get(pid, 0)
            self._proc_trips[pid] = t
            if d > 0:
                rows.append(self._row(g, pid, d, self.rates.get(g)))
                own[g] = own.get(g, 0) + d
        for g, d in grew.items():
            if d > own.get(g, 0):
                rows.append(self._row(g, None, d - own.get(g, 0), self.rates.get(g)))
        return rows

    @staticmethod
    def _row(group: int, pid: int | None, trips: int, r: Rates | None) -> dict:
        rate = (r.process_breaker_rate if pid is not None else r.breaker_rate) if r else None
        who = f"process {pid} of selector {group}" if pid is not None else f"selector {group}"
        return {"state": "open", "limit": rate or None, "selector": group, "pid": pid,
                "reason": f"{who}: probe hits over its breaker_rate ({trips} trip(s)); "
                          "re-admitted by the kernel after 1 s"}

    def forget(self, pids: set[int]) -> None:
        """Exited processes: their kernel budgets go once the next poll has read
        their last trips (the kernel keeps them past the exit for that)."""
        self._gone |= pids

    def _drop_gone(self) -> None:
        if not self._gone:
            return
        self.program.maps["proc_budgets"].delete_many([u32(pid) for pid in self._gone])
        for pid in self._gone:
            self._proc_trips.pop(pid, None)
        self._gone = set()


def _limit(rate: float, window_s: float) -> int:
    return math.ceil(rate * window_s) if rate > 0 else 0
