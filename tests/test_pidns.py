"""Targets in a PID namespace of their own, as in a container.

Inside one, a thread state's native thread id (3.11+) and glibc's struct
pthread (before) hold the namespace's tids, not the kernel tids the tracer
sees: they are translated through /proc/PID/task/*/status (NSpid), and the
kernel's stack walker trusts the controller's tid -> thread state map alone.
A target started by `unshare --pid --fork` runs a worker thread spinning in
worker -> inner; `dump` must name its threads by their host tids, and a
`--probes stacks` trace must give that thread's samples their stacks. On
Debian's 3.11 (native thread ids) and pyenv's 3.8 (struct pthread).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import PY311, SCOPE, attached, pyenv_python, rows, scope, session_count

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not shutil.which("unshare"), reason="no unshare(1)")]

PROGRAM = """
import os, sys, threading, time
def inner(end):
    x = 0
    while time.time() < end:
        x += 1
def worker(end):
    inner(end)
t = threading.Thread(target=worker, args=(time.time() + float(sys.argv[1]),), name="worker")
t.start()
print(os.getpid(), threading.get_native_id(), t.native_id, flush=True)
t.join()
"""


class Namespaced:
    """PROGRAM in a new PID namespace: its host pid and (host) tids."""

    def __init__(self, python: str, seconds: float, tmp: Path) -> None:
        prog = tmp / "ns.py"
        prog.write_text(PROGRAM)
        self.unshare = subprocess.Popen(["unshare", "--pid", "--fork", python, str(prog),
                                         str(seconds)], stdout=subprocess.PIPE, text=True)
        ns_pid, _main, ns_worker = map(int, self.unshare.stdout.readline().split())
        assert ns_pid == 1  # the first process of its namespace
        (child,) = psutil.Process(self.unshare.pid).children()
        self.pid = child.pid
        self.tids = sorted(int(t) for t in Path(f"/proc/{self.pid}/task").iterdir()
                           for t in [t.name])
        assert ns_worker != self.tids[1]  # the ids differ, or this proves nothing
        self.worker = self.tids[1]

    def close(self) -> None:
        self.unshare.kill()
        self.unshare.wait()
        try:
            psutil.Process(self.pid).kill()
        except psutil.Error:
            pass


def _pythons() -> list:
    py38 = pyenv_python(8)
    return [pytest.param(PY311, id="debian-3.11"),
            pytest.param(py38, id="pyenv-3.8", marks=pytest.mark.skipif(
                py38 is None, reason="no pyenv-built CPython 3.8"))]


@pytest.mark.parametrize("python", _pythons())
def test_dump_names_host_tids(python: str, tmp_path: Path) -> None:
    t = Namespaced(python, 60, tmp_path)
    try:
        r = scope("dump", "--pid", str(t.pid), "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        got = {th["tid"]: th for th in d["threads"]}
        assert sorted(got) == t.tids
        w = got[t.worker]
        assert w["name"] == "worker" and w["state"] is not None
        assert [f["name"] for f in w["frames"]][:2] == ["inner", "worker"]
    finally:
        t.close()


@pytest.mark.parametrize("python", _pythons())
def test_samples_have_stacks(python: str, tmp_path: Path) -> None:
    t = Namespaced(python, 60, tmp_path)
    out = tmp_path / "out"
    try:
        tracer = subprocess.Popen([SCOPE, "trace", "--pid", str(t.pid), "--probes", "stacks",
                                   "--sample-hz", "499", "-o", str(out)],
                                  stderr=subprocess.PIPE, text=True)
        attached(tracer)
        time.sleep(1)  # ~500 samples of the spinning worker
        tracer.terminate()
        assert tracer.wait(timeout=60) == 0, tracer.stderr.read()
    finally:
        t.close()
    got = rows(out, "SELECT st.path[-2:], count(*) FROM samples s JOIN stacks st "
               f"USING (pid, stack_id) WHERE s.tid = {t.worker} GROUP BY ALL ORDER BY 2 DESC")
    assert got and got[0][0] == ["worker", "inner"], got
    assert got[0][1] >= 100, got
    nostack = rows(out, f"SELECT count(*) FROM samples WHERE tid = {t.worker} "
                   "AND stack_id IS NULL")[0][0]
    # each one taken between the target's adding and its layout's, and counted so
    # (kernel.samples_no_layout): how many depends on the machine's load, not a ratio
    assert nostack <= session_count(out, "kernel.samples_no_layout"), (nostack, got[0][1])
