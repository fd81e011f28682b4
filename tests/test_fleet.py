"""Fleet mode under churn: processes the daemon adopts in the kernel at their
first instruction, confirmed or ignored by its selectors before any of their
rows is written."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PROGRAMS, PY311, scope
from test_daemon import query, running, write_config

pytestmark = pytest.mark.kernel

PID_TABLES = ("calls", "functions", "gc", "sched", "imports", "audit", "processes",
              "threads", "samples", "stacks", "sampling")


def daemon_status(cfg: Path) -> dict | None:
    r = scope("daemon", "--status", "--json", "-c", str(cfg))
    return json.loads(r.stdout) if r.returncode == 0 else None


def wait_status(cfg: Path, what: str, pred, timeout: float = 120) -> dict:
    """The daemon's status once ``pred`` holds (a handshake, not a time window)."""
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = daemon_status(cfg)
        if st is not None and pred(st):
            return st
        time.sleep(0.2)
    pytest.fail(f"the daemon's status never showed {what}: {st}")


def losses(root: Path) -> dict[str, int]:
    """The session's non-zero kernel counters: what an assertion on exact
    counts shows when it fails."""
    return dict(query(root, "SELECT key, count FROM session WHERE key LIKE 'kernel.%' "
                            "AND count > 0"))


def churn_config(root: Path) -> str:
    return f"""
host = "churn"
[output]
root = "{root}"
[[select]]
exe = "*python3*"
cmdline = "re:churn-yes"
probes = ["gc", "sched", "imports", "audit", "stacks"]
[[select]]
exe = "*python3.15"
cmdline = "re:churn-yes"
probes = ["calls"]
"""


