"""The counters table: every counter of the session, over time.

A stopped session's last snapshot equals its session table's counters (one
definition of each: Session._counts); the SIGKILL case is in test_daemon.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PY311, rows, scope

pytestmark = pytest.mark.kernel


def test_the_last_snapshot_is_the_session_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = scope("run", "--probes", "gc", "-o", str(out), "--", PY311, "-c",
              "import gc\nfor _ in range(3): gc.collect()")
    assert r.returncode == 0, r.stderr
    snap = dict(rows(out, "SELECT key, count FROM counters WHERE ts_ns = "
                     "(SELECT max(ts_ns) FROM counters)"))
    final = dict(rows(out, "SELECT key, count FROM session WHERE count IS NOT NULL"))
    assert snap == final
    assert snap["kernel.gc"] >= 3 and snap["rows.gc"] == snap["kernel.gc"]
