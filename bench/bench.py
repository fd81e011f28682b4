"""`make bench`: scope-ebpf against the uprobe floor and bcc's pythoncalls.

Variants, run interleaved, each timing the same fully traced section of
bench/workload.py on Debian's python3.11 under the same profile hook:

  baseline  untraced
  floor     BPF programs that do nothing, on function__entry/function__return
  scope     `scope-ebpf run` streaming every call to Parquet
  bcc       Debian's `pythoncalls-bpfcc -L` (bcc's ucalls for Python)

and, on the sid root's interpreters (`make interpreters`), untraced against
`scope-ebpf run` for 3.13 and 3.14 (eval mode: plain uprobes on the eval
function, perf trampoline on) and 3.15 (native probes): the eval mode's
overhead per call must stay within 1.5x the native one.

Prints a table and writes bench/results.json. `--quick` is a sub-minute run
the test suite uses to check that the harness works; its timings mean little.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
WORKLOAD = str(HERE / "workload.py")
PY = "/usr/bin/python3.11"
SCOPE = str(Path(sys.executable).parent / "scope-ebpf")
TARGETS = {"ratio_vs_floor": 1.25, "controller_ns_per_record": 300, "bytes_per_call_row": 10,
           "controller_peak_rss_mb": 150, "attach_seconds": 1.5, "detach_seconds": 0.5,
           "eval_vs_native": 1.5}
SID = HERE.parent / ".interpreters" / "sid"
VERSIONS = ("3.13", "3.14", "3.15")

sys.path.insert(0, str(HERE.parent))
from scope_ebpf import usdt  # noqa: E402
from scope_ebpf.query import connect  # noqa: E402


def _entry_probe():
    return next(p for p in usdt.read_probes(PY) if p.name == "function__entry")


def _workload(size: int, wait: bool) -> list[str]:
    args = [PY, WORKLOAD, str(size)]
    return args + [hex(_entry_probe().semaphore_addr)] if wait else args


def _result(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def run_baseline(size: int) -> dict:
    r = subprocess.run(_workload(size, False), capture_output=True, text=True, check=True)
    return _result(r.stdout)


class Floor:
    """Empty programs on the same probes: the cost of the traps themselves."""

    def __init__(self) -> None:
        from bcc import BPF

        from scope_ebpf.attach import UprobeLink

        self.bpf = BPF(text=b"int noop(struct pt_regs *ctx) { return 0; }")
        fd = self.bpf.load_func(b"noop", BPF.KPROBE).fd
        probes = [p for p in usdt.read_probes(PY)
                  if p.name in ("function__entry", "function__return")]
        self.links = [UprobeLink(fd, p.path, p.offset, p.semaphore_offset) for p in probes]

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.bpf.cleanup()


def run_floor(size: int) -> dict:
    floor = Floor()
    try:
        r = subprocess.run(_workload(size, True), capture_output=True, text=True, check=True)
    finally:
        floor.close()
    return _result(r.stdout)


def run_scope(size: int, out: Path, watch_rss: bool = False, repeat_s: float = 0) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    rss: list[int] = []
    t0 = time.time_ns()
    p = subprocess.Popen([SCOPE, "run", "-o", str(out), "--max-rate", "0", "--breaker-rate",
                          "0", "--no-hook", "--", *_workload(size, True),
                          *([str(repeat_s)] if repeat_s else [])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if watch_rss:
        def sample() -> None:
            proc = psutil.Process(p.pid)
            while p.poll() is None:
                try:
                    rss.append(proc.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(1)
        threading.Thread(target=sample, daemon=True).start()
    stdout, stderr = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"scope-ebpf failed: {stderr}")
    res = _result(stdout)
    con = connect(out)
    try:
        s = dict(con.execute("SELECT key, count FROM session WHERE count IS NOT NULL").fetchall())
    finally:
        con.close()
    calls_bytes = sum(f.stat().st_size for f in (out / "calls").glob("*.parquet"))
    records = sum(v for k, v in s.items() if k.startswith("rows."))
    res.update(
        attach_seconds=(res["start_ns"] - t0) / 1e9,
        detach_seconds=s["detach_ns"] / 1e9,
        records=records,
        calls_rows=s["rows.calls"],
        lost=sum(v for k, v in s.items() if k.startswith("kernel.") and k.endswith("_lost")),
        tracing_cpu_ns=s["tracing_cpu_ns"],
        peak_rss_mb=s["controller_peak_rss_bytes"] / 2**20,
        bytes_per_call_row=calls_bytes / max(s["rows.calls"], 1),
        rss_series_mb=[x / 2**20 for x in rss],
    )
    return res


def run_bcc(size: int) -> dict:
    w = subprocess.Popen([PY, WORKLOAD, str(size), "stdin"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    # the Debian command is a wrapper around the real tool: own its process group
    tool = subprocess.Popen(["pythoncalls-bpfcc", "-L", str(w.pid)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in tool.stdout:  # "Tracing calls in process ..." once attached
            if line.startswith("Tracing"):
                break
        stdout, _ = w.communicate("go\n", timeout=600)
        if tool.poll() is not None:  # it died (and may have left the semaphore set)
            raise SystemExit("pythoncalls-bpfcc failed (another tracer on the same probes?): "
                             + tool.stderr.read().strip().splitlines()[-1])
    finally:
        os.killpg(tool.pid, signal.SIGINT)
        try:
            tool.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(tool.pid, signal.SIGKILL)
            tool.wait()
    return _result(stdout)


def _sid_workload(version: str, size: int, *extra: str) -> list[str]:
    return [f"python{version}", "/tmp/scope-bench/workload.py", str(size), *extra]


def run_version(version: str, size: int, out: Path | None) -> dict:
    """One run of the workload on a sid interpreter: untraced (out None) or traced."""
    if out is None:
        argv = ["chroot", str(SID), *_sid_workload(version, size)]
    else:
        shutil.rmtree(out, ignore_errors=True)
        argv = [SCOPE, "run", "--root", str(SID), "-o", str(out), "--max-rate", "0",
                "--breaker-rate", "0", "--", *_sid_workload(version, size)]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"python{version} workload failed: {r.stderr.strip()}")
    res = _result(r.stdout)
    if out is not None:
        con = connect(out)
        try:
            s = dict(con.execute("SELECT key, count FROM session WHERE count IS NOT NULL")
                     .fetchall())
        finally:
            con.close()
        res["lost"] = sum(v for k, v in s.items() if k.startswith("kernel.")
                          and k[7:] in _losses())
        res["calls"] = s.get("rows.calls", 0)
    return res


def _losses() -> dict[str, str]:
    from scope_ebpf.events import LOSSES
    return LOSSES


def bench_versions(runs: int, size: int) -> dict:
    """Overhead per call of scope-ebpf on 3.13/3.14 (eval mode) and 3.15 (native)."""
    dest = SID / "tmp" / "scope-bench"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(WORKLOAD, dest / "workload.py")
    tmp = Path(tempfile.mkdtemp(prefix="scope-bench-v-"))
    out: dict = {}
    try:
        calls = {v: json.loads(subprocess.run(
            ["chroot", str(SID), *_sid_workload(v, size, "count")], capture_output=True,
            text=True, check=True).stdout)["calls"] for v in VERSIONS}
        times: dict[str, dict[str, list[float]]] = {v: {"baseline": [], "scope": []}
                                                    for v in VERSIONS}
        lost = 0
        for i in range(runs):
            for v in VERSIONS:
                times[v]["baseline"].append(run_version(v, size, None)["elapsed_s"])
                s = run_version(v, size, tmp / f"{v}-{i}")
                times[v]["scope"].append(s["elapsed_s"])
                lost += s["lost"]
            print(f"  versions run {i + 1}/{runs}: " + ", ".join(
                f"{v} {t['baseline'][-1]:.3f}/{t['scope'][-1]:.3f} s" for v, t in times.items()),
                file=sys.stderr)
        for v in VERSIONS:
            b, s = statistics.median(times[v]["baseline"]), statistics.median(times[v]["scope"])
            out[v] = {"calls_per_run": calls[v], "baseline_s": b, "scope_s": s,
                      "overhead_ns_per_call": (s - b) * 1e9 / calls[v]}
        native = out["3.15"]["overhead_ns_per_call"]
        return {"versions": out, "versions_lost_records": lost,
                "eval_vs_native": max(out[v]["overhead_ns_per_call"] for v in ("3.13", "3.14"))
                / native}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small run of each variant")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=27, help="fib depth of the workload")
    ap.add_argument("--soak-seconds", type=float, default=60,
                    help="length of the RSS-flatness run (0 to skip)")
    ap.add_argument("-o", "--output", default=str(HERE / "results.json"))
    args = ap.parse_args()
    if args.quick:
        args.runs, args.size, args.soak_seconds = 1, 18, 0
    if shutil.which("pythoncalls-bpfcc") is None:
        raise SystemExit("pythoncalls-bpfcc missing: run make setup")

    calls = json.loads(subprocess.run([PY, WORKLOAD, str(args.size), "count"],
                                      capture_output=True, text=True, check=True).stdout)["calls"]
    tmp = Path(tempfile.mkdtemp(prefix="scope-bench-"))
    times: dict[str, list[float]] = {v: [] for v in ("baseline", "floor", "scope", "bcc")}
    scope_runs: list[dict] = []
    print(f"workload: {calls:,} Python calls per run, {args.runs} interleaved runs per variant",
          file=sys.stderr)
    for i in range(args.runs):
        times["baseline"].append(run_baseline(args.size)["elapsed_s"])
        times["floor"].append(run_floor(args.size)["elapsed_s"])
        s = run_scope(args.size, tmp / f"scope-{i}")
        scope_runs.append(s)
        times["scope"].append(s["elapsed_s"])
        times["bcc"].append(run_bcc(args.size)["elapsed_s"])
        print(f"  run {i + 1}/{args.runs}: " + ", ".join(
            f"{k} {v[-1]:.3f} s" for k, v in times.items()), file=sys.stderr)

    med = {k: statistics.median(v) for k, v in times.items()}
    overhead = {k: (med[k] - med["baseline"]) * 1e9 / calls for k in med if k != "baseline"}
    overhead["baseline"] = 0.0
    records = sum(r["records"] for r in scope_runs)
    results = {
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "cpu": _cpu_model(), "python": PY, "python_version": "3.11"},
        "calls_per_run": calls,
        "runs": args.runs,
        "quick": args.quick,
        "elapsed_s_median": med,
        "overhead_ns_per_call": overhead,
        "ratio_vs_floor": overhead["scope"] / overhead["floor"],
        "ratio_vs_bcc": overhead["scope"] / overhead["bcc"],
        "controller_ns_per_record": sum(r["tracing_cpu_ns"] for r in scope_runs) / records,
        "lost_records": sum(r["lost"] for r in scope_runs),
        "bytes_per_call_row": statistics.median(r["bytes_per_call_row"] for r in scope_runs),
        "controller_peak_rss_mb": max(r["peak_rss_mb"] for r in scope_runs),
        "attach_seconds": statistics.median(r["attach_seconds"] for r in scope_runs),
        "detach_seconds": statistics.median(r["detach_seconds"] for r in scope_runs),
    }
    if (SID / ".scope-interpreters").exists():
        results.update(bench_versions(args.runs, args.size - 2))
    if not args.quick:  # stack sampling: BPF ns per sample, slowdown at 99 Hz (bench/stacks.py)
        from stacks import bench_stacks

        results.update(bench_stacks(runs=args.runs, work=3000))
        # what a process no daemon selector matches pays (bench/nonselected.py)
        from nonselected import bench_nonselected

        results.update(bench_nonselected(runs=args.runs))
    if args.soak_seconds > 0:
        results.update(_soak(args.soak_seconds, tmp / "soak"))
    shutil.rmtree(tmp, ignore_errors=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    _print(results)


def _soak(seconds: float, out: Path) -> dict:
    """A run of `seconds` for the controller's memory: flat after warm-up?"""
    r = run_scope(22, out, watch_rss=True, repeat_s=seconds)
    series = r["rss_series_mb"]
    warm = series[min(5, len(series) - 1):] if series else [0.0]
    return {"soak_seconds": len(series), "soak_rss_mb": series,
            "soak_rss_growth_mb": max(warm) - warm[0], "soak_records": r["records"],
            "soak_lost_records": r["lost"], "soak_peak_rss_mb": r["peak_rss_mb"],
            "soak_controller_ns_per_record": r["tracing_cpu_ns"] / max(r["records"], 1)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _print(r: dict) -> None:
    o = r["overhead_ns_per_call"]
    e = r["elapsed_s_median"]
    print(f"\n{'variant':<10}{'median s':>10}{'overhead ns/call':>18}")
    for k in ("baseline", "floor", "scope", "bcc"):
        print(f"{k:<10}{e[k]:>10.3f}{o[k]:>18.0f}")
    print()
    rows = [
        ("scope / floor", r["ratio_vs_floor"], "ratio_vs_floor", "<="),
        ("scope / bcc", r["ratio_vs_bcc"], None, "<"),
        ("controller ns/record", r["controller_ns_per_record"], "controller_ns_per_record", "<="),
        ("lost records", r["lost_records"], None, "=="),
        ("bytes per calls row", r["bytes_per_call_row"], "bytes_per_call_row", "<="),
        ("controller peak RSS MB", r["controller_peak_rss_mb"], "controller_peak_rss_mb", "<="),
        ("attach seconds", r["attach_seconds"], "attach_seconds", "<="),
        ("detach seconds (every probe, at the end)", r["detach_seconds"], "detach_seconds", "<="),
    ]
    for name, value, key, op in rows:
        target = TARGETS.get(key) if key else (1.0 if op == "<" else 0)
        ok = {"<=": value <= target, "<": value < target, "==": value == target}[op]
        print(f"{name:<24}{value:>10.2f}   target {op} {target:<6} {'ok' if ok else 'MISSED'}")
    if "versions" in r:
        print(f"\n{'interpreter':<22}{'untraced s':>11}{'traced s':>10}{'overhead ns/call':>18}")
        for v, x in r["versions"].items():
            mode = "eval mode" if v in ("3.13", "3.14") else "native probes"
            print(f"{v + ' (' + mode + ')':<22}{x['baseline_s']:>11.3f}{x['scope_s']:>10.3f}"
                  f"{x['overhead_ns_per_call']:>18.0f}")
        t = TARGETS["eval_vs_native"]
        ok = r["eval_vs_native"] <= t and r["versions_lost_records"] == 0
        print(f"{'eval / native':<24}{r['eval_vs_native']:>10.2f}   target <= {t:<6} "
              f"{'ok' if ok else 'MISSED'} ({r['versions_lost_records']} lost)")
    if "soak_rss_growth_mb" in r:
        print(f"{'soak RSS growth MB':<24}{r['soak_rss_growth_mb']:>10.2f}   over "
              f"{r['soak_seconds']} s, after 5 s of warm-up; peak {r['soak_peak_rss_mb']:.0f} MB, "
              f"{r['soak_records']:,} records, {r['soak_lost_records']} lost, "
              f"{r['soak_controller_ns_per_record']:.0f} ns/record")
    if "stacks_tstate_map" in r:
        from stacks import print_targets

        print_targets(r)
    if "nonselected_gc_ns" in r:
        from nonselected import print_figures

        print_figures(r)
    m = r["machine"]
    print(f"\n{m['cpus']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['python']}")


if __name__ == "__main__":
    main()
