"""Off-CPU stacks: BPF cost per sched_switch, with and without the stacks set.

Two threads of a Debian 3.11 target, DEPTH Python frames deep, hand a token back
and forth through two pipes (every hand-over is a voluntary switch of each).
For each of `--probes sched` and `--probes sched,stacks` (the sampler off, so
only sched_switch walks), the kernel's own per-program statistics
(kernel.bpf_stats_enabled) give the sched_switch program's run time: per call
(every context switch on the machine runs it) and per off-CPU interval of a
target thread (the `sched` counter), and the walks made and preemptions left
unwalked (kernel.offcpu_stacks, kernel.offcpu_unwalked) or skipped by the
once-a-millisecond limit per thread (kernel.offcpu_rate_skipped).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stacks import STATS, _prog_stats

TARGET = r"""
import os, sys, threading
depth, rounds = int(sys.argv[1]), int(sys.argv[2])
a, b = os.pipe(), os.pipe()
def deep(n, fn):
    return deep(n - 1, fn) if n > 1 else fn()
def ping():
    for _ in range(rounds):
        os.write(a[1], b"x"); os.read(b[0], 1)
def pong():
    for _ in range(rounds):
        os.read(a[0], 1); os.write(b[1], b"x")
print("ready", flush=True)
sys.stdin.readline()
t = threading.Thread(target=deep, args=(depth, pong))
t.start()
deep(depth, ping)
t.join()
print("done", flush=True)
"""
PROG = "sched:sched_switch"


def bench_offcpu(depth: int = 64, rounds: int = 20000,
                 python: str = "/usr/bin/python3.11") -> dict:
    from scope_ebpf.controller import Options, Session

    old = open(STATS).read().strip()
    with open(STATS, "w") as f:
        f.write("1")
    tmp = Path(tempfile.mkdtemp(prefix="scope-bench-offcpu-"))
    out: dict = {"offcpu_depth": depth, "offcpu_rounds": rounds}
    try:
        for name, probes in (("sched", {"sched"}), ("sched_stacks", {"sched", "stacks"})):
            s = Session(Options(tmp / name, probes=frozenset(probes)))
            try:
                s.open()
                if "stacks" in probes:
                    s.program.stop_sampling()  # sched_switch's walks only
                fd = s.program.prog_fd(PROG)
                p = subprocess.Popen([python, "-c", TARGET, str(depth), str(rounds)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert p.stdout.readline().strip() == "ready"
                s.add_pid(p.pid)
                s.poll()
                ns0, cnt0 = _prog_stats(fd)
                n0 = {k: s.program.stat(k) for k in ("sched", "offcpu_stacks",
                                                     "offcpu_unwalked",
                                                     "offcpu_rate_skipped")}
                p.stdin.write("go\n")
                p.stdin.flush()
                s.run(lambda p=p: p.poll() is not None)
                ns1, cnt1 = _prog_stats(fd)
                n = {k: s.program.stat(k) - v for k, v in n0.items()}
                out[f"offcpu_{name}"] = {
                    "bpf_ns_per_switch": (ns1 - ns0) / max(cnt1 - cnt0, 1),
                    "bpf_ns_per_target_interval": (ns1 - ns0) / max(n["sched"], 1),
                    "switches": cnt1 - cnt0, "target_intervals": n["sched"],
                    "walks": n["offcpu_stacks"], "unwalked": n["offcpu_unwalked"],
                    "rate_skipped": n["offcpu_rate_skipped"]}
                print(f"  {name}: {out[f'offcpu_{name}']}", file=sys.stderr)
            finally:
                s.close()
        return out
    finally:
        with open(STATS, "w") as f:
            f.write(old)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import json

    print(json.dumps(bench_offcpu(), indent=1))
