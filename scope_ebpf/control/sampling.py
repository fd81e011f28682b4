"""Adaptive per-function 1-in-k sampling that keeps call rows under a budget.

A few hot functions (a tight loop calling ``len``) can produce millions of rows a
second and drown the writer, while rare functions are the interesting ones. So
instead of one global rate, each function gets its own k: rare functions keep
every call (k=1) and only the hottest are thinned, by water-filling the budget.
"""

from __future__ import annotations

import math

BUDGET_FLOOR = 1000.0
"""rows/s that :meth:`Sampler.scale_budget` never goes below, so pressure never blinds us."""

HYSTERESIS = 1.5
"""A current k within this factor of the new one is kept, to stop k flapping every tick."""


def _water_level(rates: list[float], budget: float) -> float:
    """Largest T with ``sum(min(r, T)) <= budget``, or inf when everything fits."""
    ordered = sorted(rates)
    if math.fsum(ordered) <= budget:
        return math.inf
    below = 0.0  # sum of the rates that fit whole under the level
    n = len(ordered)
    for i, r in enumerate(ordered):
        level = (budget - below) / (n - i)
        if level < r:
            return level
        below += r
    return math.inf  # unreachable: the total exceeds the budget


def plan(
    rates: dict[int, float], budget: float, current: dict[int, int] | None = None
) -> dict[int, int]:
    """k >= 1 per function id so that ``sum(rate / k) <= budget``.

    ``rates`` are calls/second of the functions whose rows are kept. With the
    water level T (see :func:`_water_level`), functions with rate <= T keep every
    call and hotter ones get ``k = ceil(rate / T)``, so each contributes at most T.

    With ``current`` (the k in force), a function keeps its current k when it is
    within a factor :data:`HYSTERESIS` of the new one and the total still fits the
    budget: raising k is always affordable; lowering it is granted cheapest first.
    O(n log n).
    """
    if not budget > 0:
        raise ValueError(f"sampling budget must be > 0 rows/s, got {budget!r}")
    for fid, r in rates.items():
        if not r >= 0 or math.isinf(r):
            raise ValueError(f"rate of function {fid} must be finite and >= 0, got {r!r}")
    level = _water_level(list(rates.values()), budget)
    ks: dict[int, int] = {}
    for fid, r in rates.items():
        if r <= level:
            ks[fid] = 1
        else:
            # The tolerance stops float noise turning an exact ratio 2.0000000001 into 3.
            ks[fid] = max(1, math.ceil(r / level * (1 - 1e-12)))
    total = math.fsum(r / ks[fid] for fid, r in rates.items())
    if total > budget:  # float rounding only: thin the largest contributors a little more
        for fid in sorted(rates, key=lambda f: rates[f] / ks[f], reverse=True):
            total -= rates[fid] / ks[fid] - rates[fid] / (ks[fid] + 1)
            ks[fid] += 1
            if total <= budget:
                break

    if current:
        cheaper: list[tuple[float, int, int]] = []  # (extra rows/s, fid, k)
        for fid, new in ks.items():
            old = current.get(fid)
            if old is None or old < 1 or old == new or max(old, new) > HYSTERESIS * min(old, new):
                continue
            if old > new:
                total -= rates[fid] / new - rates[fid] / old
                ks[fid] = old
            else:
                cheaper.append((rates[fid] / old - rates[fid] / new, fid, old))
        for extra, fid, old in sorted(cheaper):
            if total + extra > budget:
                break
            total += extra
            ks[fid] = old
    return ks


class Sampler:
    """The k in force per function, re-planned from observed call counts.

    ``budget`` is rows/s; it can be scaled down under kernel buffer pressure or a
    CPU limit and back up, but never above the budget it was created with.
    """

    MIN_BUDGET = BUDGET_FLOOR

    def __init__(self, budget: float) -> None:
        if not budget > 0:
            raise ValueError(f"sampling budget must be > 0 rows/s, got {budget!r}")
        self.budget = float(budget)
        self.max_budget = float(budget)
        self.k: dict[int, int] = {}
        self.last_update_ns: int | None = None

    def forget(self, func_ids: list[int]) -> None:
        """Drop the decisions for functions of exited processes."""
        for fid in func_ids:
            self.k.pop(fid, None)

    def update(
        self, counts: dict[int, int], seconds: float, now_ns: int
    ) -> list[tuple[int, int, int, float]]:
        """Re-plan from ``counts`` (calls entered per function id, before sampling).

        Returns the changes ``(func_id, old_k, new_k, rate)`` sorted by id; a
        function not seen before counts as old k = 1. Functions absent from
        ``counts`` keep their k (they were idle and cost nothing).
        """
        if not seconds > 0:
            raise ValueError(f"update interval must be > 0 s, got {seconds!r}")
        rates = {fid: c / seconds for fid, c in counts.items()}
        current = {fid: self.k[fid] for fid in rates if fid in self.k}
        new = plan(rates, self.budget, current)
        changes = []
        for fid in sorted(new):
            old = self.k.get(fid, 1)
            if new[fid] != old:
                changes.append((fid, old, new[fid], rates[fid]))
            self.k[fid] = new[fid]
        self.last_update_ns = now_ns
        return changes

    def scale_budget(self, factor: float) -> float:
        """Multiply the budget by ``factor``, clamped to [BUDGET_FLOOR, initial budget].

        Returns the new budget. The floor only applies when scaling down from
        above it, so a budget created below the floor is never raised by a cut.
        """
        if not factor > 0 or math.isinf(factor):
            raise ValueError(f"budget factor must be finite and > 0, got {factor!r}")
        floor = min(BUDGET_FLOOR, self.budget)
        self.budget = min(self.max_budget, max(floor, self.budget * factor))
        return self.budget
