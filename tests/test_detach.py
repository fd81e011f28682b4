"""Tracing ends, the target goes back to full speed at once, while it runs on:
after --duration, after a SIGKILL of the tracer, and when the breaker opens.
Eval mode (3.13/3.14) included: plain uprobes, nothing left waiting in the kernel."""

from __future__ import annotations

import signal
import statistics
import subprocess
import threading
import time

import pytest
from conftest import SCOPE, SID, attached, rows

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
            (opened,), = rows(out, "SELECT epoch_ns(ts_ns) / 1e9 FROM breaker "
                                   "WHERE state = 'open' ORDER BY ts_ns LIMIT 1")
            t_end = opened
        after = target.rate(t_end, t_end + 1.0)
    finally:
        target.stop()
    if how != "breaker":  # (which opens within milliseconds of the attach)
        assert traced < base / 3, (base, traced)  # tracing was in effect: every call probed
    assert after > base / 2, (base, traced, after)  # and within a second, full speed again
