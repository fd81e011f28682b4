"""Fleet mode: the daemon against real processes started after it, its
Hive-partitioned output, reload, shutdown, retention, shipping and its unit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from conftest import PROGRAMS, PY311, SCOPE, SID, scope

from scope_ebpf import retention

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent

TARGET = str(PROGRAMS / "daemon_target.py")


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def gc_config(root: Path, host: str, tag: str, exe: str = "*python3.11") -> str:
    """A config with one selector: gc of processes whose argv has ``tag``."""
    return f"""
host = "{host}"
[output]
root = "{root}"
[[select]]
exe = "{exe}"
cmdline = "re:{tag}"
probes = ["gc"]
"""


@contextlib.contextmanager
def running(tmp: Path, config: Path, env: dict | None = None):
    """A daemon that has said READY; killed if the test leaves it running."""
    d = Daemon(tmp, config, env)
    try:
        d.wait_for("READY=1")
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


class Daemon:
    """A `scope-ebpf daemon` child with a NOTIFY_SOCKET the test reads."""

    def __init__(self, tmp: Path, config: Path, env: dict | None = None,
                 log: Path | None = None) -> None:
        self.sock_path = tmp / f"notify-{config.stem}-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.messages: list[str] = []
        e = dict(os.environ, NOTIFY_SOCKET=str(self.sock_path), **(env or {}))
        # a long run logs more than a pipe holds: to ``log`` then, or it would block
        self.log = log
        self.proc = subprocess.Popen([SCOPE, "daemon", "--config", str(config)], env=e,
                                     stdout=subprocess.DEVNULL if log else subprocess.PIPE,
                                     stderr=open(log, "w") if log else subprocess.PIPE,
                                     text=True)

    def wait_for(self, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(what in m for m in self.messages):
                return
            self.sock.settimeout(0.2)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                if self.proc.poll() is not None:
                    err = self.log.read_text() if self.log else self.proc.stderr.read()
                    pytest.fail(f"daemon exited: {err}")
        pytest.fail(f"no {what} from the daemon within {timeout} s: {self.messages}")

    def stop(self, timeout: float = 20) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=timeout)
        if self.log:
            err = self.log.read_text()
        self.sock.close()
        assert self.proc.returncode == 0, err
        return err


def query(root: Path, sql: str) -> list[tuple]:
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    tables = {p.name for p in root.iterdir() if p.is_dir()}
    for t in tables:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{root}/{t}/**/*.parquet', "
                    "hive_partitioning=true, hive_types_autocast=false, union_by_name=true)")
    return con.execute(sql).fetchall()


def test_daemon_adopts_later_processes_reloads_and_stops_clean(sid, tmp_path):
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    cfg_a = write_config(tmp_path / "a.toml", f"""
host = "test-a"
[output]
root = "{root_a}"
rotate_seconds = 2
[[select]]
exe = "*python3*"
cmdline = "re:scope-match"
probes = ["gc", "sched", "imports", "audit"]
[[select]]
exe = "*python3.15"
cmdline = "re:scope-match"
probes = ["calls", "gc"]
max_rate = 1000000
""")
    cfg_b = write_config(tmp_path / "b.toml", f"""
