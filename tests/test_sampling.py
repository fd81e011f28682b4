"""Water-filling 1-in-k sampling: exact small cases, hysteresis, scale."""

from __future__ import annotations

import math
import random
import time

import pytest

from scope_ebpf.control.sampling import BUDGET_FLOOR, Sampler, plan


def _rows(rates: dict[int, float], ks: dict[int, int]) -> float:
    return sum(r / ks[f] for f, r in rates.items())


def test_brief_example() -> None:
    rates = {1: 1_000_000.0, 2: 100.0, 3: 50_000.0}
    ks = plan(rates, 20_000)
    # Level T = (20000 - 100) / 2 = 9950: k = ceil(r / 9950).
    assert ks == {1: 101, 2: 1, 3: 6}
    assert _rows(rates, ks) <= 20_000
    assert ks[1] >= ks[3]


def test_exact_fill() -> None:
    rates = {1: 1000.0, 2: 3000.0, 3: 9000.0}
    # T = (4000 - 1000) / 2 = 1500: 1000 + 3000/2 + 9000/6 == 4000 exactly.
    assert plan(rates, 4000) == {1: 1, 2: 2, 3: 6}
    assert plan({1: 30_000.0, 2: 30_000.0}, 30_000) == {1: 2, 2: 2}


def test_under_budget_zero_and_empty() -> None:
    assert plan({1: 10.0, 2: 0.0}, 100) == {1: 1, 2: 1}
    assert plan({1: 0.0}, 1) == {1: 1}
    assert plan({}, 1) == {}


@pytest.mark.parametrize("budget", [0, -5, math.nan])
def test_bad_budget(budget: float) -> None:
    with pytest.raises(ValueError, match="budget must be > 0"):
        plan({1: 1.0}, budget)


def test_bad_rate() -> None:
    with pytest.raises(ValueError, match="rate of function 7"):
        plan({7: -1.0}, 10)


def test_hysteresis_keeps_close_k_when_affordable() -> None:
    rates = {1: 1000.0, 2: 3000.0, 3: 9000.0}
    # New plan is {2: 2, 3: 6}; 3 is within 1.5x of 2 (and costs less), 5 is within
    # 1.5x of 6 and its extra 1800 - 1500 = 300 rows/s fit under 4000.
    assert plan(rates, 4000, {2: 3, 3: 5}) == {1: 1, 2: 3, 3: 5}
    # Too far apart (4 vs 2, 3 vs 6): the new k wins.
    assert plan(rates, 4000, {2: 4, 3: 3}) == {1: 1, 2: 2, 3: 6}


def test_hysteresis_respects_budget() -> None:
    rates = {1: 9000.0, 2: 9000.0}
    assert plan(rates, 3000) == {1: 6, 2: 6}  # exactly full: no slack
    assert plan(rates, 3000, {1: 5, 2: 5}) == {1: 6, 2: 6}
    # T = 1650, k = 6 each (3000 rows/s): 300 of slack buys back exactly one k=5.
    assert plan(rates, 3300, {1: 5, 2: 5}) == {1: 5, 2: 6}


def test_random_properties() -> None:
    rng = random.Random(7)
    for _ in range(200):
        rates = {i: rng.paretovariate(0.8) * rng.choice([1, 100, 10_000]) for i in range(50)}
        budget = rng.uniform(1, 2 * sum(rates.values()))
        ks = plan(rates, budget)
        assert _rows(rates, ks) <= budget
        assert all(k >= 1 for k in ks.values())
        order = sorted(rates, key=rates.__getitem__)
        assert [ks[f] for f in order] == sorted(ks[f] for f in order)  # hotter never less sampled
        again = plan(rates, budget, {f: k + (k > 2) for f, k in ks.items()})
        assert _rows(rates, again) <= budget


def test_large_n_is_fast() -> None:
    rng = random.Random(1)
    rates = {i: rng.paretovariate(1.0) * 10 for i in range(100_000)}
    start = time.perf_counter()
    ks = plan(rates, 50_000)
    plan(rates, 50_000, ks)
    assert time.perf_counter() - start < 0.4  # two plans, < 200 ms each
    assert _rows(rates, ks) <= 50_000


def test_sampler_update() -> None:
    s = Sampler(4000)
    changes = s.update({1: 2000, 2: 6000, 3: 18000}, 2.0, now_ns=5)
    assert changes == [(2, 1, 2, 3000.0), (3, 1, 6, 9000.0)]
    assert s.k == {1: 1, 2: 2, 3: 6}
    assert s.last_update_ns == 5
    # 3 is idle this tick (absent): it keeps k=6; 2 is now alone and fits.
    assert s.update({2: 3000}, 1.0, now_ns=6) == [(2, 2, 1, 3000.0)]
    assert s.k == {1: 1, 2: 1, 3: 6}
    assert s.update({}, 1.0, now_ns=7) == []
    with pytest.raises(ValueError, match="interval"):
        s.update({1: 1}, 0.0, now_ns=8)


def test_sampler_scale_budget() -> None:
    s = Sampler(10_000)
    assert s.scale_budget(0.5) == 5000
    assert s.scale_budget(0.01) == BUDGET_FLOOR == Sampler.MIN_BUDGET
    assert s.scale_budget(100) == 10_000  # never above the configured budget
    small = Sampler(500)
    assert small.scale_budget(0.5) == 500  # already below the floor: not cut further
    with pytest.raises(ValueError):
        s.scale_budget(0)
