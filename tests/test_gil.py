"""GIL waits: the time a thread waits to take the GIL is named 'gil' in sched,
and counted per call and per function, on each kind of interpreter support.

The oracle is the program's own clock: a thread spinning in pure Python on a
machine with a core per thread is off the CPU only while it waits for the GIL,
so its wall time minus its CPU time (time.thread_time) is its GIL wait.
"""

from __future__ import annotations

import json

import pytest
from conftest import PY311, SID, program, rows, scope

from scope_ebpf import usdt
from scope_ebpf.analysis import ns_text
from scope_ebpf.interpreters import gil

VERSIONS = ["3.11", "3.13", "3.15"]  # USDT under the hook, eval-function probes, native
NAPS = 20  # of 10 ms


def _trace(version: str, tmp_path) -> tuple[object, dict[str, dict]]:
    out = tmp_path / "out"
    if version == "3.11":
        cmd = ["run", "--max-rate", "0", "-o", str(out), "--", PY311, program("gil.py")]
    else:
        cmd = ["run", "--root", str(SID), "--max-rate", "0", "-o", str(out), "--",
               f"python{version}", "/tmp/scope-tests/gil.py"]
    r = scope(*cmd, "3000000", str(NAPS), timeout=600)
    assert r.returncode == 0, r.stderr
    threads = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            t = json.loads(line)
            threads[t["name"]] = t
    assert set(threads) == {"spinner-0", "spinner-1", "napper"}, r.stdout
    return out, threads


def _ms(out, sql: str) -> float:
    (v,), = rows(out, sql)
    return (v or 0) / 1e6


@pytest.mark.kernel
@pytest.mark.parametrize("version", VERSIONS)
def test_gil_waits_are_named_per_thread_and_function(version, sid, tmp_path):
    out, threads = _trace(version, tmp_path)
    spin_gil = 0.0
    for name in ("spinner-0", "spinner-1"):
        t = threads[name]
        waited = (t["wall"] - t["cpu"]) * 1e3
        gil_ms = _ms(out, f"""SELECT sum(duration_ns) FROM sched
                              WHERE tid = {t['tid']} AND function = 'spin' AND state = 'gil'""")
        # the thread's whole life covers its work: off-CPU before spin started too
        other = _ms(out, f"""SELECT sum(duration_ns) FROM sched
                             WHERE tid = {t['tid']} AND function IS DISTINCT FROM 'spin'
                                OR tid = {t['tid']} AND state <> 'gil'""")
        print(f"{version} {name}: wall {t['wall'] * 1e3:.1f} ms, cpu {t['cpu'] * 1e3:.1f} ms, "
              f"gil {gil_ms:.1f} ms, other off-CPU {other:.1f} ms")
        # two spinners share one GIL: each waits for it a good part of its time
        assert gil_ms > 0.2 * t["wall"] * 1e3
        # and the waits are its off-CPU time: nothing else takes a spinner off the CPU
        # but preemption by the rest of the machine (named 'preempted', not 'gil')
        assert gil_ms <= waited * 1.05 + 2
        assert gil_ms + other >= waited * 0.9 - 2
        spin_gil += gil_ms
    # the kernel's per-call sums are the same intervals
    assert _ms(out, "SELECT sum(self_gil_ns) FROM functions WHERE function = 'spin'") == \
        pytest.approx(spin_gil, rel=0.01, abs=0.5)
    assert _ms(out, "SELECT sum(self_gil_ns) FROM calls WHERE function = 'spin'") == \
        pytest.approx(spin_gil, rel=0.01, abs=0.5)
    # a sleep is no GIL wait, even with the GIL taken by others all along
    tid = threads["napper"]["tid"]
    # (time.sleep sleeps to a deadline: a preemption just before it shortens the sleep)
    slept = _ms(out, f"""SELECT sum(duration_ns) FROM sched WHERE tid = {tid}
                         AND function = 'nap' AND state IN ('sleeping', 'preempted')""")
    assert slept >= NAPS * 10 * 0.95
    assert _ms(out, "SELECT sum(self_offcpu_ns - self_gil_ns) FROM calls "
                    "WHERE function = 'nap'") >= NAPS * 10 * 0.95
    # never more GIL wait than off-CPU time
    assert rows(out, "SELECT count(*) FROM calls WHERE self_gil_ns > self_offcpu_ns") == [(0,)]
    if version == "3.11":
        _report_names_the_waits(out, tmp_path, threads)


def _report_names_the_waits(out, tmp_path, threads: dict[str, dict]) -> None:
    """The report's per-thread table prints sched's figures, and the advice follows."""
    r = scope("report", str(out), "-o", str(tmp_path / "report.html"))
    assert r.returncode == 0, r.stderr
    section = r.stdout.split("== GIL waits per thread ==", 1)[1].split("\n\n", 1)[0]
    for name in ("spinner-0", "spinner-1"):
        tid = threads[name]["tid"]
        (ns,), = rows(out, f"SELECT sum(duration_ns) FROM sched WHERE tid = {tid} "
                           "AND state = 'gil'")
        line, = [x for x in section.splitlines() if x.startswith(f"{name} (tid {tid})")]
        assert f" {ns_text(ns)} " in line, line
    assert "Threads wait for the GIL" in r.stdout
    assert "is I/O-bound" not in r.stdout  # a GIL wait is no I/O


@pytest.mark.parametrize("path", [PY311, str(SID / "usr/bin/python3.13"),
                                  str(SID / "usr/bin/python3.14"),
                                  str(SID / "usr/bin/python3.15")])
def test_wait_site_is_one_call_of_pthread_cond_timedwait(path):
    site = gil.wait_site(path)
    assert site.after - site.call == 5  # call rel32 to the PLT entry


def test_a_file_without_the_wait_says_so(tmp_path):
    with pytest.raises(usdt.ProbeError, match="pthread_cond_timedwait"):
        gil.wait_site("/bin/true")