host = "test-b"
[output]
root = "{root_b}"
[[select]]
exe = "*python3.11"
cmdline = "re:scope-match-311"
probes = ["gc"]
""")
    a, b = Daemon(tmp_path, cfg_a), Daemon(tmp_path, cfg_b)
    try:
        a.wait_for("READY=1")
        b.wait_for("READY=1")
        procs = {
            "311": subprocess.Popen([PY311, TARGET, "scope-match-311", "1.5", "20"]),
            # in a container-like setting: its own root and network namespace
            "315": subprocess.Popen(["unshare", "--net", "sh", "-c",
                                     f"ip link set lo up && exec chroot {SID} python3.15 "
                                     "/tmp/scope-tests/daemon_target.py scope-match-315 1.5 20"]),
            "other": subprocess.Popen([PY311, TARGET, "not-selected", "1.5", "20"]),
        }
        # Not selected at first; the reload below selects it before it starts working.
        late = subprocess.Popen([PY311, TARGET, "scope-late", "4", "15"])
        for p in procs.values():
            assert p.wait(timeout=60) == 0
        first = 're:scope-match"\nprobes = ["gc", "sched"'
        write_config(cfg_a, cfg_a.read_text().replace(
            first, first.replace("scope-match", "scope-(match|late)")))
        assert "scope-(match|late)" in cfg_a.read_text()
        a.proc.send_signal(signal.SIGHUP)
        a.wait_for("STATUS=config reloaded", timeout=10)
        assert late.wait(timeout=60) == 0
        time.sleep(0.5)
        err_a = a.stop()
        b.stop()
    finally:
        for d in (a, b):
            if d.proc.poll() is None:
                d.proc.kill()
    pids = {k: p.pid for k, p in procs.items()}
    assert "traceback" not in err_a.lower()

    # Only complete files, each in its Hive partition.
    files = [p.relative_to(root_a) for p in root_a.rglob("*") if p.is_file()]
    assert files and not [f for f in files if f.name.endswith(".tmp")]
    for f in files:
        table, host, date, hour, name = f.parts
        assert host == "host=test-a" and date.startswith("date=") and hour.startswith("hour=")
        assert name.startswith("part-") and name.endswith(".parquet")

    # Row counts equal the daemon's own counters.
    counters = dict(query(root_a, "SELECT key, count FROM session WHERE key LIKE 'rows.%'"))
    for table in ("gc", "calls", "processes", "sched", "imports"):
        have = (root_a / table).is_dir()
        n = query(root_a, f"SELECT count(*) FROM {table}")[0][0] if have else 0
        assert n == counters[f"rows.{table}"], table

    gc0 = dict(query(root_a, "SELECT pid, count(*) FROM gc WHERE generation = 0 GROUP BY pid"))
    assert gc0.get(pids["311"], 0) >= 20 and gc0.get(pids["315"], 0) >= 20
    assert pids["other"] not in gc0
    assert gc0.get(late.pid, 0) >= 15  # selected by the reload
    # calls only where a selector asks for them: 3.15, exactly
    calls = dict(query(root_a, "SELECT pid, count(*) FROM calls WHERE function = 'work' "
                               "GROUP BY pid"))
    assert calls == {pids["315"]: 20}
    start = query(root_a, f"""SELECT pid, python_version, "user", netns IS NOT NULL,
        cgroup IS NOT NULL, cmdline LIKE '%scope-match%' FROM processes
        WHERE event = 'start' AND pid IN ({pids['311']}, {pids['315']}) ORDER BY pid""")
    assert sorted(start) == sorted([(pids["311"], "3.11", "root", True, True, True),
                                    (pids["315"], "3.15", "root", True, True, True)])
    assert query(root_a, f"SELECT count(*) FROM processes WHERE pid = {pids['other']}") == [(0,)]
    host_ns = os.stat("/proc/self/ns/net").st_ino
    ns = {pid: (inode, addrs) for pid, inode, addrs in query(root_a, f"""
        SELECT pid, netns, addresses FROM processes
        WHERE event = 'start' AND pid IN ({pids['311']}, {pids['315']})""")}
    assert ns[pids["311"]][0] == host_ns
    assert ns[pids["315"]][0] != host_ns  # read inside the target's own namespace:
    assert ns[pids["315"]][1] == ["lo=127.0.0.1/8", "lo=::1/128"]

    # Two hosts' roots copied into one tree are one dataset.
    fleet = tmp_path / "fleet"
    shutil.copytree(root_a, fleet)
    shutil.copytree(root_b, fleet, dirs_exist_ok=True)
    by_host = dict(query(fleet, f"SELECT host, count(*) FROM gc WHERE pid = {pids['311']} "
                                "GROUP BY host"))
    assert set(by_host) == {"test-a", "test-b"} and by_host["test-b"] >= 20
    r = scope("query", str(fleet), "--host", "test-b", "--format", "csv",
              "SELECT DISTINCT host FROM gc")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["host", "test-b"]


def test_bad_configs_fail_with_one_line(tmp_path):
    good_root = tmp_path / "out"
    cases = {
        "unknown key": (f'[output]\nroot = "{good_root}"\nrotat_seconds = 5\n'
                        '[[select]]\nexe = "*"\n', "output.rotat_seconds: unknown key"),
        "bad regex": (f'[output]\nroot = "{good_root}"\n[[select]]\ncmdline = "re:(unclosed"\n',
                      "select[0].cmdline: bad regular expression"),
        "bad probes": (f'[output]\nroot = "{good_root}"\n[[select]]\nprobes = ["calls", "cpu"]\n',
                       "unknown probe set cpu"),
        "unwritable root": ('[output]\nroot = "/proc/scope-ebpf"\n[[select]]\nexe = "*"\n',
                            "output.root"),
        "not toml": ("host = \n", "not valid TOML"),
    }
    for name, (text, expected) in cases.items():
        cfg = write_config(tmp_path / f"{name.replace(' ', '_')}.toml", text)
        r = scope("daemon", "--config", str(cfg))
        assert r.returncode != 0, name
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (name, r.stderr)
    cfg = write_config(tmp_path / "loose.toml", f'[output]\nroot = "{good_root}"\n'
                                                '[[select]]\nexe = "*"\n')
    os.chmod(cfg, 0o666)
    r = scope("daemon", "--config", str(cfg), "--check")
    assert r.returncode != 0 and "writable only by root" in r.stderr
    os.chmod(cfg, 0o600)
    r = scope("daemon", "--config", str(cfg), "--check")
    assert r.returncode == 0 and "ok" in r.stderr


def test_retention_deletes_oldest_closed_parts_first(tmp_path):
    now = time.time()
    d = tmp_path / "gc" / "host=h" / "date=2026-11-20" / "hour=01"
    d.mkdir(parents=True)
    for i in range(5):
        p = d / f"part-{i:05d}.parquet"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - 100 + i, now - 100 + i))
    (d / ".part-00005.parquet.tmp").write_bytes(b"x" * 1000)  # open: never deleted
    old = tmp_path / "gc" / "host=h" / "date=2026-11-01" / "hour=00"
    old.mkdir(parents=True)
    (old / "part-00000.parquet").write_bytes(b"x")
    os.utime(old / "part-00000.parquet", (now - 10 * 86400,) * 2)
    gone = retention.enforce(tmp_path, retain_bytes=3500, retain_days=7, now=now)
    assert [p.path.name for p in gone] == ["part-00000.parquet"] * 2 + ["part-00001.parquet",
                                                                       "part-00002.parquet"]
    assert not old.exists()  # empty partition directories go too
    assert sorted(p.name for p in d.iterdir()) == [".part-00005.parquet.tmp",
                                                   "part-00003.parquet", "part-00004.parquet"]


def test_shipping_to_s3_compatible_storage(tmp_path):
    from pyarrow import fs

    port = _free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                             "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    os.environ.update(env)
    try:
        s3 = fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                             region="us-east-1", allow_bucket_creation=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.create_dir("traces")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        root = tmp_path / "root"
        cfg = write_config(tmp_path / "ship.toml", f"""
