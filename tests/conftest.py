"""Shared helpers: run the real CLI against real CPython, read back with DuckDB."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from scope_ebpf.query import connect

PY311 = "/usr/bin/python3.11"
PROGRAMS = Path(__file__).parent / "programs"
SCOPE = str(Path(sys.executable).parent / "scope-ebpf")


def scope(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run the scope-ebpf console script; output captured as text."""
    return subprocess.run([SCOPE, *args], capture_output=True, text=True, timeout=timeout, **kw)


class Ticker:
    """tests/programs/ticker.py in a process of its own: it ticks until go(), then
    ``after`` ticks more and exits. ``root``: run it chrooted there (sid)."""

    def __init__(self, python: str, go: Path, after: int = 100, root: Path | None = None):
        self.go_path = go
        if root is None:
            argv = [python, program("ticker.py"), str(go), str(after)]
        else:
            argv = ["chroot", str(root), python, "/tmp/scope-tests/ticker.py",
                    "/" + str(go.relative_to(root)), str(after)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.pid = int(self.proc.stdout.readline())

    def go(self) -> None:
        self.go_path.touch()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def attached(tracer: subprocess.Popen, text: str = "tracing") -> str:
    """Read the tracer's stderr until a line with ``text``: the handshake that it has
    attached (however long that takes on this machine). Returns what was read."""
    seen = []
    for line in tracer.stderr:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError("the tracer ended before attaching: " + "".join(seen))


def program(name: str) -> str:
    return str(PROGRAMS / name)


PYENV = Path("/root/.pyenv/versions")


def pyenv_python(minor: int) -> str | None:
    """pyenv's newest CPython 3.minor (no USDT probes, shared libpython), if built."""
    found = sorted(glob.glob(str(PYENV / f"3.{minor}.*" / "bin" / f"python3.{minor}")))
    return found[-1] if found else None


class GoTarget:
    """A program of tests/programs run as ``NAME GO RESULT ARGS...``: it prints its
    pid, waits for the file GO (start()), and writes RESULT (JSON, by rename) when
    done. Chrooted into ``root`` (the sid fixture's, programs in /tmp/scope-tests)
    if given; ``stdin`` keeps a pipe to it open (programs that live until it closes)."""

    def __init__(self, name: str, python: str, args: list[str], root: Path | None = None,
                 stdin: bool = False) -> None:
        tag = uuid.uuid4().hex[:8]
        base = (root / "tmp") if root else Path("/tmp")
        self.go, self.result = base / f"scope-go-{tag}", base / f"scope-res-{tag}.json"
        if root is None:
            argv = [python, program(name), str(self.go), str(self.result)]
        else:
            argv = ["chroot", str(root), python, f"/tmp/scope-tests/{name}",
                    f"/tmp/{self.go.name}", f"/tmp/{self.result.name}"]
        self.proc = subprocess.Popen(argv + args, stdin=subprocess.PIPE if stdin else None,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = int(self.proc.stdout.readline())

    def start(self) -> None:
        self.go.touch()

    def read_result(self) -> dict:
        return json.loads(self.result.read_text())

    def cleanup(self) -> None:
        self.go.unlink(missing_ok=True)
        self.result.unlink(missing_ok=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.cleanup()


def rows(out: Path, sql: str) -> list[tuple]:
    con = connect(out)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def session_value(out: Path, key: str) -> str | None:
    r = rows(out, f"SELECT value FROM session WHERE key = '{key}'")
    return r[0][0] if r else None


def session_count(out: Path, key: str) -> int | None:
    r = rows(out, f"SELECT count FROM session WHERE key = '{key}'")
    return r[0][0] if r else None


@pytest.fixture(autouse=True, scope="session")
def _root_and_interpreter():
    if os.geteuid() != 0:
        pytest.exit("the suite loads BPF programs: run it as root (make test)", returncode=2)
    if not os.path.exists(PY311):
        pytest.exit(f"{PY311} missing: run make setup", returncode=2)


SID = Path(__file__).resolve().parent.parent / ".interpreters" / "sid"


@pytest.fixture(scope="module")
def sid() -> Path:
    """The Debian sid root (3.13/3.14/3.15) with the test programs in /tmp/scope-tests."""
    import shutil

    if not (SID / ".scope-interpreters").exists():
        pytest.fail("the sid root is missing: run `make interpreters`")
    dest = SID / "tmp" / "scope-tests"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(PROGRAMS, dest)
    return SID
