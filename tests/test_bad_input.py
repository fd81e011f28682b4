"""Bad input: one clear line on stderr, a non-zero exit, no traceback, no output."""

from __future__ import annotations

import platform
import shutil
import subprocess
import time

import pytest
from conftest import PY311, SCOPE, scope

from scope_ebpf import program
from scope_ebpf.errors import ScopeError


def _one_error_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr
    for w in words:
        assert w in errors[0], errors[0]


@pytest.fixture
def noprobes_python(tmp_path):
    """Debian's 3.11 with its USDT notes removed: an interpreter built without probes."""
    path = tmp_path / "python3.11-noprobes"
    subprocess.run(["objcopy", "--remove-section", ".note.stapsdt", PY311, str(path)],
                   check=True)
    return str(path)


def test_no_such_pid(tmp_path):
    r = scope("trace", "--pid", "4194303", "-o", str(tmp_path / "o"))
    _one_error_line(r, "no such process: 4194303")
    assert not (tmp_path / "o").exists()


def test_pid_that_is_not_python(tmp_path):
    p = subprocess.Popen(["sleep", "30"])
    try:
        r = scope("trace", "--pid", str(p.pid), "-o", str(tmp_path / "o"))
    finally:
        p.kill()
        p.wait()
    _one_error_line(r, f"process {p.pid}", "not a CPython with USDT probes")


def test_interpreter_without_probes_run_and_trace(tmp_path, noprobes_python):
    """A build without probes gives no calls, gc or imports: without the stacks set
    that is one error line; with the default probes both commands sample its
    stacks instead and say so in one line."""
    r = scope("run", "--probes", "gc", "-o", str(tmp_path / "o"), "--", noprobes_python,
              "-c", "pass")
    _one_error_line(r, "has no CPython USDT probes")
    r = scope("run", "-o", str(tmp_path / "r"), "--", noprobes_python, "-c", "pass")
    assert r.returncode == 0, r.stderr
    assert "no USDT probes in this build: sampling its Python stacks" in r.stderr
    p = subprocess.Popen([noprobes_python, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        r = scope("trace", "--pid", str(p.pid), "--probes", "gc", "-o", str(tmp_path / "o"))
        _one_error_line(r, "not a CPython with USDT probes")
        r = scope("trace", "--pid", str(p.pid), "-d", "1", "-o", str(tmp_path / "t"))
        assert r.returncode == 0, r.stderr
        assert "no USDT probes in this build: sampling its Python stacks" in r.stderr
    finally:
        p.kill()
        p.wait()


def test_command_that_does_not_exist(tmp_path):
    r = scope("run", "-o", str(tmp_path / "o"), "--", "no-such-command-xyz")
    _one_error_line(r, "command not found: no-such-command-xyz")


def test_command_that_is_not_python(tmp_path):
    r = scope("run", "-o", str(tmp_path / "o"), "--", "/bin/true")
    _one_error_line(r, "no CPython USDT probes")


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = scope("run", "-o", str(blocker / "out"), "--", PY311, "-c", "pass")
    _one_error_line(r, str(blocker / "out"))
    r = scope("run", "-o", "/proc/scope-out", "--", PY311, "-c", "pass")
    _one_error_line(r, "/proc/scope-out")


def test_bad_probe_set(tmp_path):
    r = scope("run", "--probes", "calls,nope", "-o", str(tmp_path / "o"), "--", PY311, "-c", "1")
    _one_error_line(r, "unknown probe set nope")


def test_not_root(tmp_path):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv missing")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        SCOPE, "trace", "--pid", "1", "-o", "/tmp/never-created-by-nobody"],
                       capture_output=True, text=True, timeout=60)
    _one_error_line(r, "needs root")


def test_missing_kernel_headers(monkeypatch):
    monkeypatch.setattr(platform, "release", lambda: "0.0.0-no-such-kernel")
    with pytest.raises(ScopeError, match=r"kernel headers missing at "
                                         r"/lib/modules/0.0.0-no-such-kernel/build"):
        program.check_environment()


def test_query_errors(tmp_path):
    r = scope("query", str(tmp_path / "missing"), "SELECT 1")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "missing" in r.stderr


def test_compile_error_is_one_line_and_leaves_nothing_loaded(tmp_path, monkeypatch):
    # The loader child's compiler output becomes one ScopeError line.
    from scope_ebpf import events

    (tmp_path / "scope.h").write_text(events.HEADER.read_text())
    (tmp_path / "scope.bpf.c").write_text('#include "scope.h"\nint broken( { return 0; }\n')
    monkeypatch.setattr(events, "BPF_DIR", tmp_path)
    program._pending.clear()
    with pytest.raises(ScopeError, match="could not compile or load the BPF program") as e:
        program.Program()
    assert "\n" not in str(e.value)
