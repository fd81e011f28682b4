"""Stack sampling costs (the stacks probe set), for `make bench` or on its own.

One Session (compiled once) samples a CPU-bound target whose Python stack is
DEPTH frames deep (Debian's python3.11; --python for another), at --hz:

  bpf_ns_per_call    the sampler's run time per invocation, from the kernel's
                     own per-program statistics (kernel.bpf_stats_enabled)
  bpf_ns_per_sample  its run time over the target's samples (every CPU's
                     invocations, idle and other processes' included)
  controller_ns_per_sample  this process's CPU while tracing (attach not
                     included: attach_ms), per sample, at --hz on one busy thread,
                     over one ~5 s run (the short runs' figure is apart: a new
                     process's frames are resolved at its first drain)
  controller_fixed_ms_per_s and controller_ns_per_extra_sample: that CPU split
                     into a part per second and a part per sample, from one more
                     run at 10x the rate (a host with more busy threads or CPUs
                     pays the fixed part once)
  slowdown           the target's elapsed time traced / untraced (medians of
                     interleaved runs; the perf events are off for untraced ones)

and the same BPF figures with the thread list walked in the kernel on every
sample (the tid -> thread state map unused) to price that way of finding the
thread's state; and py-spy (`py-spy record -r HZ --nonblocking`, raw output to
/dev/null) on the same workload in the same runs: its slowdown and its CPU per
sample (its whole process life, attach included, over the samples it reports).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The stack is exactly DEPTH frames (<module> and DEPTH - 1 deep's) where the
# time goes: a flat loop at the bottom, no calls.
TARGET = r"""
import sys, time
def deep(n, work):
    if n > 1:
        return deep(n - 1, work)
    t0 = time.perf_counter()
    x = 0
    for i in range(work * 10_000):
        x += i
    return time.perf_counter() - t0
print("ready", flush=True)
sys.stdin.readline()
print(deep(int(sys.argv[1]) - 1, int(sys.argv[2])), flush=True)
"""
STATS = "/proc/sys/kernel/bpf_stats_enabled"
TARGETS = {"bpf_ns_per_sample": 10_000, "controller_ns_per_sample": 2_000, "slowdown": 1.02}
PY_SPY = Path(sys.executable).with_name("py-spy")


def _prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a BPF program fd of this process."""
    info = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


def _cpu_ns() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return int((ru.ru_utime + ru.ru_stime) * 1e9)


def _proc_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 10**9 // os.sysconf("SC_CLK_TCK")