host = "shipper"
[output]
root = "{root}"
rotate_seconds = 1
[ship]
endpoint = "http://127.0.0.1:{port}"
bucket = "traces"
prefix = "fleet"
interval_seconds = 0.5
[[select]]
exe = "*python3.11"
cmdline = "re:scope-ship"
probes = ["gc"]
""")
        d = Daemon(tmp_path, cfg, env)
        try:
            d.wait_for("READY=1")
            p = subprocess.Popen([PY311, TARGET, "scope-ship", "1.5", "25"])
            assert p.wait(timeout=60) == 0
            time.sleep(0.5)
            d.stop()
        finally:
            if d.proc.poll() is None:
                d.proc.kill()
        left = [f for f in root.rglob("*") if f.is_file()]
        assert left == []  # every file confirmed uploaded, then deleted
        keys = [i.path for i in s3.get_file_info(fs.FileSelector("traces/fleet", recursive=True))
                if i.type == fs.FileType.File]
        assert keys and all(k.startswith("traces/fleet/") and "/host=shipper/date=" in k
                            for k in keys)
        gc_keys = [k for k in keys if k.startswith("traces/fleet/gc/")]
        pids = [pq.read_table(k, filesystem=s3)["pid"].to_pylist() for k in gc_keys]
        assert sum(ps.count(p.pid) for ps in pids) >= 25
    finally:
        moto.kill()
        moto.wait()
        for k in env:
            os.environ.pop(k, None)


def test_systemd_unit_verifies(tmp_path):
    unit = (REPO / "packaging" / "scope-ebpf.service").read_text()
    assert "/usr/local/bin/scope-ebpf" in unit
    # verify needs ExecStart to exist: point it at this checkout's console script
    (tmp_path / "scope-ebpf.service").write_text(unit.replace("/usr/local/bin/scope-ebpf",
                                                              SCOPE))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "scope-ebpf.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Type=notify" in unit and "NoNewPrivileges=yes" in unit
    assert "ProtectSystem=strict" in unit and "ReadWritePaths=/var/lib/scope-ebpf" in unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _counted_gc(root: Path) -> bool:
    """Closed counters parts hold two snapshots or more, with the kernel's gc
    count above 0."""
    parts = [str(p) for p in root.glob("counters/**/*.parquet")]
    if not parts:
        return False
    (snaps, gcs), = duckdb.connect().execute(
        "SELECT count(DISTINCT ts_ns), max(count) FILTER (key = 'kernel.gc') "
        "FROM read_parquet(?, union_by_name=true)", [parts]).fetchall()
    return snaps >= 2 and (gcs or 0) > 0


def test_sigkill_keeps_closed_files_and_restart_cleans_up(tmp_path):
    root = tmp_path / "root"
    text = gc_config(root, "killed", "scope-kill").replace("[[select]]",
                                                            "rotate_seconds = 1\n[[select]]")
    cfg = write_config(tmp_path / "kill.toml", text)
    target = subprocess.Popen([PY311, TARGET, "scope-kill", "1.0", "1", "10"])
    try:
        with running(tmp_path, cfg) as d:
            # a few rotations, the target's collections among their counters (a
            # handshake: how soon that is depends on the machine's load)
            deadline = time.monotonic() + 120
            while not _counted_gc(root) and time.monotonic() < deadline:
                time.sleep(0.2)
            killed_ns = time.time_ns()
            d.proc.kill()
            d.proc.wait(timeout=10)
    finally:
        target.kill()
        target.wait()
    r = scope("daemon", "--status", "-c", str(cfg))  # its status file outlives it
    assert r.returncode != 0 and f"its last status is from pid {d.proc.pid}, which is gone" \
        in r.stderr, r.stderr
    closed = list(root.rglob("part-*.parquet"))
    assert closed, "no part was closed before the kill"
    for f in closed:
        pq.read_metadata(f)  # every closed part is complete
    # The kernel dropped the killed daemon's uprobes: a new one attaches cleanly,
    # and removes the unfinished parts the killed one left.
    with running(tmp_path, cfg) as d:
        assert not list(root.rglob("*.tmp"))
        d.stop()
    # the restart appended a session: the killed one's rows keep their own id
    (closed,), = query(root, "SELECT DISTINCT session_id FROM session")
    (killed,), = query(root, "SELECT DISTINCT session_id FROM processes WHERE session_id <> "
                             f"'{closed}'")
    assert query(root, "SELECT count(*) FROM processes WHERE session_id IS NULL") == [(0,)]
    r = scope("report", str(root), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("note: 2 sessions in this directory")
    assert f"  session {killed}: " in r.stdout and f"  session {closed}: " in r.stdout
    assert f"session {killed}: no session table: it was not closed" in r.stdout
    # its counters survive up to its last rotation (1 s; a poll's lateness allowed)
    (snaps, last, gcs), = query(root, "SELECT count(DISTINCT ts_ns), max(ts_ns), max(count) "
                                f"FILTER (key = 'kernel.gc') FROM counters WHERE session_id = "
                                f"'{killed}'")
    assert snaps >= 2 and killed_ns - last <= 2.5e9, (snaps, (killed_ns - last) / 1e9)
    assert gcs > 0  # the target's collections, counted in the kernel


def test_bad_config_on_reload_keeps_the_running_one(tmp_path):
    root = tmp_path / "root"
    good = gc_config(root, "reload", "scope-reload")
    cfg = write_config(tmp_path / "reload.toml", good)
    with running(tmp_path, cfg) as d:
        write_config(cfg, good.replace('cmdline = "re:scope-reload"', 'cmdline = "re:(bad"'))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("STATUS=config reload refused", timeout=10)
        # still running, still with the old selector
        p = subprocess.run([PY311, TARGET, "scope-reload", "1.0", "5"], timeout=60)
        assert p.returncode == 0
        time.sleep(0.3)
        err = d.stop()
    assert "config reload refused" in err and "bad regular expression" in err
    assert query(root, "SELECT count(*) >= 5 FROM gc") == [(True,)]
    assert query(root, "SELECT value FROM session WHERE key = 'warning'")[0][0].startswith(
        "config reload refused")


def _caps(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    raise AssertionError(field)


def test_daemon_drops_capabilities_and_still_reloads_into_a_new_session(sid, tmp_path):
    from scope_ebpf.fleet import privileges

    root = tmp_path / "root"
    text = gc_config(root, "caps", "scope-caps", exe="*python3*")
    cfg = write_config(tmp_path / "caps.toml", text)
    with running(tmp_path, cfg) as d:
        keep = sum(1 << c for c in privileges.KEEP)
        for field in ("CapEff", "CapPrm", "CapBnd"):
            assert _caps(d.proc.pid, field) & ~keep == 0, field
        assert _caps(d.proc.pid, "CapEff") & (1 << privileges.CAP_BPF)
        # the first calls selector: a new session (a new BPF program) with what is left
        write_config(cfg, text + '[[select]]\nexe = "*python3.15"\ncmdline = "re:scope-caps"\n'
                                 'probes = ["calls"]\n')
        d.messages.clear()
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("STATUS=config reloaded", timeout=60)
        p = subprocess.run(["chroot", str(SID), "python3.15", "/tmp/scope-tests/daemon_target.py",
                            "scope-caps", "1.0", "7"], timeout=60)
        assert p.returncode == 0
        time.sleep(0.3)
        d.stop()
    assert query(root, "SELECT count(*) FROM calls WHERE function = 'work'") == [(7,)]


SPIN = """
import sys, time
def inner(end):
    x = 0
    while time.thread_time() < end:
        x += 1
