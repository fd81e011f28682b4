"""Call paths, kernel self time and off-CPU time: what a flame graph is made of.

The reference for a sampled flame graph is the exact per-path total of the
same run: in paths.py every function sits on one path, so the exact
per-function self times the kernel sums in `functions` are the exact
per-path totals, whatever rows sampling kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PY311, program, rows, scope

pytestmark = pytest.mark.kernel

CALLS = 200_000  # iterations of main's loop: 5 calls each, every path >= 200,000 calls


def _run(out: Path, *args: str, max_rate: str = "0") -> None:
    r = scope("run", "--max-rate", max_rate, "-o", str(out), "--", PY311,
              program("paths.py"), *args, timeout=600)
    assert r.returncode == 0, r.stderr


def _folded(out: Path) -> dict[str, int]:
    """The report's flame graph, as exported: path (function names) -> on-CPU ns."""
    r = scope("report", str(out), "-q", "--format", "folded")
    assert r.returncode == 0, r.stderr
    got: dict[str, int] = {}
    for line in r.stdout.splitlines():
        stack, w = line.rsplit(" ", 1)
        if "paths.py" in stack.rsplit(";", 1)[-1]:
            names = ";".join(f.split(" (", 1)[0] for f in stack.split(";"))
            got[names] = got.get(names, 0) + int(w)
    return got


def _exact(out: Path) -> dict[str, int]:
    """Exact on-CPU self time per function of paths.py, keyed by its one path."""
    paths = {"<module>": "<module>", "main": "<module>;main", "a": "<module>;main;a",
             "leaf_a": "<module>;main;a;leaf_a", "b": "<module>;main;b",
             "leaf_b": "<module>;main;b;leaf_b"}
    return {paths[f]: int(ns) for f, ns in rows(out, """
        SELECT function, sum(self_ns - self_offcpu_ns) FROM functions
        WHERE file LIKE '%paths.py' GROUP BY 1""")}


def _compare(got: dict[str, int], exact: dict[str, int]) -> dict[str, float]:
    """Relative error of every path above 1 % of the total."""
    total = sum(exact.values())
    assert set(got) <= set(exact), set(got) - set(exact)  # no orphans: every path is whole
    return {p: (got.get(p, 0) - ns) / ns for p, ns in exact.items() if ns > 0.01 * total}


def test_sampled_flame_graph_matches_the_exact_paths(tmp_path):
    """Unsampled, the flame graph is exact; sampled at ~10 % of the call rate,
    every path above 1 % of the total is within 5 % of its exact total."""
    full = tmp_path / "full"
    _run(full, "flat", str(CALLS))
    exact = _exact(full)
    assert _folded(full) == {p: ns for p, ns in exact.items() if ns > 0}
    (calls, seconds), = rows(full, """
        SELECT sum(weight), (max(end_ns) - min(start_ns)) / 1e9
        FROM calls WHERE function IN ('a', 'b', 'leaf_a', 'leaf_b')""")
    rate = calls / seconds

    sampled = tmp_path / "sampled"
    _run(sampled, "flat", str(CALLS), max_rate=str(int(rate / 8)))  # the sampled run is faster
    (kept, stood_for), = rows(sampled, """
        SELECT count(*), sum(weight) FROM calls WHERE function IN ('a', 'b', 'leaf_a', 'leaf_b')""")
    assert stood_for > 0 and kept / stood_for < 0.25, (kept, stood_for)  # it did sample
    # calls of 1 ms or more are never sampled: a rare slow call is not multiplied by k
    assert rows(sampled, "SELECT count(*) FROM calls WHERE duration_ns >= 1000000 "
                         "AND weight > 1") == [(0,)]
    err = _compare(_folded(sampled), _exact(sampled))
    print(f"rate {rate:,.0f} calls/s, kept {kept / stood_for:.1%} of the rows; errors "
          + ", ".join(f"{p.rsplit(';', 1)[-1]} {e:+.2%}" for p, e in err.items()))
    assert len(err) >= 5
    assert all(abs(e) < 0.05 for e in err.values()), err


def test_sleeping_is_off_cpu_and_spinning_is_not(tmp_path):
    out = tmp_path / "out"
    _run(out, "shape")
    sleeps = rows(out, """
        SELECT self_ns, self_offcpu_ns, offcpu_ns, duration_ns FROM calls
        WHERE function = 'sleeper'""")
    assert len(sleeps) == 5
    for self_ns, off, off_total, d in sleeps:
        assert 99_000_000 <= off <= self_ns <= d and off == off_total
        assert self_ns - off < 0.25 * self_ns  # time.sleep is a C call: all the sleep is its own
    spins = rows(out, "SELECT self_ns, self_offcpu_ns FROM calls WHERE function = 'spin'")
    assert len(spins) == 5 and all(0 <= off <= s for s, off in spins)
    (main_off, main_self_off), = rows(out, "SELECT offcpu_ns, self_offcpu_ns FROM calls "
                                           "WHERE function = 'main'")
    # main's off-CPU time is its children's plus its own
    (children,), = rows(out, "SELECT sum(offcpu_ns) FROM calls WHERE function IN "
                             "('sleeper', 'spin')")  # main's direct children
    assert main_off == main_self_off + children
    r = scope("report", str(out), "-q", "-o", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    text = scope("report", str(out), "--format", "html", "-o", str(tmp_path / "r2.html")).stdout
    hot = text.split("hot code:", 1)[1].split("\n\n", 1)[0]
    waiting = text.split("waiting code:", 1)[1].split("\n\n", 1)[0]
    assert hot.splitlines()[3].split()[0] == "work"      # spin's loop is the on-CPU work
    assert waiting.splitlines()[3].split()[0] == "sleeper"
