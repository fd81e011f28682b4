"""Exactness on real code, on every CPython: counts against cProfile, and the
`functions` table against the rows (nothing dropped unseen)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PY311, program, rows, scope, session_count

pytestmark = pytest.mark.kernel

def _functions_account_for_every_call(out: Path) -> None:
    """Per function: calls = completed calls rows + dropped + lost; no nameless rows."""
    assert rows(out, "SELECT count(*) FROM functions WHERE function IS NULL OR pid = 0 "
                     "OR line IS NULL OR line < 0") == [(0,)]
    bad = rows(out, """
        WITH f AS (SELECT pid, function, file, line, sum(calls) calls, sum(dropped) dropped,
                          sum(lost) lost FROM functions GROUP BY ALL),
             c AS (SELECT pid, function, file, line, count(*) n FROM calls
                   WHERE duration_ns IS NOT NULL GROUP BY ALL)
        SELECT f.*, coalesce(c.n, 0) FROM f FULL JOIN c USING (pid, function, file, line)
        WHERE coalesce(f.calls, 0) <> coalesce(c.n, 0) + coalesce(f.dropped, 0)
                                      + coalesce(f.lost, 0)""")
    assert not bad, bad


def test_functions_account_for_sampled_filtered_and_too_deep_calls(tmp_path):
    """Sampling, a matcher and recursion past the shadow stack: every call is in
    `functions`, as a row, dropped or lost, and the summary counts the lost ones."""
    out = tmp_path / "out"
    r = scope("run", "-o", str(out), "--max-rate", "20000", "--exclude", "*:leaf", "--",
              PY311, program("deep.py"), "1500", "3")
    assert r.returncode == 0, r.stderr
    _functions_account_for_every_call(out)
    # down(1500) three times under <module> and main: depths 2..1502; frames at depth
    # 1024 and deeper (479 a time) have no shadow frame: counted at entry, lost
    assert rows(out, "SELECT sum(calls), sum(lost) FROM functions WHERE function = 'down'") \
        == [(3 * 1501, 3 * 479)]
    assert rows(out, "SELECT (SELECT count(*) FROM calls WHERE function = 'down') + "
                     "(SELECT sum(dropped) FROM functions WHERE function = 'down'), "
                     "(SELECT max(depth) FROM calls WHERE function = 'down')") \
        == [(3 * 1022, 1023)]
    assert session_count(out, "kernel.too_deep") == 3 * 479
    assert "lost 1,437" in r.stderr and "deeper than the shadow stack" in r.stderr
    # leaf is excluded: counted, never a row
    assert rows(out, "SELECT sum(calls), sum(dropped) FROM functions WHERE function = 'leaf'") \
        == [(200_000, 200_000)]
    # hot is sampled: the weights estimate its calls without bias (within 3 %)
    (calls, dropped, weighted), = rows(out, """
        SELECT (SELECT sum(calls) FROM functions WHERE function = 'hot'),
               (SELECT sum(dropped) FROM functions WHERE function = 'hot'),
               (SELECT sum(weight) FROM calls WHERE function = 'hot')""")
    assert calls == 300_000 and dropped > 100_000
    assert abs(weighted - calls) / calls < 0.03
