"""The command line: every option checked before anything starts, one duration
syntax, unknown options refused, usage errors in the one-line style, `daemon
--check` as strict as start-up, and messages that say what is actually wrong."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import scope


def _only_error(r: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 and nothing on stderr but one `error:` line; returns it."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scope-ebpf: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


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
