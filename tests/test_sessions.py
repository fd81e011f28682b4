"""Several sessions in one output directory: refused unless --append, told
apart by session_id in every row, reported one by one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import PY311, SCOPE, attached, rows, scope

from scope_ebpf.schema import TABLES

pytestmark = pytest.mark.kernel

# gc only (cheap); the marker file says whether the program ran
CODE = "import gc, sys; open(sys.argv[1], 'a').write('x'); gc.collect(); gc.collect()"


def _run(out: Path, marker: Path, *extra: str) -> subprocess.CompletedProcess:
    return scope("run", "-o", str(out), "--probes", "gc", *extra, "--", PY311, "-c", CODE,
                 str(marker))


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> tuple[Path, list[str]]:
    """A directory with two sessions (the second appended); their ids in order."""
    tmp = tmp_path_factory.mktemp("sessions")
    out, marker = tmp / "out", tmp / "ran"
    assert _run(out, marker).returncode == 0
    before = _files(out)
    r = _run(out, marker)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"scope-ebpf: error: output directory {out} already holds a trace (gc/, processes/, "
        "threads/, ...): give a new -o, or --append to add this session to it"], r.stderr
    assert marker.read_text() == "x"  # refused before the program was started
    assert _files(out) == before  # and nothing written
    r = _run(out, marker, "--append")
    assert r.returncode == 0, r.stderr
    assert marker.read_text() == "xx"
    ids = [i for (i,) in rows(out, "SELECT value FROM session WHERE key = 'session_id' "
                                   "ORDER BY (SELECT value_int FROM session s2 WHERE s2.key = "
                                   "'start_ns' AND s2.session_id = session.session_id)")]
    return out, ids


def test_appended_sessions_are_told_apart_in_every_row(two):
    out, ids = two
    assert len(ids) == 2 and ids[0] != ids[1]
    for t in TABLES:  # the column is in every table, never null
        assert rows(out, f"SELECT count(*) FROM {t} WHERE session_id IS NULL") == [(0,)], t
    for sid in ids:  # each session: its own facts, its own rows
        assert rows(out, f"SELECT count(*) FROM session WHERE session_id = '{sid}' "
                         "AND key = 'stop_reason'") == [(1,)]
        assert rows(out, f"SELECT count(*) >= 2 FROM gc WHERE session_id = '{sid}'") == [(True,)]
        assert rows(out, f"SELECT count(*) FROM processes WHERE session_id = '{sid}' "
                         "AND event = 'start'") == [(1,)]


def test_report_lists_the_sessions_and_reports_one_with_session(two, tmp_path):
    out, ids = two
    r = scope("report", str(out), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == ("note: 2 sessions in this directory: the figures combine them "
                        "(pick one with --session ID)")
    for line, sid in zip(lines[1:3], ids, strict=True):
        assert line.startswith(f"  session {sid}: ") and line.endswith(", target exited")
    assert not any(ln.startswith("trace:") for ln in lines)  # no span across both
    assert "2 sessions" in (tmp_path / "r.html").read_text()
    (gc_rows, procs), = rows(out, f"SELECT (SELECT count(*) FROM gc WHERE session_id = "
                                  f"'{ids[1]}'), (SELECT count(*) FROM processes WHERE "
                                  f"session_id = '{ids[1]}')")
    assert rows(out, "SELECT count(*) > 0 FROM processes WHERE session_id <> "
                     f"'{ids[1]}'") == [(True,)]  # the other session's, left out below
    r = scope("report", str(out), "-o", str(tmp_path / "one.html"), "--session", ids[1])
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("trace: ") and f"gc {gc_rows:,}, processes {procs:,}," in first
    assert not any(ln.startswith("note:") for ln in r.stdout.splitlines())
    r = scope("query", str(out), "--session", ids[0], "--format", "csv",
              "SELECT DISTINCT session_id FROM gc")
    assert r.stdout == f"session_id\n{ids[0]}\n"
    r = scope("report", str(out), "-o", str(tmp_path / "no.html"), "--session", "nope")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"scope-ebpf: error: no session 'nope' in {out}: it holds {ids[0]}, {ids[1]}"]


def test_trace_refuses_a_trace_too(two, tmp_path):
    out, _ids = two
    target = subprocess.Popen([PY311, "-c", "import sys; print(1, flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        target.stdout.readline()
        r = scope("trace", "--pid", str(target.pid), "--probes", "gc", "-o", str(out))
        assert r.returncode == 2 and "already holds a trace" in r.stderr
        assert r.stderr.count("\n") == 1
        tracer = subprocess.Popen([SCOPE, "trace", "--pid", str(target.pid), "--probes", "gc",
                                   "-o", str(out), "--append"], stderr=subprocess.PIPE, text=True)
        attached(tracer)
        target.stdin.close()  # the target exits: so does trace --pid
        assert tracer.wait(timeout=60) == 0
    finally:
        target.kill()
        target.wait()
    assert len(rows(out, "SELECT DISTINCT session_id FROM session")) == 3


def test_a_session_that_failed_before_loading_leaves_no_trace(tmp_path, monkeypatch):
    """Its -o can be used again without --append (nothing was traced)."""
    from scope_ebpf import controller
    from scope_ebpf.errors import ScopeError

    def no_program(*_a, **_k):
        raise ScopeError("could not compile or load the BPF program")

    monkeypatch.setattr(controller, "Program", no_program)
    s = controller.Session(controller.Options(output=tmp_path / "out"))
    with pytest.raises(ScopeError):
        s.open()
    s.close("error")
    assert _files(tmp_path / "out") == ["session"]  # empty: its reserved part removed
    s = controller.Session(controller.Options(output=tmp_path / "out"))
    with pytest.raises(ScopeError, match="could not compile"):  # not "holds a trace"
        s.open()
    s.close("error")
