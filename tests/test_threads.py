"""Thread names: the threads table, --thread-name and the report's timeline labels,
on host 3.11 (names from the run hook) and sid 3.14/3.15 (names from the OS)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PROGRAMS, PY311, SID, rows, scope, session_value

pytestmark = pytest.mark.kernel

NAMES = ["json-1", "json-2", "other-1", "a-long-thread-name-json-1", "blip"]
ENCODE = ("SELECT tid, count(*) FROM calls WHERE function = 'encode' "
          "AND file LIKE '%json_threads.py' GROUP BY 1 ORDER BY 1")


@pytest.fixture(scope="module")
def sid() -> Path:
    """The sid root with the program in a directory of its own: conftest's sid
    fixture replaces /tmp/scope-tests, which test runs of other checkouts share."""
    if not (SID / ".scope-interpreters").exists():
        pytest.fail("the sid root is missing: run `make interpreters`")
    dest = SID / "tmp" / "scope-tests-threads"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROGRAMS / "json_threads.py", dest / "json_threads.py")
    return SID


def run_threads(version: str, root, out, *opts: str):
    if version == "3.11":
        cmd = ["-o", str(out), *opts, "--", PY311, str(PROGRAMS / "json_threads.py")]
    else:
        cmd = ["--root", str(root), "-o", str(out), *opts, "--",
               f"python{version}", "/tmp/scope-tests-threads/json_threads.py"]
    r = scope("run", *cmd)
    assert r.returncode == 0, r.stderr
    tids = dict(line.split() for line in r.stdout.splitlines())
    assert list(tids) == NAMES
    return {name: int(tid) for name, tid in tids.items()}, r


def last_names(out) -> dict[int, tuple]:
    """tid -> (os_name, python_name, source) of its last threads row."""
    return {tid: (os_name, py, src) for tid, os_name, py, src in rows(out, """
        SELECT tid, arg_max(os_name, ts_ns), arg_max(python_name, ts_ns),
               arg_max(source, ts_ns) FROM threads GROUP BY tid""")}


@pytest.mark.parametrize("version", ["3.11", "3.14", "3.15"])
def test_thread_names_and_thread_name_filter(version, sid, tmp_path):
    out = tmp_path / "out"
    tids, r = run_threads(version, sid, out, "--thread-name", "json-*")
    names = last_names(out)
    pid = rows(out, "SELECT pid FROM processes WHERE event = 'start'")[0][0]
    if version == "3.11":
        # the hook reports the whole Python name; the OS name stays the process's
        for name, tid in tids.items():
            assert names[tid] == ("python3.11", name, "python")
        assert names[pid] == ("python3.11", "MainThread", "python")
    else:
        # 3.14+ names the OS thread after it, truncated to 15 bytes
        for name, tid in tids.items():
            assert names[tid] == (name[:15], name[:15], "os")
        assert names[pid] == (f"python{version}", None, "os")
    # exactly the calls of the json-* threads became rows; the counts stay exact
    assert rows(out, ENCODE) == sorted([(tids["json-1"], 300), (tids["json-2"], 200)])
    assert rows(out, "SELECT sum(calls) FROM functions WHERE function = 'encode' "
                     "AND file LIKE '%json_threads.py'") == [(650,)]
    for name in ("json-1", "json-2"):
        assert (f"--thread-name 'json-*' matched python name '{name}' "
                f"(pid {pid} tid {tids[name]})") in r.stderr
    assert session_value(out, "thread_name_matched") == (
        f"'json-*': json-1 (tid {tids['json-1']}), json-2 (tid {tids['json-2']})")
    assert "matched no thread" not in r.stderr

    # the report's timeline names its lanes
    page = tmp_path / "report.html"
    rep = scope("report", str(out), "-o", str(page), "-q")
    assert rep.returncode == 0, rep.stderr
    html = page.read_text()
    for name in ("json-1", "json-2"):
        assert f">{name} (tid {tids[name]})</text>" in html


def test_a_pattern_that_matches_no_thread_warns(tmp_path):
    out = tmp_path / "out"
    tids, r = run_threads("3.11", None, out, "--thread-name", "xml-*",
                          "--thread-name", "other-*")
    assert ("warning: --thread-name 'xml-*' matched no thread (names seen: python3.11, "
            "MainThread, json-1, json-2, other-1, a-long-thread-name-json-1, blip)") in r.stderr
    assert rows(out, "SELECT value FROM session WHERE key = 'warning' "
                     "AND value LIKE '%matched no thread%'") == [(
        "--thread-name 'xml-*' matched no thread (names seen: python3.11, MainThread, "
        "json-1, json-2, other-1, a-long-thread-name-json-1, blip)",)]
    assert rows(out, "SELECT value, count FROM session WHERE key = 'thread_name_matched' "
                     "ORDER BY value") == [
        (f"'other-*': other-1 (tid {tids['other-1']})", 1), ("'xml-*': no thread", 0)]
    assert rows(out, ENCODE) == [(tids["other-1"], 100)]


def test_without_thread_name_every_thread_is_a_row_and_short_threads_are_named(sid, tmp_path):
    out = tmp_path / "out"
    tids, _ = run_threads("3.14", sid, out)
    # blip ended at once, before any poll of the tracer: its rename event names it
    assert rows(out, f"SELECT os_name FROM threads WHERE tid = {tids['blip']} "
                     "ORDER BY ts_ns") == [("python3.14",), ("blip",)]
    assert rows(out, ENCODE) == sorted([(tids["json-1"], 300), (tids["json-2"], 200),
                                        (tids["other-1"], 100),
                                        (tids["a-long-thread-name-json-1"], 50)])
    assert session_value(out, "thread_name_matched") is None


HOSTILE = """
import sys, threading

