"""Tracing ends, the target goes back to full speed at once, while it runs on:
after --duration, after a SIGKILL of the tracer, and when the breaker opens.
Eval mode (3.13/3.14) included: plain uprobes, nothing left waiting in the kernel."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time

import pytest
from conftest import PY311, SCOPE, SID, attached, program, rows, session_value

pytestmark = pytest.mark.kernel


class Speedo:
    """tests/programs/speed.py in the sid root: (wall time, calls/s) every 100 ms."""

    def __init__(self, version: str) -> None:
        env = ["env", "PYTHONPERFSUPPORT=1"] if version in ("3.13", "3.14") else []
        self.proc = subprocess.Popen(["chroot", str(SID), *env, f"python{version}",
                                      "/tmp/scope-tests/speed.py"],
                                     stdout=subprocess.PIPE, text=True)
        self.pid = int(self.proc.stdout.readline())
        self.samples: list[tuple[float, float]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            t, rate = line.split()
            self.samples.append((float(t), float(rate)))

    def rate(self, t0: float, t1: float) -> float:
        """Best rate seen in [t0, t1] (waits until then)."""
        while time.time() < t1 + 0.3:
            time.sleep(0.05)
        return max((r for t, r in self.samples if t0 <= t <= t1), default=0.0)

    def baseline(self) -> float:
        time.sleep(1.2)
        now = time.time()
        return statistics.median(r for t, r in self.samples if now - 1.0 <= t <= now)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.mark.parametrize("version", ["3.13", "3.15"])  # eval mode, native probes
@pytest.mark.parametrize("how", ["duration", "sigkill", "breaker"])
def test_full_speed_within_a_second_after_tracing_ends(version, how, sid, tmp_path):
    target = Speedo(version)
    out = tmp_path / "out"
    try:
        base = target.baseline()
        opts = {"duration": ["-d", "1"], "sigkill": [],
                "breaker": ["--breaker-rate", "200000", "-d", "4"]}[how]
        tracer = subprocess.Popen([SCOPE, "trace", "--pid", str(target.pid), "-o", str(out),
                                   "--max-rate", "0", *opts],
                                  stderr=subprocess.PIPE, text=True)
        attached(tracer)
        t_attached = time.time()
        if how == "sigkill":
            time.sleep(1)
            tracer.send_signal(signal.SIGKILL)
        if how == "breaker":
            while not out.joinpath("breaker").exists() and tracer.poll() is None:
                time.sleep(0.05)
        tracer.communicate(timeout=60)
        t_end = time.time()
        traced = target.rate(t_attached + 0.2, t_attached + 0.8)
        if how == "breaker":  # detached by the breaker while the tracer ran on
            (opened,), = rows(out, "SELECT ts_ns / 1e9 FROM breaker "
                                   "WHERE state = 'open' ORDER BY ts_ns LIMIT 1")
            t_end = opened
        after = target.rate(t_end, t_end + 1.0)
    finally:
        target.stop()
    if how != "breaker":  # (which opens within milliseconds of the attach)
        assert traced < base / 3, (base, traced)  # tracing was in effect: every call probed
    assert after > base / 2, (base, traced, after)  # and within a second, full speed again


def test_run_ends_at_once_while_another_tracer_attaches_and_detaches(sid, tmp_path):
    """Another tracer attaching and detaching the function probes of the same 3.13
    file in a loop (the breaker's path) holds nothing up: `run` of a short program
    ends with every call, and every detach (ours, theirs) is far from the 20-46 s
    hangs of one-perf-event-per-probe detaching. Speed itself: `make bench`."""
    from scope_ebpf.controller import Options, Session

    other = Session(Options(output=tmp_path / "other", max_rate=0))
    cycles: list[float] = []
    stop = threading.Event()
    try:
        other.open()
        other.attach_binary(str(SID / "usr/bin/python3.13"), any_pid=True)

        def churn() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                other.links.detach_calls()
                cycles.append(time.monotonic() - t0)
                other.links.attach_calls()

        thread = threading.Thread(target=churn, daemon=True)
        thread.start()
        while not cycles:  # churning before our tracer starts
            time.sleep(0.01)
        src = ("import sys\nsys.setrecursionlimit(5000)\n"
               "def down(n):\n    return 0 if n == 0 else 1 + down(n - 1)\n"
               "for _ in range(20):\n    down(600)\n")
        out = tmp_path / "out"
        r = subprocess.run([SCOPE, "run", "--root", str(SID), "-o", str(out), "--max-rate", "0",
                            "--probes", "calls", "--", "python3.13", "-c", src],
                           capture_output=True, text=True, timeout=120)
        churned_during = len(cycles)
        stop.set()
        thread.join()
    finally:
        stop.set()
        other.close()
    assert r.returncode == 0, r.stderr
    assert rows(out, "SELECT count(*), max(depth) FROM calls WHERE function = 'down'") \
        == [(20 * 601, 601)]
    detach_s = int(rows(out, "SELECT count FROM session WHERE key = 'detach_ns'")[0][0]) / 1e9
    print(f"run's detach {detach_s:.3f} s; the other's {len(cycles)} detaches: "
          f"median {statistics.median(cycles):.3f} s, max {max(cycles):.3f} s")
    assert session_value(out, "uprobe_links") == "uprobe_multi"
    # one perf event per uprobe took 1.0-1.5 s here; the bug this guards took 20-46 s
    assert churned_during > 1 and detach_s < 1.0 and max(cycles) < 2, (detach_s, cycles)


@pytest.mark.parametrize("version", ["3.11", "3.13"])
def test_perf_event_links_where_uprobe_multi_is_missing(version, sid, tmp_path):
    """Kernels before 6.6 have no uprobe_multi links: one perf event per uprobe
    (forced here) traces the same calls."""
    out = tmp_path / "out"
    where = ["--root", str(SID)] if version != "3.11" else []
    r = subprocess.run([SCOPE, "run", *where, "-o", str(out), "--max-rate", "0", "--",
                        *((f"python{version}", "/tmp/scope-tests/recursive.py")
                          if version != "3.11" else (PY311, program("recursive.py"))), "15"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SCOPE_EBPF_UPROBE_MULTI": "0"})
    assert r.returncode == 0, r.stderr
    assert session_value(out, "uprobe_links") == "perf_event"
    assert rows(out, "SELECT count(*), max(depth) FROM calls WHERE function = 'fib'") \
        == [(2 * 987 - 1, 15)]