def _py_spy(python: str, depth: int, work: int, hz: int) -> tuple[float, int, int] | None:
    """(target elapsed s, py-spy CPU ns, samples) under py-spy record; None without it."""
    if not PY_SPY.exists():
        return None
    p = _target(python, depth, work)
    spy = subprocess.Popen([str(PY_SPY), "record", "-r", str(hz), "--nonblocking", "--format",
                            "raw", "-o", "/dev/null", "-p", str(p.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import time

    time.sleep(0.5)  # attached (it reads the process's memory maps and symbols first)
    elapsed = _finish(p)
    p.wait()
    cpu = 0
    while spy.poll() is None:  # it stops when the target exits
        try:
            cpu = _proc_cpu_ns(spy.pid)
        except OSError:
            break
        time.sleep(0.01)
    err = spy.stderr.read()
    import re

    m = re.search(r"Samples: (\d+)", err)
    samples = int(m.group(1)) if m else int(elapsed * hz)
    return elapsed, cpu, samples


def _target(python: str, depth: int, work: int) -> subprocess.Popen:
    p = subprocess.Popen([python, "-c", TARGET, str(depth), str(work)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def _finish(p: subprocess.Popen) -> float:
    p.stdin.write("go\n")
    p.stdin.flush()
    return float(p.stdout.readline())


def bench_stacks(runs: int = 5, hz: int = 99, depth: int = 64, work: int = 3000,
                 python: str = "/usr/bin/python3.11") -> dict:
    from scope_ebpf.controller import Options, Session
    from scope_ebpf.kernel import stacks as kstacks

    old = open(STATS).read().strip()
    with open(STATS, "w") as f:
        f.write("1")
    tmp = Path(tempfile.mkdtemp(prefix="scope-bench-stacks-"))
    s = Session(Options(tmp / "out", probes=frozenset({"stacks"}), sample_hz=hz))
    try:
        s.open()
        fd = s.program.prog_fd("on_sample")
        times: dict[str, list[float]] = {"untraced": [], "traced": []}
        per = {"map": [0, 0, 0, 0], "walk": [0, 0, 0, 0]}  # ns, calls, samples, cpu ns
        spy_cpu = [0, 0]  # py-spy: cpu ns, samples
        attach: list[int] = []
        for i in range(runs):
            s.program.stop_sampling()
            p = _target(python, depth, work)
            times["untraced"].append(_finish(p))
            p.wait()
            for mode in ("map", "walk"):
                kstacks.WALK_ALWAYS = mode == "walk"
                p = _target(python, depth, work)
                s.program.start_sampling(hz)
                a0 = _cpu_ns()
                s.add_pid(p.pid)
                ns0, cnt0 = _prog_stats(fd)
                n0, cpu0 = s.program.stat("samples"), _cpu_ns()
                attach.append(cpu0 - a0)
                p.stdin.write("go\n")
                p.stdin.flush()
                s.run(lambda p=p: p.poll() is not None)
                elapsed = float(p.stdout.readline())
                p.wait()
                s.program.stop_sampling()
                s.poll()
                ns1, cnt1 = _prog_stats(fd)
                acc = per[mode]
                acc[0] += ns1 - ns0
                acc[1] += cnt1 - cnt0
                acc[2] += s.program.stat("samples") - n0
                acc[3] += _cpu_ns() - cpu0
                if mode == "map":
                    times["traced"].append(elapsed)
            spy = _py_spy(python, depth, work, hz)
            if spy is not None:
                times.setdefault("py_spy", []).append(spy[0])
                spy_cpu[0] += spy[1]
                spy_cpu[1] += spy[2]
            print(f"  run {i + 1}/{runs}: untraced {times['untraced'][-1]:.3f} s, "
                  f"traced {times['traced'][-1]:.3f} s"
                  + (f", py-spy {spy[0]:.3f} s" if spy else ""), file=sys.stderr)
        kstacks.WALK_ALWAYS = False
        # the controller over runs long enough that the first drain's resolving of
        # a new process's frames (~ms) is not most of it: ~5 s each
        slow = _controller_run(s, python, depth, work * 8, hz)
        fast = _controller_run(s, python, depth, work * 8, hz * 10)
        med = {k: statistics.median(v) for k, v in times.items()}
        out = {"stacks_hz": hz, "stacks_depth": depth, "stacks_runs": runs,
               "stacks_elapsed_s_median": med,
               "stacks_slowdown": med["traced"] / med["untraced"]}
        if "py_spy" in med:
            out["py_spy"] = {"slowdown": med["py_spy"] / med["untraced"],
                             "samples": spy_cpu[1],
                             "cpu_ns_per_sample": spy_cpu[0] / max(spy_cpu[1], 1)}
        for mode, (ns, cnt, samples, cpu) in per.items():
            key = "stacks_tstate_map" if mode == "map" else "stacks_tstate_walk"
            out[key] = {"bpf_ns_per_call": ns / max(cnt, 1),
                        "bpf_ns_per_sample": ns / max(samples, 1),
                        "samples": samples, "samples_per_s": samples / max(
                            sum(times["traced"]), 1e-9),
                        "controller_ns_per_sample": cpu / max(samples, 1)}
        # CPU = fixed * seconds + per_sample * samples, from the two long runs
        t1, n1, c1 = slow
        t2, n2, c2 = fast
        r1, r2 = n1 / max(t1, 1e-9), n2 / max(t2, 1e-9)
        extra = (c2 / t2 - c1 / t1) / max(r2 - r1, 1e-9)
        out["stacks_tstate_map"].update({
            "controller_ns_per_sample_short_runs": out["stacks_tstate_map"][
                "controller_ns_per_sample"],
            "controller_ns_per_sample": c1 / max(n1, 1),
            "controller_run_s": t1,
            "attach_ms": statistics.median(attach) / 1e6,
            "controller_ns_per_extra_sample": max(extra, 0.0),
            "controller_fixed_ms_per_s": max(c1 / t1 - extra * r1, 0.0) / 1e6,
            "fast_hz": hz * 10, "fast_samples_per_s": r2,
            "controller_ns_per_sample_fast": c2 / max(n2, 1)})
        return out
    finally:
        s.close()
        with open(STATS, "w") as f:
            f.write(old)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _controller_run(s, python: str, depth: int, work: int, hz: int) -> tuple[float, int, int]:
    """(seconds, samples, controller CPU ns) of one traced run at ``hz``."""
    p = _target(python, depth, work)
    s.program.start_sampling(hz)
    s.add_pid(p.pid)
    n0, cpu0 = s.program.stat("samples"), _cpu_ns()
    p.stdin.write("go\n")
    p.stdin.flush()
    s.run(lambda: p.poll() is not None)
    elapsed = float(p.stdout.readline())
    p.wait()
    s.program.stop_sampling()
    s.poll()
    return elapsed, s.program.stat("samples") - n0, _cpu_ns() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hz", type=int, default=99)
    ap.add_argument("--depth", type=int, default=64)
    ap.add_argument("--work", type=int, default=3000, help="10,000s of loop iterations per run")
    ap.add_argument("--python", default="/usr/bin/python3.11")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    r = bench_stacks(a.runs, a.hz, a.depth, a.work, a.python)
    print(json.dumps(r, indent=2))
    print_targets(r)


def print_targets(r: dict) -> None:
    """The issue's targets, ok or MISSED, and py-spy beside them."""
    m = r["stacks_tstate_map"]
    spy = r.get("py_spy")
    print(f"\nstacks at {r['stacks_hz']} Hz, {r['stacks_depth']}-frame stack"
          + (f"{'py-spy':>34}" if spy else ""))
    rows = [("BPF ns/sample", m["bpf_ns_per_sample"], "bpf_ns_per_sample", None),
            ("controller ns/sample", m["controller_ns_per_sample"], "controller_ns_per_sample",
             spy["cpu_ns_per_sample"] if spy else None),
            ("  ... per extra sample", m.get("controller_ns_per_extra_sample", 0),
             "controller_ns_per_sample", None),
            ("target slowdown", r["stacks_slowdown"], "slowdown",
             spy["slowdown"] if spy else None)]
    for name, value, key, other in rows:
        t = TARGETS[key]
        print(f"{name:<22}{value:>12.2f}   target <= {t:<7} {'ok' if value <= t else 'MISSED':<7}"
              + (f"{other:>12.2f}" if other is not None else ""))
    if "controller_fixed_ms_per_s" in m:
        print(f"  (controller: {m['controller_fixed_ms_per_s']:.2f} ms/s whatever the rate, "
              f"{m['controller_ns_per_sample_fast']:.0f} ns/sample at {m['fast_hz']} Hz; "
              f"attach {m['attach_ms']:.1f} ms of CPU, not counted above)")


if __name__ == "__main__":
    main()
