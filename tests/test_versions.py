"""Every CPython a fleet runs: host 3.11, and 3.13/3.14/3.15 in a Debian sid chroot.

The sid root comes from `make interpreters` (run by `make test`); its
interpreters are launched with `run --root`, so every test here also exercises
the container path: probes attached through the host path of a binary that
the target sees under another root.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import PROGRAMS, PY311, SCOPE, SID, Ticker, attached, rows, scope, session_value

pytestmark = pytest.mark.kernel

ROOT = SID
VERSIONS = ["3.11", "3.13", "3.14", "3.15"]
MODES = {"3.11": "usdt+hook", "3.13": "eval", "3.14": "eval", "3.15": "usdt"}


def run_version(version: str, tmp_path: Path, script: str, *args: str,
                probes: str = "calls,gc,sched") -> Path:
    out = tmp_path / "out"
    if version == "3.11":
        cmd = ["run", "-o", str(out), "--probes", probes, "--", PY311,
               str(PROGRAMS / script), *args]
    else:
        cmd = ["run", "--root", str(ROOT), "-o", str(out), "--probes", probes, "--",
               f"python{version}", f"/tmp/scope-tests/{script}", *args]
    r = scope(*cmd)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_exact_calls_and_nesting(version, sid, tmp_path):
    out = run_version(version, tmp_path, "recursive.py", "15")
    assert rows(out, "SELECT count(*), max(depth) - min(depth), min(line), max(line) "
                     "FROM calls WHERE function = 'fib'") == [(1973, 14, 4, 4)]
    out = run_version(version, tmp_path / "tree", "tree.py")
    got = rows(out, """
        SELECT function, depth - min(depth) OVER (), line, return_line FROM calls
        WHERE file LIKE '%tree.py' AND function != '<module>' ORDER BY start_ns""")
    eval_mode = MODES[version] == "eval"
    expected = [("top", 0, 10, 13), ("middle", 1, 5, 7), ("leaf", 2, 1, 2),
                ("leaf", 2, 1, 2), ("leaf", 1, 1, 2)]
    if eval_mode:  # the eval-function path has no return line
        expected = [(f, d, line, None) for f, d, line, _ in expected]
    assert got == expected


@pytest.mark.parametrize("version", VERSIONS)
def test_gc_rows(version, sid, tmp_path):
    out = run_version(version, tmp_path, "gcs.py", probes="gc")
    gens = [g for (g,) in rows(out, "SELECT generation FROM gc ORDER BY start_ns")]
    explicit = [0, 1, 2, 2, 0]
    assert any(gens[i:i + 5] == explicit for i in range(len(gens))), gens


@pytest.mark.parametrize("version", VERSIONS)
def test_probes_command_names_the_mode(version, sid):
    binary = PY311 if version == "3.11" else str(ROOT / f"usr/bin/python{version}")
    r = scope("probes", "--binary", binary)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"(CPython {version})" in r.stdout
    assert f"calls with `run`: yes [{MODES[version]}]" in r.stdout
    has_function_probes = version in ("3.11", "3.15")
    assert ("function__entry             present" in r.stdout) == has_function_probes


def test_probes_command_for_a_pid_without_hook_and_not_python():
    p = subprocess.Popen([PY311, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)
        r = scope("probes", "--pid", str(p.pid))
    finally:
        p.kill()
        p.wait()
    assert r.returncode == 3, r.stdout
    assert "calls with `trace --pid`: no [usdt+hook]" in r.stdout
    r = scope("probes", "--binary", "/bin/true")
    assert r.returncode == 4 and "/bin/true is not a CPython interpreter" in r.stdout


def test_chrooted_315_traced_by_pid_without_hook(sid, tmp_path):
    target = Ticker("python3.15", _go_file("315"), after=100, root=ROOT)
    out = tmp_path / "out"
    tracer = subprocess.Popen([SCOPE, "trace", "--pid", str(target.pid), "-o", str(out)],
                              stderr=subprocess.PIPE, text=True)
    try:
        err = attached(tracer)
        target.go()
        err += tracer.communicate(timeout=120)[1]
    finally:
        target.stop()
        tracer.kill()
    assert tracer.returncode == 0, err
    assert "warning" not in err  # 3.15 needs no hook
    assert session_value(out, "binaries") == str(ROOT / "usr/bin/python3.15")
    ticks = rows(out, "SELECT count(*), count(DISTINCT depth) FROM calls "
                      "WHERE function = 'tick' AND duration_ns >= 10e6")[0]
    assert 100 <= ticks[0] <= 400 and ticks[1] == 1


def _go_file(tag: str) -> Path:
    """A go() file inside the sid root, fresh for this test."""
    go = ROOT / "tmp" / "scope-tests" / f"go-{tag}"
    go.unlink(missing_ok=True)
    return go


def test_exe_mode_on_chrooted_315_covers_a_later_process(sid, tmp_path):
    out = tmp_path / "out"
    tracer = subprocess.Popen([SCOPE, "trace", "--exe", str(ROOT / "usr/bin/python3.15"),
                               "-o", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        while "tracing" not in (tracer.stderr.readline() or "tracing"):
            pass
        late = subprocess.run(["chroot", str(ROOT), "python3.15",
                               "/tmp/scope-tests/recursive.py", "12"],
                              capture_output=True, text=True, timeout=60)
        assert late.stdout == "144\n"
        time.sleep(0.3)
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)
    # traced from its very first call: runpy's frames are below fib's
    assert rows(out, "SELECT count(*) FROM calls WHERE function = 'fib'") == [(465,)]
    first = rows(out, "SELECT function, depth FROM calls ORDER BY start_ns LIMIT 1")
    assert first and first[0][1] <= 2


def test_names_that_cannot_be_encoded_do_not_hurt_the_target(sid, tmp_path):
    # Debian's 3.15.2 passes "<unknown>" for names it cannot encode as UTF-8
    out = run_version("3.15", tmp_path, "badnames.py")  # asserts exit code 0
    got = rows(out, "SELECT function, line, count(*) FROM calls "
                    "WHERE line IN (4, 8) GROUP BY ALL ORDER BY line")
    assert got == [("good", 4, 3), ("<unknown>", 8, 3)]


def test_trace_mixed_versions_at_once_and_activate_314(sid, tmp_path):
    go = _go_file("mixed")  # one file: every target sees it at the same host path
    host = Ticker(PY311, go, after=100)
    t314 = Ticker("python3.14", go, after=100, root=ROOT)
    t315 = Ticker("python3.15", go, after=100, root=ROOT)
    host_pid, pid314, pid315 = host.pid, t314.pid, t315.pid
    out = tmp_path / "out"
    tracer = subprocess.Popen([SCOPE, "trace", "-p", str(host_pid), "-p", str(pid314), "-p",
                               str(pid315), "--activate", "-o", str(out)],
                              stderr=subprocess.PIPE, text=True)
    try:
        err = attached(tracer)
        go.touch()
        err += tracer.communicate(timeout=120)[1]
    finally:
        for t in (host, t314, t315):
            t.stop()
        tracer.kill()
    assert tracer.returncode == 0, err
    assert f"activated the perf trampoline in process {pid314}" in err
    got = dict(rows(out, "SELECT pid, count(*) FROM calls WHERE function = 'tick' "
                         "AND duration_ns >= 10e6 GROUP BY pid"))
    # ticker.py sets its own profile hook, so 3.11 fires too; 3.14 through the trampoline,
    # which it turns on at its next check for pending calls (within a tick or two)
    assert set(got) == {host_pid, pid314, pid315}
    assert all(95 <= n <= 400 for n in got.values()), got
    versions = dict(rows(out, "SELECT pid, python_version FROM processes WHERE event = 'start'"))
    assert versions == {host_pid: "3.11", pid314: "3.14", pid315: "3.15"}
    assert not list((ROOT / "tmp").glob("scope-ebpf-activate-*"))


def test_activate_refuses_313(sid, tmp_path):
    target = Ticker("python3.13", _go_file("313"), root=ROOT)  # ticks until stopped
    try:
        r = scope("trace", "-p", str(target.pid), "--activate", "-d", "0.5", "-o",
                  str(tmp_path / "o"))
    finally:
        target.stop()
    assert r.returncode == 2
    assert "--activate needs CPython 3.14+" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was created