def outer():  # seconds of its own CPU: as many samples on a busy machine
    inner(time.thread_time() + float(sys.argv[2]))
print("ready", flush=True)
outer()
"""


def test_default_probes_sample_stacks_of_adopted_processes(tmp_path):
    """A selector without `probes` gets the default sets, stacks among them: a
    process started after the daemon has its CPU samples' full stacks; an
    unselected one has no rows."""
    root = tmp_path / "root"
    prog = tmp_path / "spin.py"
    prog.write_text(SPIN)
    cfg = write_config(tmp_path / "stacks.toml", f"""
host = "stacks"
[output]
root = "{root}"
[[select]]
exe = "*python3.11"
cmdline = "re:scope-stacks-yes"
""")
    with running(tmp_path, cfg) as d:
        yes = subprocess.Popen([PY311, str(prog), "scope-stacks-yes", "3"], stdout=subprocess.PIPE)
        no = subprocess.Popen([PY311, str(prog), "scope-stacks-no", "3"], stdout=subprocess.PIPE)
        try:
            for p in (yes, no):
                assert p.stdout.readline() == b"ready\n"
            # the status file, rewritten every 2 s: the selected process, sampled
            deadline = time.monotonic() + 30
            while True:
                r = scope("daemon", "--status", "--json", "-c", str(cfg))
                st = json.loads(r.stdout) if r.returncode == 0 else {}
                if st.get("processes") == 1 and st["rates"].get("samples", 0) > 0:
                    break
                assert time.monotonic() < deadline, (r.stdout, r.stderr)
                time.sleep(0.5)
            assert st["selectors"] == [{"index": 1, "match": "exe *python3.11, cmdline "
                                        "re:scope-stacks-yes", "processes": 1,
                                        "probes": ["audit", "gc", "imports", "sched", "stacks"]}]
            assert st["breaker"] == {"state": "off", "trips": 0} and st["pid"] == d.proc.pid
            r = scope("daemon", "--status", "-c", str(cfg))
            assert r.returncode == 0 and "tracing 1 process (probe sets: " in r.stdout
            assert "  selector 1 (exe *python3.11, cmdline re:scope-stacks-yes): 1 process," \
                in r.stdout
            for p in (yes, no):
                assert p.wait(timeout=60) == 0
        finally:
            for p in (yes, no):
                p.kill()
                p.wait()
        d.stop()
    r = scope("daemon", "--status", "-c", str(cfg))
    assert r.returncode != 0 and r.stderr == (f"scope-ebpf: error: no running daemon writes to "
                                              f"{root} (no status in /run/scope-ebpf)\n"), r.stderr
    got = query(root, "SELECT st.path[-2:], count(*) FROM samples s JOIN stacks st "
                      f"USING (pid, stack_id) WHERE s.pid = {yes.pid} GROUP BY ALL ORDER BY 2 DESC")
    assert got and got[0][0] == ["outer", "inner"] and got[0][1] >= 100, got  # 99 Hz, 3 s
    assert query(root, f"SELECT count(*) FROM samples WHERE pid = {no.pid}") == [(0,)]
    (probes,), = query(root, "SELECT value FROM session WHERE key = 'probes'")
    assert probes == "audit,gc,imports,sched,stacks"


def test_a_new_interpreter_file_is_attached_at_exec(tmp_path):
    """A copy of python3.11 the daemon has never seen (a virtualenv's or a
    container's binary): the first process that runs it is adopted at its exec
    and its start row says the file was new and how long after the exec it was
    traced; the second finds it attached. Both have their gc rows."""
    copy = tmp_path / "venv" / "bin" / "python3.11"
    copy.parent.mkdir(parents=True)
    shutil.copy2(PY311, copy)
    root = tmp_path / "root"
    cfg = write_config(tmp_path / "new.toml", gc_config(root, "newbin", "scope-newbin",
                                                        exe=str(copy)))
    with running(tmp_path, cfg) as d:
        pids = []
        for _ in range(2):  # one after the other: DELAY 1 s then 5 collections
            p = subprocess.Popen([str(copy), TARGET, "scope-newbin", "1.0", "5"],
                                 stdout=subprocess.PIPE)
            assert p.stdout.readline() == b"done\n" and p.wait(timeout=60) == 0
            pids.append(p.pid)
        d.stop()
    got = dict(query(root, "SELECT pid, [new_binary, adopt_ns IS NOT NULL] FROM processes "
                           "WHERE event = 'start'"))
    assert got == {pids[0]: [True, True], pids[1]: [False, True]}, got
    (adopt_ns,), = query(root, f"SELECT adopt_ns FROM processes WHERE pid = {pids[0]} "
                               "AND event = 'start'")
    assert 0 < adopt_ns < 1e9, adopt_ns  # within the 1 s before its first collection
    # its 5 explicit collections, and any automatic one since its adoption
    gcs = dict(query(root, "SELECT pid, count(*) FILTER (generation = 0) FROM gc GROUP BY pid"))
    assert gcs.keys() == set(pids) and min(gcs.values()) >= 5, gcs
