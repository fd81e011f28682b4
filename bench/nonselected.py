"""What a Python process the daemon does not select pays, for `make bench` or alone.

The daemon attaches its probes per interpreter file: once one process of
/usr/bin/python3.11 is selected, every process of that file hits them (gc,
imports, audit uprobes; the sched tracepoint and the stack sampler's timer
run for every process on the host), and the kernel drops what is not a target
after one map lookup. This runs a workload that leans on exactly those paths
(collections, imports, audit events, context switches, CPU) in a process that
no selector matches, with no daemon and then with one running the default
probe sets (stacks, gc, sched, imports, audit) for a selected sleeper of the
same interpreter, interleaved, and prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = "/usr/bin/python3.11"
SCOPE = str(Path(sys.executable).with_name("scope-ebpf"))
WORKLOAD = r"""
import gc, importlib, json, os, sys, time, tempfile
d = tempfile.mkdtemp()
sys.path.insert(0, d)
for i in range(500):
    with open(os.path.join(d, f"m{i}.py"), "w") as f:
        f.write("X = 1\n")
out = {}
t0 = time.perf_counter()
for i in range(500):
    importlib.import_module(f"m{i}")      # imports (and their audit events)
out["import"] = (time.perf_counter() - t0) / 500
t0 = time.perf_counter()
for _ in range(50000):
    gc.collect(0)                          # collections: two uprobe hits each
out["gc"] = (time.perf_counter() - t0) / 50000
t0 = time.perf_counter()
for _ in range(50000):
    time.sleep(0.00001)                    # context switches: the sched tracepoint
out["switch"] = (time.perf_counter() - t0) / 50000
t0 = time.perf_counter()
x = 0
for i in range(10_000_000):                # CPU: the sampler's timer, a non-target
    x += i
out["cpu"] = time.perf_counter() - t0
print(json.dumps(out))
"""
CONFIG = """
host = "bench"
[output]
root = "{root}"
[[select]]
exe = "*python3.11"
cmdline = "re:scope-bench-selected"
"""


def _workload() -> dict[str, float]:
    r = subprocess.run([PY, "-c", WORKLOAD, "scope-bench-not-selected"], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout)


def _startups(n: int = 20) -> float:
    """Seconds per start of a Python that does nothing: what adoption at exec
    (the entry probe, then tracing until the daemon has decided) adds to it."""
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run([PY, "-c", "pass", "scope-bench-not-selected"], check=True)
    return (time.perf_counter() - t0) / n


def bench_nonselected(runs: int = 5) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="scope-bench-nonsel-"))
    cfg = tmp / "config.toml"
    cfg.write_text(CONFIG.format(root=tmp / "out"))
    cfg.chmod(0o600)
    times: dict[str, list[dict]] = {"no_daemon": [], "daemon": []}
    sleeper = subprocess.Popen([PY, "-c", "import time; time.sleep(3600)",
                                "scope-bench-selected"])
    try:
        for i in range(runs):
            times["no_daemon"].append(dict(_workload(), start=_startups()))
            d = subprocess.Popen([SCOPE, "daemon", "-c", str(cfg)], stderr=subprocess.PIPE,
                                 text=True)
            for line in d.stderr:  # attached to the sleeper's interpreter file
                if "tracing process" in line:
                    break
            times["daemon"].append(dict(_workload(), start=_startups()))
            d.terminate()
            d.wait(timeout=60)
            print(f"  run {i + 1}/{runs}: no daemon {times['no_daemon'][-1]}, "
                  f"daemon {times['daemon'][-1]}", file=sys.stderr)
    finally:
        sleeper.kill()
        sleeper.wait()
    out: dict = {"nonselected_runs": runs}
    for k in ("import", "gc", "switch", "start"):  # per event: the added ns
        base = statistics.median(t[k] for t in times["no_daemon"])
        with_d = statistics.median(t[k] for t in times["daemon"])
        out[f"nonselected_{k}_ns"] = {"untraced": base * 1e9, "added": (with_d - base) * 1e9}
    cpu = [statistics.median(t["cpu"] for t in times[m]) for m in ("no_daemon", "daemon")]
    out["nonselected_cpu_slowdown"] = cpu[1] / cpu[0]
    # how long a process ran adopted before the daemon's decision reached the kernel
    import duckdb

    c = dict(duckdb.sql(f"""SELECT key, sum(count) FROM read_parquet(
        '{tmp / "out"}/session/**/*.parquet', union_by_name=true)
        WHERE key LIKE 'adopt.%' GROUP BY key""").fetchall())
    if c.get("adopt.adopted"):
        out["adopt_decide_ms"] = {"mean": c["adopt.decide_ns_total"] / c["adopt.adopted"] / 1e6,
                                  "adopted": int(c["adopt.adopted"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    r = bench_nonselected(a.runs)
    print(json.dumps(r, indent=2))
    print_figures(r)


def print_figures(r: dict) -> None:
    print("\na process no selector matches, under the daemon (default probe sets):")
    for k, what in (("import", "import"), ("gc", "gen-0 collection"),
                    ("switch", "sleep (two context switches)"),
                    ("start", "start-up (python -c pass)")):
        v = r[f"nonselected_{k}_ns"]
        print(f"  {what:<30} {v['untraced']:>10,.0f} ns untraced, {v['added']:>+8,.0f} ns")
    print(f"  CPU-bound loop                 {r['nonselected_cpu_slowdown']:.3f}x")
    if "adopt_decide_ms" in r:
        a = r["adopt_decide_ms"]
        print(f"  adopted at exec until decided  {a['mean']:.1f} ms on average "
              f"({a['adopted']} processes)")


if __name__ == "__main__":
    main()