def test_churn_selected_processes_are_traced_from_their_first_instruction(sid, tmp_path):
    """50 programs of ~50 ms (Debian 3.11 and a chrooted 3.15, alternating; half
    selected by their command line) started while the daemon runs, five at a
    time. Each selected one has its explicit collections of every generation,
    on 3.15 its exact call counts including the interpreter's very first Python
    frame; the others have no row anywhere, and their discards are counted."""
    root = tmp_path / "root"
    cfg = write_config(tmp_path / "churn.toml", churn_config(root))

    def start(kind: str, tag: str, calls: int) -> subprocess.Popen:
        if kind == "3.11":
            argv = [PY311, str(PROGRAMS / "churn.py"), tag, str(calls)]
        else:
            argv = ["chroot", str(sid), "python3.15", "/tmp/scope-tests/churn.py", tag,
                    str(calls)]
        return subprocess.Popen(argv)

    with running(tmp_path, cfg) as d:
        # The daemon watches a file once it has seen a process run it (here
        # these, until it says so; for 3.11 also this test's own interpreter).
        warm = [subprocess.Popen(argv + ["-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
                for argv in ([PY311], ["chroot", str(sid), "python3.15"])]
        files = {PY311, str(sid / "usr/bin/python3.15")}
        before = wait_status(cfg, "both files watched", lambda st: files <= set(st["watched"]))
        for p in warm:
            p.stdin.close()
            assert p.wait(timeout=60) == 0
        confirmed0 = before["adoption"].get("confirmed", 0)
        churn: list[tuple[str, bool, int, subprocess.Popen]] = []
        live: list[subprocess.Popen] = []
        for i in range(50):
            kind, selected = ("3.11", "3.15")[i % 2], i % 4 in (1, 2)  # the last one too
            calls = 100 + i
            p = start(kind, f"churn-{'yes' if selected else 'no'}-{i}", calls)
            churn.append((kind, selected, calls, p))
            live.append(p)
            if len(live) == 5:
                assert live.pop(0).wait(timeout=60) == 0
        for p in live:
            assert p.wait(timeout=60) == 0
        # every selected one adopted in the kernel (a lost one never is) and
        # confirmed, the last one last: everything before it is decided too
        wait_status(cfg, "25 confirmed",
                    lambda st: st["adoption"].get("confirmed", 0) - confirmed0 >= 25)
        d.stop()

    selected = {p.pid: (kind, calls) for kind, sel, calls, p in churn if sel}
    others = [p.pid for _kind, sel, _calls, p in churn if not sel]
    assert len(selected) == len(others) == 25

    starts = {pid: (nb, a) for pid, nb, a in query(
        root, "SELECT pid, new_binary, adopt_ns FROM processes WHERE event = 'start'")}
    assert set(selected) <= starts.keys()
    for pid in selected:
        new_binary, adopt_ns = starts[pid]
        assert new_binary is False and adopt_ns is not None, (pid, starts[pid])

    gens = {pid: set(g) for pid, g in query(
        root, "SELECT pid, list(DISTINCT generation) FROM gc GROUP BY pid")}
    for pid in selected:
        assert {0, 1, 2} <= gens.get(pid, set()), (pid, selected[pid], gens.get(pid))

    # 3.15: exact counts (the functions table's, whatever rows sampling kept),
    # from the interpreter's first Python frame on
    counts = {(pid, file, fn): n for pid, file, fn, n in query(root, """
        SELECT pid, file, function, sum(calls) FROM functions GROUP BY ALL""")}
    for pid, (kind, calls) in selected.items():
        if kind != "3.15":
            continue
        assert counts.get((pid, "/tmp/scope-tests/churn.py", "f")) == calls, (pid, losses(root))
        assert counts.get((pid, "/tmp/scope-tests/churn.py", "<module>")) == 1, pid
        assert counts.get((pid, "<frozen importlib._bootstrap>", "<module>")) == 1, pid
    assert "kernel.fstat_failed" not in losses(root)

    # the others: not a row, anywhere
    listed = ",".join(map(str, others))
    for table in PID_TABLES:
        if (root / table).is_dir():
            n = query(root, f"SELECT count(*) FROM {table} WHERE pid IN ({listed})")[0][0]
            assert n == 0, table

    # ... and what was discarded of them is counted
    c = dict(query(root, "SELECT key, count FROM session WHERE key LIKE 'adopt.%' "
                         "OR key LIKE 'kernel.adopt%'"))
    assert c["adopt.adopted"] - c["adopt.confirmed"] >= 25, c
    assert c["kernel.adopted"] >= c["adopt.adopted"] - 0 and c["kernel.adopt_lost"] == 0, c
    per_table = sum(v for k, v in c.items() if k.startswith("adopt.discarded_rows."))
    assert c["adopt.discarded_rows"] == per_table > 0, c


def test_budgets_per_selector_and_process(sid, tmp_path):
    """Two noisy 3.15 processes, one tripping its own process budget within
    selector 1 and one its selector 3's budget, beside a calm process in
    selector 1 and one in selector 2: the kernel trips only the noisy ones
    (breaker rows name the selector, and the pid for a process's own), while
    the calm ones keep every call and the host-wide breaker never opens."""
    root = tmp_path / "root"
    cfg = write_config(tmp_path / "budgets.toml", f"""
host = "budgets"
[output]
root = "{root}"
[[select]]
exe = "*python3.15"
cmdline = "re:budget-one"
probes = ["calls"]
breaker_rate = 1000000
process_breaker_rate = 100000
[[select]]
exe = "*python3.15"
cmdline = "re:budget-two"
probes = ["calls"]
[[select]]
exe = "*python3.15"
cmdline = "re:budget-three"
probes = ["calls"]
breaker_rate = 100000
process_breaker_rate = 10000000
""")

    def start(tag: str, mode: str, amount: str) -> subprocess.Popen:
        return subprocess.Popen(["chroot", str(sid), "python3.15", "/tmp/scope-tests/budget.py",
                                 tag, mode, amount])

    with running(tmp_path, cfg) as d:
        warm = subprocess.Popen(["chroot", str(sid), "python3.15", "-c",
                                 "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        wait_status(cfg, "3.15 watched", lambda st: any("3.15" in w for w in st["watched"]))
        warm.stdin.close()
        assert warm.wait(timeout=60) == 0
        procs = {"one-hot": start("budget-one-hot", "hot", "1.5"),
                 "one-calm": start("budget-one-calm", "calm", "300"),
                 "two-calm": start("budget-two-calm", "calm", "300"),
                 "three-hot": start("budget-three-hot", "hot", "1.5")}
        for p in procs.values():
            assert p.wait(timeout=120) == 0
        n = len(procs)
        wait_status(cfg, "4 confirmed", lambda st: st["adoption"].get("confirmed", 0) >= n)
        d.stop()
    pid = {k: p.pid for k, p in procs.items()}

    g = dict(query(root, f"""SELECT pid, sum(calls) FROM functions WHERE function = 'g'
        AND pid IN ({pid['one-calm']}, {pid['two-calm']}) GROUP BY pid"""))
    assert g == {pid["one-calm"]: 300, pid["two-calm"]: 300}, (g, losses(root))
    assert "kernel.fstat_failed" not in losses(root)
    trips = query(root, "SELECT selector, pid, state FROM breaker")
    assert (1, pid["one-hot"], "open") in trips, trips
    assert (3, None, "open") in trips, trips
    assert {(s, p) for s, p, _ in trips} <= {(1, pid["one-hot"]), (3, None)}, trips
    c = dict(query(root, "SELECT key, count FROM session"))
    assert c["kernel.budget_skipped"] == c["budget.skipped"] > 0 and c["budget.trips"] >= 2, c
    assert c["kernel.breaker_skipped"] == 0 and c["breaker_trips"] == 0, c


def test_notify_never_blocks_on_a_reader_that_does_not_read(tmp_path, monkeypatch):
    """A unix datagram queue holds 10 messages: past that, a blocking send would
    stop the daemon (it did, after two minutes of STATUS lines in the soak)."""
    import socket

    from scope_ebpf.fleet import notify

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    t0 = time.monotonic()
    sent = [notify.notify(f"STATUS=message {i}") for i in range(100)]
    assert time.monotonic() - t0 < 10  # (blocked forever before)
    assert sent[0] and not all(sent)
    assert sock.recv(4096) == b"STATUS=message 0"
    sock.close()


def test_a_process_no_longer_traced_for_calls_leaves_no_thread_traced(sid, tmp_path):
    """Taking calls away from a target (the daemon ignoring a process it adopted,
    or a reload retargeting it) stops its calls at once: a thread that already
    had a shadow stack does not keep it traced (it did, and a process's
    functions then came back after they were forgotten)."""
    from scope_ebpf.controller import Options, Session

    p = subprocess.Popen(["chroot", str(sid), "python3.15", "/tmp/scope-tests/budget.py",
                          "retarget", "calm", "5000"])
    s = Session(Options(output=tmp_path / "out", probes=frozenset({"calls", "gc"}),
                        max_rate=0))
    try:
        s.open()
        s.add_pid(p.pid)
        deadline = time.monotonic() + 60
        while s.program.stat("entries") < 50 and time.monotonic() < deadline:
            s.poll()
            time.sleep(0.05)
        assert s.program.stat("entries") >= 50  # its calls are traced (2 ms apart)
        s.set_probes(p.pid, frozenset({"gc"}))
        time.sleep(0.05)  # a call in flight
        before = s.program.stat("entries"), s.program.stat("returns")
        time.sleep(0.5)  # ~250 more calls
        assert (s.program.stat("entries"), s.program.stat("returns")) == before
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()
        s.close()



def test_an_unreadable_executable_is_unknown_not_empty(monkeypatch):
    """psutil gives "" for the executable of a live process whose link cannot be
    read (one caught exiting): unknown, so the daemon matches what the kernel
    saw instead (a selected 50 ms program was ignored once in the churn test,
    its exe glob matched against "")."""
    import psutil

    from scope_ebpf import procs

    monkeypatch.setattr(psutil.Process, "exe", lambda self: "")
    info = procs.info(os.getpid())
    assert info.exe is None and info.cmdline, info
