"""The benchmark harness still works (timings are checked by `make bench`, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench.py"
KEYS = {"overhead_ns_per_call", "ratio_vs_floor", "ratio_vs_bcc", "controller_ns_per_record",
        "lost_records", "bytes_per_call_row", "controller_peak_rss_mb", "attach_seconds",
        "machine"}


def test_quick_bench_writes_every_key(tmp_path):
    out = tmp_path / "results.json"
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert KEYS <= set(res)
    assert set(res["overhead_ns_per_call"]) == {"baseline", "floor", "scope", "bcc"}
    assert res["lost_records"] == 0
    assert res["calls_per_run"] > 100_000
    # every variant really traced: each costs more than the untraced baseline
    assert all(res["overhead_ns_per_call"][v] > 50 for v in ("floor", "scope", "bcc"))
    assert "scope / floor" in r.stdout and "attach seconds" in r.stdout
