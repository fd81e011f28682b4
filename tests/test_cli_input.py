"""The command line: every option checked before anything starts, one duration
syntax, unknown options refused, usage errors in the one-line style, `daemon
--check` as strict as start-up, and messages that say what is actually wrong."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PY311, SCOPE, SID, Ticker, attached, rows, scope, session_value

from scope_ebpf.errors import ScopeError
from scope_ebpf.units import parse_duration


def _only_error(r: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 and nothing on stderr but one `error:` line; returns it."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scope-ebpf: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# (option, bad value, what the error line names): every option of run/trace that takes
# a pattern, a duration, a size or a number, with values that used to pass until later.
BAD_OPTIONS = [
    ("--include", "re:(", "--include"),
    ("--exclude", "*:get[0-9", "--exclude"),
    ("--thread-name", "re:[", "--thread-name"),
    ("--thread-name", "", "--thread-name"),
    ("--redact", "(", "--redact"),
    ("--min-duration", "500", "--min-duration needs a unit"),
    ("--min-duration", "2 parsecs", "--min-duration"),
    ("-d", "0", "--duration must be positive"),
    ("-d", "0s", "--duration must be positive"),
    ("-d", "-1s", "--duration must not be negative"),
    ("-d", "30x", "--duration: unknown unit 'x'"),
    ("--max-output", "5Q", "--max-output"),
    ("--max-output", "-1MB", "--max-output"),
    ("--max-rate", "inf", "--max-rate needs a finite number"),
    ("--max-rate", "1e400", "--max-rate needs a finite number"),
    ("--breaker-rate", "nan", "--breaker-rate needs a finite number"),
    ("--max-cpu", "-5", "--max-cpu must not be negative"),
    ("--tid", "0", "--tid 0 is not a thread id"),
    ("--tid", "99999999999", "is not a thread id"),
    ("--group", "no-such-group-h14", "no such group"),
    ("--probes", "calls,cpu", "unknown probe set cpu"),
]


@pytest.mark.parametrize(("option", "value", "says"), BAD_OPTIONS,
                         ids=[f"{o}={v}" for o, v, _ in BAD_OPTIONS])
def test_bad_option_refused_before_anything_starts(tmp_path, option, value, says):
    marker = tmp_path / "started"
    out = tmp_path / "out"
    # run: the program would create the marker as its first act
    r = scope("run", "-o", str(out), option, value, "--", PY311, "-c",
              f"open({str(marker)!r}, 'w')")
    _only_error(r, says)
    assert not marker.exists(), "the program was started"
    assert not out.exists(), "an output directory was created"
    # trace: refused before the target is even looked at
    r = scope("trace", "--pid", str(os.getpid()), "-o", str(out), option, value)
    _only_error(r, says)
    assert not out.exists()


def test_trace_exe_that_does_not_exist_creates_no_output(tmp_path):
    out = tmp_path / "out"
    _only_error(scope("trace", "--exe", "/no/such/python", "-o", str(out)),
                "no such file: /no/such/python")
    assert not out.exists()


def test_unknown_option_before_the_command_is_an_error_with_a_suggestion(tmp_path):
    marker = tmp_path / "started"
    out = tmp_path / "out"
    for args in (["--max-rat", "5", "--"], ["--max-rat", "5"]):
        r = scope("run", "-o", str(out), *args, PY311, "-c", f"open({str(marker)!r}, 'w')")
        assert r.returncode == 2, r.stderr
        assert r.stderr.splitlines() == [
            "scope-ebpf: error: no such option: --max-rat. Did you mean --max-rate?",
            "scope-ebpf: try 'scope-ebpf run --help'"]
    r = scope("run", "--bogus", "--", PY311, "-c", f"open({str(marker)!r}, 'w')")
    assert r.stderr.splitlines()[0] == "scope-ebpf: error: no such option: --bogus"
    assert not marker.exists() and not out.exists()


def test_options_after_the_command_name_are_the_commands(tmp_path):
    # -d takes the shared duration syntax (30s); what follows the command name,
    # option-like or not, is the program's argv, untouched
    out = tmp_path / "out"
    r = scope("run", "-d", "30s", "-o", str(out), PY311, "-c",
              "import sys; print(sys.argv[1:])", "-d", "5", "--bogus", "--", "x")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "['-d', '5', '--bogus', '--', 'x']\n"
    assert session_value(out, "stop_reason") == "target exited"


def test_duration_with_a_unit_stops_run(tmp_path):
    go = tmp_path / "go"
    out = tmp_path / "out"
    wait = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.01)"
    tracer = subprocess.Popen([SCOPE, "run", "-d", "300ms", "-o", str(out), "--", PY311,
                               "-c", wait], stderr=subprocess.PIPE, text=True)
    pid = None
    try:
        # the program keeps the stderr pipe open: read up to scope-ebpf's last line
        err = attached(tracer, "is still running")
        m = re.search(r"stopped tracing; pid (\d+) is still running", err)
        assert tracer.wait(timeout=60) == 0 and m, err
        pid = int(m[1])
    finally:
        tracer.kill()
        go.touch()  # the program was left running: let it end
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert session_value(out, "stop_reason") == "duration"


@pytest.mark.parametrize(("text", "ns"), [("30", 30_000_000_000), ("1.5", 1_500_000_000),
                                          ("30s", 30_000_000_000), ("5m", 300_000_000_000),
                                          ("250ms", 250_000_000)])
def test_duration_bare_number_is_seconds_only_where_named(text, ns):
    assert parse_duration(text, "--duration", bare="s") == ns
    if text[-1].isdigit():
        with pytest.raises(ScopeError, match="--min-duration needs a unit"):
            parse_duration(text, "--min-duration")


USAGE = [
    (["trace", "--pid", "abc"], "invalid value for '-p' / '--pid'", "trace"),
    (["query"], "missing argument 'DIRECTORY'", "query"),
    (["run"], "missing argument 'COMMAND...'", "run"),
    (["nosuch"], "no such command 'nosuch'", ""),
    (["run", "--root", "/no/such/root", "--", PY311], "invalid value for '--root'", "run"),
    (["report", "x", "--format", "xml"], "invalid value for '--format'", "report"),
    (["--bogus"], "no such option: --bogus", ""),
]


@pytest.mark.parametrize(("args", "says", "command"), USAGE, ids=[" ".join(a) for a, _, _ in USAGE])
def test_usage_errors_are_one_error_line_and_a_hint(args, says, command):
    r = scope(*args)
    assert r.returncode == 2, r.stderr
    help_of = f"scope-ebpf {command}".strip()
    assert r.stderr.splitlines() == [r.stderr.splitlines()[0],
                                     f"scope-ebpf: try '{help_of} --help'"], r.stderr
    assert r.stderr.startswith(f"scope-ebpf: error: {says}"), r.stderr
    assert "Usage:" not in r.stderr and r.stdout == ""


def _config(path: Path, root: str) -> Path:
    path.write_text(f'[output]\nroot = "{root}"\n[[select]]\nexe = "*"\nprobes = ["gc"]\n')
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize("root", ["/proc/nope", "FILE"])
def test_daemon_check_refuses_what_start_up_refuses(tmp_path, root):
    if root == "FILE":
        root = str(tmp_path / "a-file")
        Path(root).write_text("x")
    cfg = _config(tmp_path / "c.toml", root)
    started = scope("daemon", "--config", str(cfg), timeout=60)
    line = _only_error(started, "output.root")
    assert _only_error(scope("daemon", "--config", str(cfg), "--check")) == line


def test_daemon_check_passes_a_config_start_up_accepts(tmp_path):
    cfg = _config(tmp_path / "c.toml", str(tmp_path / "root"))
    r = scope("daemon", "--config", str(cfg), "--check")
    assert r.returncode == 0 and r.stderr.startswith(f"scope-ebpf: {cfg}: ok"), r.stderr
    assert (tmp_path / "root").is_dir()  # created, as start-up creates it


def _no_ptrace(*args: str) -> subprocess.CompletedProcess:
    """scope-ebpf as root but without CAP_SYS_PTRACE."""
    return subprocess.run(["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace",
                           SCOPE, *args], capture_output=True, text=True, timeout=60)


def test_permission_denied_as_root_says_why_not_run_as_root(tmp_path):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv missing")
    target = subprocess.Popen(["sleep", "60"])  # as root, with every capability we hold
    try:
        for args in (["trace", "--pid", str(target.pid), "-o", str(tmp_path / "o")],
                     ["probes", "--pid", str(target.pid)]):
            line = _only_error(_no_ptrace(*args), f"cannot inspect process {target.pid}",
                               "without CAP_SYS_PTRACE")
            assert "run as root" not in line
    finally:
        target.kill()
        target.wait()
    assert not (tmp_path / "o").exists()


def test_trace_311_with_a_hook_is_not_told_calls_will_not_appear(tmp_path):
    target = Ticker(PY311, tmp_path / "go", after=20)  # ticker.py sets its own profile hook
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
    # (a sample taken before the stack layout was read, on a busy machine, is a
    # counted warning of its own, not about calls)
    assert not [line for line in err.splitlines() if "warning:" in line
                and "samples_no_layout" not in line], err
    said = [line for line in err.splitlines() if f"process {target.pid} " in line]
    assert said == [
        f"scope-ebpf: process {target.pid} (CPython 3.11): calls only while it has a profile "
        "or trace hook: sampling its Python stacks at 99 Hz as well (--probes stacks)"], err
    # and it was right to hedge: this process has a hook, so its calls are there
    (n,) = rows(out, "SELECT count(*) FROM calls WHERE function = 'tick'")[0]
    assert n >= 20


@pytest.mark.parametrize("version", ["3.13", "3.14"])
def test_probes_pid_eval_mode_names_activate_where_it_works(sid, tmp_path, version):
    go = SID / "tmp" / "scope-tests" / f"go-h14-{version}"
    go.unlink(missing_ok=True)
    target = Ticker(f"python{version}", go, root=SID)  # ticks until stopped
    try:
        r = scope("probes", "--pid", str(target.pid))
    finally:
        target.stop()
    assert r.returncode == 3, r.stdout + r.stderr
    last = r.stdout.splitlines()[-1]
    assert last.startswith("calls with `trace --pid`: no [eval] "), last
    assert ("`scope-ebpf trace --activate` in a running process" in last) == (version == "3.14")


def test_probes_on_a_file_that_is_not_python(tmp_path):
    r = scope("probes", "--binary", "/bin/ls")
    assert r.returncode == 4
    assert r.stdout == ("/bin/ls is not a CPython interpreter or libpython (no CPython USDT "
                        "probes, no _PyRuntime symbol)\n")
    # a CPython built without probes is still named as one
    stripped = tmp_path / "python3.11"
    subprocess.run(["objcopy", "--remove-section", ".note.stapsdt", PY311, str(stripped)],
                   check=True)
    r = scope("probes", "--binary", str(stripped))
    assert r.returncode == 4
    assert r.stdout.splitlines()[0] == f"{stripped} (CPython 3.11)"
    assert r.stdout.splitlines()[-1].startswith("calls: no (not a CPython with USDT probes")
