"""Where output lands: a symlink anywhere in an output path that a user other
than root can change is refused (run/trace -o, the daemon's root, report -o);
the report and its exports are private like the trace; `report` never replaces
a file it was not told to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import PY311, scope

from scope_ebpf import safefs
from scope_ebpf.errors import ScopeError


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
