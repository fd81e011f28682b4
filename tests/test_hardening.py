"""A root tool on production hosts: private output, no symlink tricks, secrets
kept out of the trace, and every fault leaving valid files and no probes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import PY311, SCOPE, program, rows, scope, session_count, session_value

from scope_ebpf import safefs, usdt
from scope_ebpf.redact import Redactor

pytestmark = pytest.mark.kernel


# -- redaction (pure logic) ---------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["app.py", "--password=hunter2", "--port", "80"],
     ["app.py", "--password=***", "--port", "80"]),
    (["app.py", "--db-password", "hunter2", "-v"], ["app.py", "--db-password", "***", "-v"]),
    (["app.py", "--api-key=abc", "--token", "t0k"], ["app.py", "--api-key=***", "--token", "***"]),
    (["env", "DB_PASSWORD=s3cret", "token=abc", "HOME=/root"],
     ["env", "DB_PASSWORD=***", "token=***", "HOME=/root"]),
    (["psql", "postgres://app:pa55w0rd@db.internal:5432/x"],
     ["psql", "postgres://app:***@db.internal:5432/x"]),
    (["curl", "-H", "X: 8fK2pQ9zLm3xV7bN1cR5tY0wA4sD6gH2"], ["curl", "-H", "X: ***"]),
    # not secrets: paths, words, versions, short ids
    (["/usr/lib/python3.11/site-packages/gunicorn/app.py", "--workers", "4", "1.2.3"],
     ["/usr/lib/python3.11/site-packages/gunicorn/app.py", "--workers", "4", "1.2.3"]),
    (["manage.py", "runserver", "--settings=config.settings_production_server"],
     ["manage.py", "runserver", "--settings=config.settings_production_server"]),
])
def test_default_redaction(argv, expected):
    assert Redactor().argv(argv) == expected


def test_extra_patterns_and_no_redact():
    assert Redactor([r"customer-\d+"]).argv(["x", "--for=customer-42"]) == ["x", "--for=***"]
    assert Redactor(defaults=False).argv(["x", "--password=a"]) == ["x", "--password=a"]


# -- output ownership and no-follow ----------------------------------------------

def _gc_run(out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, **(env or {}))
    return scope("run", "-o", str(out), "--probes", "gc", *extra, "--", PY311, "-c",
                 "import gc; gc.collect()", env=e)


def test_output_belongs_to_the_sudo_user_and_is_private(tmp_path):
    out = tmp_path / "out"
    r = _gc_run(out, env={"SUDO_UID": "4321", "SUDO_GID": "4322"})
    assert r.returncode == 0, r.stderr
    files = [p for p in out.rglob("*")]
    assert files
    for p in [out, *files]:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (4321, 4322), p
        assert stat.S_IMODE(st.st_mode) == (0o700 if p.is_dir() else 0o600), p
    shared = tmp_path / "shared"
    r = _gc_run(shared, "--group", "daemon", env={"SUDO_UID": "4321", "SUDO_GID": "4322"})
    assert r.returncode == 0, r.stderr
    gid = safefs.group_id("daemon")
    for p in [shared, *shared.rglob("*")]:
        st = p.stat()
        assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == (0o750 if p.is_dir()
                                                                else 0o640), p
    r = _gc_run(tmp_path / "x", "--group", "no-such-group-here")
    assert r.returncode == 2 and "no such group" in r.stderr


def test_planted_symlinks_and_foreign_directories_are_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    link = tmp_path / "out"
    link.symlink_to(victim)
    r = _gc_run(link)
    assert r.returncode == 2 and "is a symlink" in r.stderr and r.stderr.count("\n") == 1
    assert list(victim.iterdir()) == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 4444, 4444)
    r = _gc_run(foreign)
    assert r.returncode == 2 and "belongs to another user" in r.stderr
    assert list(foreign.iterdir()) == []
    # a table directory planted as a symlink inside an existing root
    root = tmp_path / "root"
    root.mkdir()
    (root / "gc").symlink_to(victim)
    r = _gc_run(root)
    assert r.returncode != 0 and list(victim.iterdir()) == []


def test_files_are_never_truncated_or_replaced(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "existing").write_text("keep")
        with pytest.raises(FileExistsError):
            safefs.create(fd, "existing", safefs.AS_CREATED)
        (tmp_path / "target").write_text("other")
        os.symlink(tmp_path / "target", tmp_path / "link")
        with pytest.raises(FileExistsError):
            safefs.create(fd, "link", safefs.AS_CREATED)
        os.close(safefs.create(fd, "new.tmp", safefs.AS_CREATED))
        with pytest.raises(FileExistsError):
            safefs.publish(fd, "new.tmp", "existing")
        assert (tmp_path / "existing").read_text() == "keep"
        assert (tmp_path / "target").read_text() == "other"
    finally:
        os.close(fd)


def test_command_lines_are_redacted_in_the_trace(tmp_path):
    out = tmp_path / "out"
    r = scope("run", "-o", str(out), "--probes", "gc", "--", PY311, program("gcs.py"),
              "--password=hunter2", "postgres://app:pa55w0rd@db/x")
    assert r.returncode == 0, r.stderr
    cmd = session_value(out, "command")
    assert "hunter2" not in cmd and "pa55w0rd" not in cmd
    assert "--password=***" in cmd and "app:***@db" in cmd
    got = rows(out, "SELECT cmdline FROM processes WHERE event = 'start'")
    assert got and all("hunter2" not in c and "pa55w0rd" not in c for (c,) in got)


# -- faults: the kernel state is checked, not the tracer's word --------------------

def semaphore(pid: int, binary: str = PY311) -> int:
    """The function__entry semaphore as the target process sees it."""
    probe = next(p for p in usdt.read_probes(binary) if p.name == "function__entry")
    real = os.path.realpath(binary)
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6 or parts[5] != real:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            off = int(parts[2], 16)
            if off <= probe.semaphore_offset < off + (hi - lo):
                addr = lo + probe.semaphore_offset - off
                with open(f"/proc/{pid}/mem", "rb") as mem:
                    mem.seek(addr)
                    return int.from_bytes(mem.read(2), "little")
    raise AssertionError("semaphore not mapped")


@pytest.fixture
def sentinel():
    """A running 3.11 that nobody traces: its semaphore says whether probes remain."""
    p = subprocess.Popen([PY311, "-c", "import time; time.sleep(120)"])
    time.sleep(0.3)
    yield p
    p.kill()
    p.wait()


def _wait_line(proc: subprocess.Popen, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    pytest.fail(f"no {text!r} from the tracer")


def _valid_parts(out: Path) -> None:
    for f in out.rglob("*.parquet"):
        pq.read_metadata(f)


def test_tracer_killed_leaves_no_probes_and_closed_files_valid(tmp_path, sentinel):
    target = subprocess.Popen([PY311, program("forever.py"), "30"], stdout=subprocess.PIPE)
    pid = int(target.stdout.readline())
    out = tmp_path / "out"
    tracer = subprocess.Popen([SCOPE, "trace", "--pid", str(pid), "-o", str(out)],
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_line(tracer, "tracing")
        time.sleep(0.5)
        assert semaphore(pid) >= 1 and semaphore(sentinel.pid) >= 1  # live, host-wide
        tracer.kill()
        tracer.wait()
        time.sleep(0.2)
        assert semaphore(pid) == 0 and semaphore(sentinel.pid) == 0
        assert target.poll() is None  # the target runs on
        _valid_parts(out)
    finally:
        target.kill()
        target.wait()


def test_sigterm_with_a_full_ring_buffer(tmp_path, sentinel):
    """The tracer is stopped (SIGSTOP) while the target fills the calls buffer;
    SIGTERM then still drains, counts the loss and closes everything."""
    out = tmp_path / "out"
    tracer = subprocess.Popen([SCOPE, "run", "-o", str(out), "--max-rate", "0", "--", PY311,
                               program("busy.py"), "4"], stderr=subprocess.PIPE, text=True)
    try:
        _wait_line(tracer, "tracing")
        time.sleep(0.5)
        tracer.send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        tracer.send_signal(signal.SIGTERM)
        tracer.send_signal(signal.SIGCONT)
        tracer.send_signal(signal.SIGTERM)  # a second signal stops tracing at once
        assert tracer.wait(timeout=60) in (0, 143)
    finally:
        if tracer.poll() is None:
            tracer.kill()
    _valid_parts(out)
    assert session_count(out, "kernel.calls_lost") > 0
    assert semaphore(sentinel.pid) == 0


def test_disk_full_stops_tracing_with_a_clear_message(tmp_path, sentinel):
    """One error line naming the file and the cause, exit 2; the session table,
    allocated when the output opened, still holds every counter."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        out = mnt / "out"
        r = scope("run", "-o", str(out), "--max-rate", "0", "--", PY311,
                  program("busy.py"), "6", timeout=120)
        assert r.returncode == 2, r.stderr
        errors = [ln for ln in r.stderr.splitlines() if "error" in ln]
        assert errors == [f"scope-ebpf: error: cannot write {out}/calls/part-00000.parquet: "
                          "No space left on device"], r.stderr
        _valid_parts(out)  # every closed part is complete
        assert not list(out.rglob("*.tmp"))
        assert session_value(out, "stop_reason") == errors[0].removeprefix("scope-ebpf: ")
        assert session_value(out, "output_error") == errors[0].removeprefix(
            "scope-ebpf: error: ")
        assert session_count(out, "kernel.entries") > 0
        assert session_count(out, "rows.calls") == 0  # its part was lost: none on disk
        assert semaphore(sentinel.pid) == 0
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_table_directory_replaced_by_a_symlink_while_tracing(tmp_path, sentinel):
    """A symlink planted as calls/ after start: one error line naming it (was
    ``internal error: BufferError``: ring buffer views kept alive by the failed
    write's traceback stopped the ring from being unmapped), nothing written
    through it, the session table kept."""
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.mkdir()
    # -S: no sitecustomize, so no profile hook and no calls rows until setprofile;
    # then it waits again, so the failure meets the tracing loop, not the last drain.
    # --include: without a hook 3.11 still fires the entry probe of frames entered
    # from C, and start-up has a few (getpath's genexpr, _collections_abc): their
    # rows made calls/ at the first drain, before the symlink, in 1 run of 4
    code = ("import os, sys\nos.read(0, 1)\nsys.setprofile(slice)\n"
            "def f():\n    pass\nfor _ in range(1000):\n    f()\n"
            "sys.setprofile(None)\nos.read(0, 1)\n")
    tracer = subprocess.Popen([SCOPE, "run", "-o", str(out), "--include", "<string>:f", "--",
                               PY311, "-S", "-c", code],
                              stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_line(tracer, "tracing")
        assert not (out / "calls").exists()
        (out / "calls").symlink_to(victim)
        tracer.stdin.write("x")
        tracer.stdin.flush()
        code = tracer.wait(timeout=60)  # a line or two: they fit in the pipe
    finally:
        tracer.stdin.close()  # the program exits, and with it the last stderr writer
        if tracer.poll() is None:
            tracer.kill()
    rest = tracer.stderr.read()
    assert code == 2, rest
    assert rest.splitlines() == [f"scope-ebpf: error: cannot create a part in {out}/calls: "
                                 "a symlink, not followed"], rest
    assert list(victim.iterdir()) == []
    _valid_parts(out)
    assert not list(out.rglob("*.tmp"))
    assert session_value(out, "output_error") == rest.splitlines()[0].removeprefix(
        "scope-ebpf: error: ")
    assert session_value(out, "stop_reason").startswith("error: cannot create a part in")
    assert session_count(out, "kernel.entries") > 0
    assert semaphore(sentinel.pid) == 0


def test_session_facts_go_to_stderr_when_its_table_cannot_be_written(tmp_path):
    from scope_ebpf.controller import Options, Session
    from scope_ebpf.writer import OutputError

    said: list[str] = []
    s = Session(Options(output=tmp_path / "out"), said.append)

    class Broken:
        writers: dict = {}

        def writer(self, table):
            raise OutputError(f"cannot write {table}: No space left on device")

    s.out = Broken()
    s.warn("first warning")
    s._write_session(s._session_rows("error: disk full", {"kernel.calls_lost": 3}))
    assert said[-1].startswith("session table not written: {")
    facts = json.loads(said[-1].removeprefix("session table not written: "))
    assert facts["session_id"] == s.session_id and facts["stop_reason"] == "error: disk full"
    assert facts["kernel.calls_lost"] == 3 and facts["warnings"] == ["first warning"]


def test_target_killed_or_execing_into_something_else(tmp_path, sentinel):
    out = tmp_path / "exec"
    r = scope("run", "-o", str(out), "--", PY311, "-c",
              "import os; os.execv('/bin/sleep', ['sleep', '0.3'])")
    assert r.returncode == 0, r.stderr
    # the launch itself, then the exec into a program without Python
    assert rows(out, "SELECT exe FROM processes WHERE event = 'exec' ORDER BY ts_ns") == [
        (PY311,), ("/bin/sleep",)]
    target = subprocess.Popen([PY311, program("forever.py"), "30"], stdout=subprocess.PIPE)
    pid = int(target.stdout.readline())
    out = tmp_path / "killed"
    tracer = subprocess.Popen([SCOPE, "trace", "--pid", str(pid), "-o", str(out)],
                              stderr=subprocess.PIPE, text=True)
    _wait_line(tracer, "tracing")
    time.sleep(0.5)
    target.kill()
    target.wait()
    assert tracer.wait(timeout=30) == 0
    assert session_value(out, "stop_reason") is not None
    assert rows(out, f"SELECT count(*) > 0 FROM calls WHERE pid = {pid}") == [(True,)]
    assert semaphore(sentinel.pid) == 0


def test_forked_children_are_followed(tmp_path):
    """Documented: a target's children are traced too (the kernel adds them)."""
    out = tmp_path / "out"
    r = scope("run", "-o", str(out), "--", PY311, program("forker.py"))
    assert r.returncode == 0, r.stderr
    child = int(r.stdout.split()[-1])
    got = rows(out, "SELECT pid, function, count(*) FROM calls WHERE function IN "
                    "('in_child', 'in_parent') GROUP BY ALL ORDER BY function")
    parent = got[1][0]
    assert got == [(child, "in_child", 7), (parent, "in_parent", 3)]
    assert rows(out, f"SELECT parent_pid FROM processes WHERE event = 'fork' "
                     f"AND pid = {child}") == [(parent,)]
