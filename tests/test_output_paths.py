"""Where output lands: a symlink anywhere in an output path that a user other
than root can change is refused (run/trace -o, the daemon's root, report -o);
the report and its exports are private like the trace; `report` never replaces
a file it was not told to."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import PY311, scope

from scope_ebpf import safefs
from scope_ebpf.errors import ScopeError
from scope_ebpf.writer import OutputDir

T0 = 1_700_000_000_000_000_000
SUDO = {"SUDO_UID": "4321", "SUDO_GID": "4322"}


@pytest.fixture()
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """/…/x/link -> victim, the link owned by another user (as if planted in /tmp)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    x = tmp_path / "x"
    x.mkdir(mode=0o755)
    link = x / "link"
    link.symlink_to(victim)
    os.chown(link, 4444, 4444, follow_symlinks=False)
    return link, victim


def _refused(path: Path) -> str:
    with pytest.raises(ScopeError) as e:
        os.close(safefs.open_root(str(path), safefs.AS_CREATED))
    return str(e.value)


def test_symlinks_in_parents_only_followed_when_only_root_can_change_them(tmp_path, planted):
    link, victim = planted
    x = link.parent
    msg = _refused(link / "scope-out")
    assert f"{link} is a symlink that a user other than root can change" in msg
    assert msg.startswith(f"output path {link}/scope-out: ")
    assert _refused(link / "deeper" / "scope-out")  # not the last-but-one component either
    # root's link in a directory others may write to: they could replace it
    os.chown(link, 0, 0, follow_symlinks=False)
    x.chmod(0o777)
    assert "is a symlink" in _refused(link / "scope-out")
    x.chmod(0o775)
    os.chown(x, 0, 4444)  # group-writable by a group that is not root's alone
    assert "is a symlink" in _refused(link / "scope-out")
    os.chown(x, 4444, 0)  # another user's directory
    x.chmod(0o755)
    assert "is a symlink" in _refused(link / "scope-out")
    # a link that leads to one planted further on
    os.chown(x, 0, 0)
    (tmp_path / "y").mkdir(mode=0o755)
    link.unlink()
    link.symlink_to(tmp_path / "y")
    (tmp_path / "y" / "inner").symlink_to(victim)
    os.chown(tmp_path / "y" / "inner", 4444, 4444, follow_symlinks=False)
    assert f"{tmp_path}/y/inner is a symlink" in _refused(link / "inner" / "scope-out")
    assert list(victim.iterdir()) == []
    # root's link in root's 0755 directory (like /var/run -> /run) is followed
    os.close(safefs.open_root(str(link / "scope-out"), safefs.AS_CREATED))
    assert (tmp_path / "y" / "scope-out").is_dir()
    # missing parents are still created, as before
    os.close(safefs.open_root(str(tmp_path / "a" / "b" / "out"), safefs.AS_CREATED))
    assert (tmp_path / "a" / "b" / "out").is_dir()


@pytest.mark.skipif(not os.path.islink("/var/run"), reason="/var/run is not a symlink here")
def test_system_symlinks_like_var_run_are_followed():
    fd = safefs.open_dir("/var/run/.")
    try:
        assert os.path.samestat(os.fstat(fd), os.stat("/var/run/"))
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_run_and_daemon_refuse_a_planted_symlink_in_the_output_path(tmp_path, planted):
    link, victim = planted
    r = scope("run", "-o", str(link / "scope-out"), "--probes", "gc", "--", PY311, "-c", "pass")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"{link} is a symlink that a user other than root can change" in r.stderr
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[output]\nroot = "{link}/scope-out"\n[[select]]\nexe = "*"\n')
    cfg.chmod(0o600)
    r = scope("daemon", "--config", str(cfg))
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert "output.root" in r.stderr and "is a symlink" in r.stderr
    assert list(victim.iterdir()) == []


