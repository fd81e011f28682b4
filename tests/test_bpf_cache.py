"""The loader's cache of compiled programs (scope_ebpf/loader.py).

A first load compiles and keeps the result; a second with the same request
loads it without compiling, and the programs work: a stacks session loaded
from the cache samples a real process. An entry that is damaged or that
others could have written is not used, and a cache directory others can
write is not used at all. Each test has its own cache directory
(SCOPE_EBPF_BPF_CACHE, read by the loader child).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scope_ebpf.controller import Options, Session

pytestmark = pytest.mark.kernel

SPIN = "import time\nprint(1, flush=True)\nend = time.time() + 30\nwhile time.time() < end: pass"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("SCOPE_EBPF_BPF_CACHE", str(d))
    return d


def _open(out: Path) -> Session:
    s = Session(Options(out, probes=frozenset({"stacks"}), sample_hz=499))
    s.open()
    return s


def test_second_load_comes_from_the_cache_and_works(cache: Path, tmp_path: Path) -> None:
    s = _open(tmp_path / "a")
    try:
        assert not s.program.cached
    finally:
        s.close()
    entries = list(cache.iterdir())
    assert len(entries) == 1 and entries[0].stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700
    s = _open(tmp_path / "b")
    target = subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE)
    try:
        assert s.program.cached
        target.stdout.readline()
        s.add_pid(target.pid)
        n0 = s.program.stat("samples")
        while s.program.stat("samples") - n0 < 50:  # 499 Hz: about 0.1 s of its CPU
            s.poll()
        s.poll()
        assert s.stacks.counts["stacks.sampled"] >= 1  # stacks walked and resolved
    finally:
        target.kill()
        target.wait()
        s.close()


@pytest.mark.parametrize("damage", ["garbage", "group-writable"])
def test_a_bad_entry_is_not_used(cache: Path, tmp_path: Path, damage: str) -> None:
    _open(tmp_path / "a").close()
    (entry,) = cache.iterdir()
    if damage == "garbage":
        entry.write_text("{not json")
    else:
        entry.chmod(0o620)
    s = _open(tmp_path / "b")
    try:
        assert not s.program.cached  # compiled again
    finally:
        s.close()
    (entry,) = cache.iterdir()  # and stored again, sound
    assert entry.stat().st_mode & 0o777 == 0o600
    s = _open(tmp_path / "c")
    try:
        assert s.program.cached
    finally:
        s.close()


def test_a_directory_others_can_write_is_not_used(cache: Path, tmp_path: Path) -> None:
    cache.mkdir()
    cache.chmod(0o777)
    _open(tmp_path / "a").close()
    assert list(cache.iterdir()) == []


def test_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOPE_EBPF_BPF_CACHE", "off")
    s = _open(tmp_path / "a")
    try:
        assert not s.program.cached
    finally:
        s.close()


def test_old_entries_are_pruned(cache: Path, tmp_path: Path) -> None:
    """Each new version or checkout adds an entry: all but the 64 used last go."""
    cache.mkdir(mode=0o700)
    old = time.time() - 3600
    for i in range(70):
        f = cache / f"{i:064x}.json"
        f.write_text("{}")
        f.chmod(0o600)
        os.utime(f, (old + i, old + i))
    _open(tmp_path / "a").close()  # a miss: compiled, stored, pruned
    left = sorted(p.name for p in cache.iterdir())
    assert len(left) == 64
    assert f"{0:064x}.json" not in left and f"{69:064x}.json" in left  # the oldest went