def deny(event, args):
    if event.startswith("scope_ebpf."):
        raise RuntimeError("no")

sys.addaudithook(deny)
seen = []

def work():
    seen.append((threading.current_thread().name, sys.getprofile() is slice))

t = threading.Thread(target=work, name="json-hostile")
t.start()
t.join()
print(seen)
"""


def test_an_audit_hook_that_raises_does_not_reach_the_thread(tmp_path):
    # the program's audit hook raises on the report: swallowed, the thread runs
    # under the cheap profile hook; and the probe, which fires before audit
    # hooks are called, still gave the name
    out = tmp_path / "out"
    r = scope("run", "-o", str(out), "--", PY311, "-c", HOSTILE)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[('json-hostile', True)]\n"
    assert rows(out, "SELECT count(*) FROM threads WHERE python_name = 'json-hostile'") == [(1,)]
    assert rows(out, "SELECT count(*) FROM calls WHERE function = 'work'") == [(1,)]


RUNNING = """
import sys, threading, time
t = threading.Thread(target=time.sleep, args=(30,), name="json-running", daemon=True)
t.start()
print(t.native_id, flush=True)
time.sleep(30)
"""


def test_threads_running_before_trace_are_named_from_proc(sid, tmp_path):
    target = subprocess.Popen(["chroot", str(sid), "python3.14", "-c", RUNNING],
                              stdout=subprocess.PIPE, text=True)
    try:
        tid = int(target.stdout.readline())
        out = tmp_path / "out"
        r = scope("trace", "--pid", str(target.pid), "-d", "1", "-o", str(out),
                  "--probes", "gc,sched")
        assert r.returncode == 0, r.stderr
    finally:
        target.kill()
        target.wait()
    assert rows(out, f"SELECT pid, os_name, python_name, source FROM threads "
                     f"WHERE tid = {tid}") == [(target.pid, "json-running", "json-running", "os")]
    assert rows(out, f"SELECT os_name, python_name FROM threads "
                     f"WHERE tid = {target.pid}") == [("python3.14", None)]
