"""Off-CPU and gc stacks (the stacks probe set with sched and gc).

tests/programs/blockers.py blocks three named threads for SECONDS each in known
stacks (a -> b -> time.sleep, c -> d -> lock.acquire, e -> os.read of a pipe),
measuring the blocked time itself (the oracle), then runs gc.collect() in
f -> g, which then raises the audit event scope.test: the gc and audit rows
carry that stack. One `trace --pid` session traces one target per interpreter at once:
Debian's 3.11 (USDT: gc rows), the sid root's 3.15 (chrooted, USDT) and pyenv's
3.12 (no USDT probes: sched rows only). Each target keeps living until the test
closes its stdin, so its stacks resolve.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import PY311, SCOPE, GoTarget, attached, program, pyenv_python, rows

pytestmark = pytest.mark.kernel

SECONDS = 0.6
WANT = {"sleeper": (["a", "b"], "sleep"), "locker": (["c", "d"], "lock"),
        "reader": (["e"], "read")}


class Blockers(GoTarget):
    def __init__(self, python: str, root: Path | None = None):
        super().__init__("blockers.py", python, [str(SECONDS)], root, stdin=True)

    def result_when_done(self) -> dict:
        while not self.result.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.pid} exited {self.proc.returncode}")
            subprocess.run(["sleep", "0.02"])
        return self.read_result()

    def finish(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.cleanup()


def _check(out: Path, data: dict, gc: bool) -> None:
    pid = data["pid"]
    for name, (funcs, clock) in WANT.items():
        tid = data["tids"][name]
        got = rows(out, "SELECT s.duration_ns, st.path, s.state FROM sched s JOIN stacks st "
                   "ON s.pid = st.pid AND s.stack_id = st.stack_id "
                   f"WHERE s.pid = {pid} AND s.tid = {tid} ORDER BY s.duration_ns DESC LIMIT 1")
        assert got, (name, rows(out, f"SELECT * FROM sched WHERE tid = {tid}"))
        ns, path, state = got[0]
        assert path[-len(funcs):] == funcs and path[-len(funcs) - 1] == "Thread.run", (name,
                                                                                       path)
        true = data["times"][clock]
        assert abs(ns / 1e9 - true) <= 0.1 * true, (name, ns, true)
        assert state == "sleeping", (name, state)
    if gc:
        got = rows(out, "SELECT st.path FROM gc JOIN stacks st ON gc.pid = st.pid AND "
                   f"gc.stack_id = st.stack_id WHERE gc.pid = {pid} AND gc.tid = {data['main']}")
        assert ["<module>", "main", "f", "g"] in [r[0] for r in got], got
        got = rows(out, "SELECT st.path FROM audit a JOIN stacks st ON a.pid = st.pid AND "
                   f"a.stack_id = st.stack_id WHERE a.pid = {pid} AND a.tid = {data['main']} "
                   "AND a.event = 'scope.test'")
        assert [r[0] for r in got] == [["<module>", "main", "f", "g"]], got


def test_offcpu_and_gc_stacks(tmp_path: Path, sid: Path) -> None:
    pythons = [("debian-3.11", PY311, None, True), ("sid-3.15", "python3.15", sid, True)]
    skipped = []
    py12 = pyenv_python(12)
    if py12:
        pythons.append(("pyenv-3.12", py12, None, False))
    else:
        skipped.append("pyenv 3.12: not installed")
    targets = [Blockers(py, root) for _n, py, root, _gc in pythons]
    out = tmp_path / "out"
    try:
        args = [SCOPE, "trace", "--probes", "stacks,sched,gc,audit", "-o", str(out)]
        for t in targets:
            args += ["--pid", str(t.pid)]
        tracer = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        attached(tracer)
        for t in targets:
            t.start()
        results = [t.result_when_done() for t in targets]
        subprocess.run(["sleep", "0.3"])  # a drain or more while they live
        for t in targets:
            t.finish()
        assert tracer.wait(timeout=60) == 0, tracer.stderr.read()
    finally:
        for t in targets:
            t.proc.kill()
    for (name, _py, _root, gc), data in zip(pythons, results, strict=True):
        try:
            _check(out, data, gc)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
    # the report's off-CPU flame graph has the blocked paths under their state
    from scope_ebpf.analysis import analyze
    from scope_ebpf.query import connect

    a = analyze(connect(out))
    paths = {tuple(f[0] for f in p) for _t, ps in a.offcpu_stacks for p, _w in ps}
    for funcs, _clock in WANT.values():
        assert any(p[0] == "off-CPU: sleeping" and list(p[-len(funcs):]) == funcs
                   for p in paths), (funcs, paths)
    html = subprocess.run([SCOPE, "report", str(out), "-o", str(tmp_path / "r.html")],
                          capture_output=True, text=True)
    assert html.returncode == 0, html.stderr
    page = (tmp_path / "r.html").read_text()
    assert "<div id=offflame>" in page and "id=cpu-flamegraph" in page
    # the off-CPU graph exported: folded (per process) and speedscope (per thread)
    r = subprocess.run([SCOPE, "report", str(out), "--format", "folded", "--graph", "offcpu"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    folded = [ln.rsplit(" ", 1) for ln in r.stdout.splitlines()]
    want = sum(w for _t, ps in a.offcpu_stacks for _p, w in ps)
    assert sum(int(w) for _s, w in folded) == want
    assert any(";off-CPU: sleeping;" in s and s.endswith(f"b ({program('blockers.py')}:"
                                                          f"{s.rsplit(':', 1)[1]}")
               for s, _w in folded), folded[:5]
    r = subprocess.run([SCOPE, "report", str(out), "--format", "speedscope", "--graph", "offcpu"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    prof = json.loads(r.stdout)["profiles"]
    assert {p["type"] for p in prof} == {"sampled"}
    assert sum(p["endValue"] for p in prof) == want
    if skipped:
        pytest.skip("; ".join(skipped))