@pytest.fixture()
def trace(tmp_path: Path) -> Path:
    """A small trace written by the real writer (no kernel needed)."""
    out = OutputDir(tmp_path / "trace")
    out.writer("calls").write(pa.table({
        "start_ns": pa.array([T0, T0 + 1000, T0 + 5000], pa.int64()),
        "duration_ns": pa.array([9000, 3000, 1000], pa.int64()),
        "pid": [7, 7, 7], "tid": [7, 7, 7], "depth": [0, 1, 1],
        "function": ["main", "work", "work"], "file": ["/a.py"] * 3, "line": [1, 5, 5],
        "weight": [1, 1, 1], "stack_id": [1, 2, 2], "self_ns": [5000, 3000, 1000],
        "offcpu_ns": [0, 0, 0], "self_offcpu_ns": [0, 0, 0]}))
    out.writer("stacks").write(pa.table({
        "pid": [7, 7], "stack_id": [1, 2], "parent_stack_id": [None, 1], "depth": [0, 1],
        "function": ["main", "work"], "file": ["/a.py"] * 2, "line": [1, 5],
        "path": [["main"], ["main", "work"]]}))
    out.writer("session").write(
        pa.table({"key": ["stop_reason"], "value": ["target exited"],
                  "count": pa.array([0], pa.int64())}))
    out.close()
    return tmp_path / "trace"


def test_report_and_exports_are_private_and_the_sudo_users(tmp_path, trace):
    env = dict(os.environ, **SUDO)
    for fmt, name in (("html", "r.html"), ("folded", "f.txt"), ("speedscope", "s.json")):
        r = scope("report", str(trace), "-q", "--format", fmt, "-o", str(tmp_path / name),
                  env=env)
        assert r.returncode == 0, r.stderr
        st = (tmp_path / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 4322, 0o600), fmt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "r.html", "s.json", "trace"]
    assert "main (/a.py:1);work (/a.py:5) 4000" in (tmp_path / "f.txt").read_text()


def test_report_never_replaces_a_file_it_was_not_told_to(tmp_path, trace, planted):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = scope("report", str(trace), "-q", cwd=cwd)
    assert r.returncode == 0 and (cwd / "report.html").read_text().startswith("<!DOCTYPE")
    mine = cwd / "report.html"
    mine.write_text("mine")
    r = scope("report", str(trace), cwd=cwd)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert "report.html exists" in r.stderr and "--force" in r.stderr
    assert mine.read_text() == "mine"
    named = cwd / "named.html"
    named.write_text("mine")
    r = scope("report", str(trace), "-q", "-o", str(named))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and named.read_text() == "mine"
    r = scope("report", str(trace), "-q", "-o", str(named), "--force")
    assert r.returncode == 0 and named.read_text().startswith("<!DOCTYPE")
    r = scope("report", str(trace), "-q", "--force", cwd=cwd)
    assert r.returncode == 0 and mine.read_text().startswith("<!DOCTYPE")
    # --force replaces a file, never writes through a symlink or into a device
    victim_file = tmp_path / "victim.txt"
    victim_file.write_text("keep")
    (cwd / "l.html").symlink_to(victim_file)
    r = scope("report", str(trace), "-q", "-o", str(cwd / "l.html"), "--force")
    assert r.returncode == 2 and "not a regular file" in r.stderr
    assert victim_file.read_text() == "keep" and (cwd / "l.html").is_symlink()
    link, victim = planted
    r = scope("report", str(trace), "-q", "-o", str(link / "r.html"))
    assert r.returncode == 2 and "is a symlink that a user other than root" in r.stderr
    assert list(victim.iterdir()) == []
    assert sorted(p.name for p in cwd.iterdir()) == ["l.html", "named.html", "report.html"]


def test_exports_without_output_go_to_stdout(tmp_path, trace):
    r = scope("report", str(trace), "--format", "folded", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "main (/a.py:1) 5000\nmain (/a.py:1);work (/a.py:5) 4000\n"
    assert r.stderr == ""
    r = scope("report", str(trace), "--format", "speedscope", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["profiles"][0]["events"]) == 6  # 3 calls: open, close
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace"]
