"""Fleet mode: one agent per host traces every Python process its config selects.

The daemon drives the same Session as ``run``/``trace``. Probes are attached
per interpreter file, so the kernel covers every process that maps it; which
processes count is the kernel's ``targets`` map, with a probe-set mask per
process.

Every interpreter file a selector may match (by its exe glob) is *watched*:
a uprobe on its ELF entry point adopts each new process in the kernel at its
first instruction, with the probe sets any selector might give it, and
reports what the kernel saw (argv, uid, cgroup). The daemon decides at its
next poll, before any row of that process is written: confirmed with its
selectors' sets, or ignored (dropped in the kernel, its rows discarded and
counted). A running process is found by a psutil scan at start; a process
of a file not watched yet by its exec (the exec tracepoint reports them
all), which watches the file from then on.

Output is Hive-partitioned (``ROOT/<table>/host=H/date=D/hour=HH/``), rotated,
kept under the retention limits and optionally shipped to object storage.
SIGTERM closes everything; SIGHUP reloads the config (a bad one is refused and
the old one kept).
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path

from .. import events, procs, retention, usdt
from ..control import budgets, safety
from ..controller import Options, Session, _cpu_seconds, _has_python_probes
from ..errors import ScopeError
from ..program import Limits, check_environment
from ..safefs import Ownership, group_id
from ..shipping import Shipper
from ..writer import OutputDir, OutputError
from . import config as cfgmod
from . import notify, privileges
from . import status as status_file
from .config import Config, ConfigError

CHEAP = frozenset({"gc", "sched", "imports", "audit"})  # always attached: they fire rarely
EXEC_RETRY_S = 1.0      # an exec'd process whose Python is not mapped yet is retried this long
RETENTION_EVERY_S = 5.0
STATUS_EVERY_S = 10.0   # sd_notify STATUS
STATUS_FILE_EVERY_S = 2.0  # the status file (`daemon --status`)
OUTPUT_SCAN_EVERY_S = 10.0  # the output tree's size, for the status file
STATUS_MAPS = ("targets", "ignored", "funcs")  # kernel maps that grow with processes
WAKE_GAP_S = 0.005      # polls woken by process events come at most this often
AWAIT_ADOPTION_S = 1.0  # a watched exec with no adoption by then is looked at


class Daemon:
    def __init__(self, config_path: str | Path,
                 status: Callable[[str], None] = lambda s: None) -> None:
        self.config_path = Path(config_path)
        self.status = status
        self.cfg: Config = load_config(self.config_path)
        self.session: Session | None = None
        self.shipper: Shipper | None = None
        self.matched: dict[int, frozenset[str]] = {}   # pid -> probe sets it is traced with
        self.selected: dict[int, tuple[int, ...]] = {}  # pid -> the selectors it matches
        self.started = time.time()
        self._status_at = (time.monotonic(), 0.0, {})  # last status file: when, CPU, rows
        self._output = (0.0, 0, 0)                      # last scan: when, bytes, parts
        self._maps: tuple[float, dict] = (0.0, {})      # last count: map -> [entries, max]
        self._pending: dict[int, tuple[float, int]] = {}  # exec'd pids to look at again:
        #                                                   since, exec ts_ns
        self.watched: dict[str, str] = {}  # executable -> its interpreter file (with probes)
        self._not_python: set[tuple[int, int]] = set()  # exec'd files without probes
        self._awaiting: dict[int, tuple[float, int]] = {}  # watched execs: since, exec ts_ns
        # decided in this poll (before their exec rows): pid -> the adoption's time
        self._adopted_now: dict[int, int] = {}
        self._waker: tuple[Session, select.epoll] | None = None  # proc_rb, for _wait
        self._polled_at = 0.0
        self._stop = False
        self._reload = False
        self.reloads = 0
        self.reload_errors: list[str] = []

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Open the output and the session, adopt running processes, say READY."""
        prepare_root(self.cfg.root, daemon_owner(self.cfg))
        self.session = self._open_session(self.cfg)
        self.scan()
        if self.cfg.ship:
            self.shipper = Shipper(self.cfg.ship, self.cfg.root, self.session.warn)
            self.shipper.start()
        try:
            privileges.drop_capabilities()
        except OSError as e:
            self.session.warn(f"could not drop capabilities: {e}")
        n = len(self.matched)
        notify.notify(f"READY=1\nSTATUS=tracing {n} Python process{'es' * (n != 1)}")
        self.status(f"daemon ready: host {self.cfg.host}, {n} process(es) traced, "
                    f"writing to {self.cfg.root}")

    def _open_session(self, cfg: Config) -> Session:
        # calls and stacks only when a selector asks (calls cost per call; stacks
        # compiles the walker and starts a timer per CPU)
        probes = CHEAP | (frozenset({"calls", "stacks"}) & cfg.probes)
        opts = Options(
            output=cfg.root, probes=probes, host=cfg.host, watch_exec=True, adopt=True,
            rotate_seconds=cfg.rotate_seconds, rotate_bytes=cfg.rotate_bytes,
            max_rate=cfg.max_rate, breaker_rate=cfg.breaker_rate * budgets.HOST_FACTOR,
            max_cpu=cfg.max_cpu,
            owner=daemon_owner(cfg), redact=cfg.redact, no_redact=cfg.no_redact,
            net_addresses=True, append=True,  # restarts and reloads add sessions
            # the sampling plan reads every function's aggregates: a host's worth
            # each second, not ten times (the kernel's row guards act meanwhile)
            control_interval=1.0,
            # a Python start-up interns ~1,000 functions and ~2,000 call paths:
            # a few starting at once (the churn test lost 14,000 paths in 256 KiB)
            limits=Limits(max_targets=cfg.max_targets, max_threads=cfg.max_threads,
                          funcs_rb_pages=1024, paths_rb_pages=512))
        s = Session(opts, status=self.status)
        try:
            s.open()
            s.budgets.configure(cfg.budget_rates())
            s.meta["daemon_config"] = str(cfg.path)
            s.meta["host_label"] = cfg.host
            s.on_exec = self._on_exec
            s.on_adopt = self._on_adopt
            for exe, binary in list(self.watched.items()):  # (a restarting reload)
                self._watch(s, cfg, exe, binary)
        except BaseException:
            s.close("error")
            raise
        return s

    def request_stop(self, *_: object) -> None:
        self._stop = True

    def request_reload(self, *_: object) -> None:
        self._reload = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def run(self) -> None:
        """The loop: drain, adopt exec'd processes, reload, retention, watchdog."""
        s = self.session
        assert s is not None
        watchdog = notify.watchdog_interval()
        last_dog = last_retention = last_status = 0.0
        rb = s.program.rings["calls_rb"]
        while not self._stop and s.stop_reason is None:
            self._polled_at = time.monotonic()
            self._adopted_now.clear()
            s.poll()
            now = time.monotonic()
            if self._pending:
                self._retry_pending(now)
            if self._awaiting:
                self._check_awaiting(now)
            if self._reload:
                self._reload = False
                self.reload()
                s = self.session
                rb = s.program.rings["calls_rb"]
            if now - last_retention >= RETENTION_EVERY_S:
                last_retention = now
                self.enforce_retention()
                if self.shipper:
                    self.shipper.kick()
            if watchdog and now - last_dog >= watchdog:
                last_dog = now
                notify.notify("WATCHDOG=1")
            if now - self._status_at[0] >= STATUS_FILE_EVERY_S:
                self.write_status(now)
            if now - last_status >= STATUS_EVERY_S:
                last_status = now
                # the session forgets exited processes at its snapshots: so do we
                self.matched = {p: v for p, v in self.matched.items() if p in s.targets}
                self.selected = {p: v for p, v in self.selected.items() if p in self.matched}
                alive = sum(p not in s.exited for p in self.matched)
                notify.notify(f"STATUS=tracing {alive} process(es), "
                              f"{sum(s.written.values()):,} rows written")
            if rb.pending_bytes() < rb.size // 4:
                self._wait(s)

    def _wait(self, s: Session) -> None:
        """Sleep until the next poll: a poll_interval, or sooner (but not within
        WAKE_GAP_S) when a process event comes, so that a process the kernel
        adopted is confirmed or ignored within milliseconds, not a whole interval
        (an ignored one is traced, and its rows decoded then discarded, until
        then), or new function names, which come in bursts at start-ups."""
        if self._waker is None or self._waker[0] is not s:
            if self._waker is not None:
                self._waker[1].close()
            ep = select.epoll()
            for name in ("proc_rb", "funcs_rb", "paths_rb"):  # (names come in bursts)
                ep.register(s.program.maps[name].fd, select.EPOLLIN)
            self._waker = (s, ep)
        if self._waker[1].poll(s.opts.poll_interval):
            since = time.monotonic() - self._polled_at
            if since < WAKE_GAP_S:
                time.sleep(WAKE_GAP_S - since)

    def close(self, reason: str = "stopped") -> None:
        notify.notify("STOPPING=1")
        if self._waker is not None:
            self._waker[1].close()
            self._waker = None
        status_file.remove(self.cfg.root)
        try:
            if self.session is not None:
                self.session.close(reason)
        finally:
            if self.shipper is not None:
                self.shipper.stop()

    # -- discovery ------------------------------------------------------------

    def scan(self) -> None:
        """Adopt every running process the selectors match."""
        for pid in procs.python_pids():
            if pid != os.getpid():
                self.consider(pid)

    def _traced(self, pid: int) -> bool:
        """Matched and not exited: a pid reused after an exit is a new process."""
        s = self.session
        return pid in self.matched and pid in s.targets and pid not in s.exited

    def _on_exec(self, pid: int, filename: str, ts_ns: int) -> None:
        self._pending.pop(pid, None)
        if ts_ns <= self._adopted_now.get(pid, -1):
            return  # an exec before its adoption (chroot's): decided on what it ran
        if not self._traced(pid) and self._entry_watched(pid):
            # the kernel adopts it at its first instruction: _on_adopt decides
            # (in this poll already, or in a later one)
            if pid not in self._adopted_now:
                self._awaiting[pid] = (time.monotonic(), ts_ns)
            return
        if not os.path.exists(f"/proc/{pid}/exe"):
            self._watch_gone(filename)
            return
        if not self.consider(pid, after_exec=True, exec_ns=ts_ns) and not self._traced(pid):
            self._pending[pid] = (time.monotonic(), ts_ns)

    def _watch_gone(self, filename: str) -> None:
        """A process gone before we looked (shorter than a poll): if it ran an
        interpreter file with probes a selector may match, by the path it
        exec'd (absolute, in our root), watch that file for the next ones."""
        if not filename.startswith("/") or filename in self.watched:
            return
        try:
            st = os.stat(filename)
        except (OSError, ValueError):
            return
        key, real = (st.st_dev, st.st_ino), os.path.realpath(filename)
        if key in self._not_python or not self.cfg.exe_may_match(real):
            return
        if not _has_python_probes(real):
            if len(self._not_python) > 4096:
                self._not_python.clear()
            self._not_python.add(key)  # most of a host's execs: looked at once
            return
        self._watch(self.session, self.cfg, real, real)

    def _check_awaiting(self, now: float) -> None:
        """An exec of a watched file whose adoption never came (none is known to
        be lost; this says so if it happens): looked at from user space if it
        still runs, else counted (adopt.exec_not_adopted)."""
        for pid, (since, exec_ns) in list(self._awaiting.items()):
            if now - since < AWAIT_ADOPTION_S:
                continue
            del self._awaiting[pid]
            if self._traced(pid) or self.session.ignored(pid):
                continue
            if procs.alive(pid):
                self.session.adoption["exec_adopted_late"] += 1
                self.consider(pid, after_exec=True, exec_ns=exec_ns)
            else:
                self.session.adoption["exec_not_adopted"] += 1

    def _entry_watched(self, pid: int) -> bool:
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self.session.links.entries

    def _on_adopt(self, row: dict) -> None:
        """The kernel adopted a process (see Session.on_adopt): confirm or ignore."""
        s, pid = self.session, row["pid"]
        self._awaiting.pop(pid, None)
        self._adopted_now[pid] = row["ts_ns"]
        info = s.adopted_info(row)
        probes = self.cfg.probes_for(info) if info.parent_pid != os.getpid() else frozenset()
        if not probes:
            s.ignore(pid)
            return
        exe = s.links.entry_paths.get(row.get("cookie"))
        binary = self.watched.get(exe) if exe else None
        if binary is None:
            try:
                binary = usdt.find_python_binary(pid)
            except usdt.ProbeError:
                binary = None
        s.confirm(row, probes, binary, group=self.cfg.budget_group(info))
        self.matched[pid] = probes
        self.selected[pid] = self.cfg.matching(info)

    def _watch(self, s: Session, cfg: Config, exe: str, binary: str) -> None:
        """Adopt every later process of ``exe`` at its first instruction, with what
        the selectors whose exe glob matches may give it (none: not watched)."""
        probes = cfg.exe_probes(exe) & s.opts.probes
        if not probes and exe not in self.watched:
            return
        try:
            s.attach_binary(binary)
            if s.watch_exe(exe, probes):
                self.status(f"watching {exe}: its new processes are adopted at exec")
        except ScopeError as e:
            s.warn(f"{exe}: new processes are adopted after exec only: {e}")
            return
        self.watched[exe] = binary

    def _retry_pending(self, now: float) -> None:
        for pid, (since, exec_ns) in list(self._pending.items()):
            if self.consider(pid, after_exec=True, exec_ns=exec_ns) or now - since > EXEC_RETRY_S:
                self._pending.pop(pid, None)

    def consider(self, pid: int, after_exec: bool = False, exec_ns: int | None = None) -> bool:
        """Trace ``pid`` if a selector matches it and it runs a CPython with probes.

        True when the question is settled (traced, or certainly not), False when
        it should be asked again shortly (a fresh exec not yet showing Python).
        """
        s = self.session
        try:  # the cheap test first: most execs on a host are not Python
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return True  # gone, or a kernel thread
        traced = self._traced(pid)
        if not traced and not self.cfg.exe_may_match(exe):
            return True
        info = procs.info(pid, addresses=False)
        if info.exe is None or traced and info.cmdline is None:
            # gone or exiting (an exec'd process has both): a traced one is kept
            # as it is, not retargeted on what could not be read
            return True
        probes = self.cfg.probes_for(info) if info.parent_pid != os.getpid() else frozenset()
        if after_exec and traced and probes != self.matched[pid]:
            self._retarget(pid, probes, self.cfg.matching(info), self.cfg.budget_group(info))
            return True
        if traced:
            return True
        try:
            binary = s.check_pid(pid)
        except ScopeError:
            return not after_exec  # exec'd: its libpython may not be mapped yet
        if not probes:
            self._watch(s, self.cfg, info.exe, binary)  # its later processes may match
            if pid in s.targets and pid not in s.exited:
                s.set_probes(pid, frozenset())
            s.ignore(pid)  # not adopted by the probes just attached for any process
            return True
        try:
            s.add_pid(pid, probes=probes, binary=binary, exec_ns=exec_ns,
                      group=self.cfg.budget_group(info))
        except ScopeError as e:
            s.warn(f"process {pid} ({info.exe}) matched but cannot be traced: {e}")
            return True
        self._watch(s, self.cfg, info.exe, binary)
        self.matched[pid] = probes
        self.selected[pid] = self.cfg.matching(info)
        self.status(f"tracing process {pid} ({binary}) with {','.join(sorted(probes))}")
        return True

    def _retarget(self, pid: int, probes: frozenset[str], selectors: tuple[int, ...],
                  group: int = 0) -> None:
        self.session.set_probes(pid, probes, group)  # none: no longer traced
        if probes:
            self.matched[pid] = probes
            self.selected[pid] = selectors
        else:
            self.matched.pop(pid, None)
            self.selected.pop(pid, None)

    # -- reload ---------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: a valid new config replaces the old; a bad one is refused."""
        try:
            new = load_config(self.config_path)
            if new.root != self.cfg.root:
                prepare_root(new.root, daemon_owner(new))
        except ScopeError as e:
            self.reload_errors.append(str(e))
            self.session.warn(f"config reload refused, keeping the previous config: {e}")
            notify.notify(f"STATUS=config reload refused: {e}")
            return
        old, self.cfg = self.cfg, new
        self.reloads += 1
        notify.notify("RELOADING=1")
        restart = (any((k in old.probes) != (k in new.probes) for k in ("calls", "stacks"))
                   or (old.root, old.host, old.rotate_seconds, old.rotate_bytes,
                       old.max_targets, old.max_threads)
                   != (new.root, new.host, new.rotate_seconds, new.rotate_bytes,
                       new.max_targets, new.max_threads))
        if restart:
            # The new session is live before the old one detaches: no gap.
            previous, self.matched, self.selected = self.session, {}, {}
            self.session = self._open_session(new)
            self.scan()
            previous.close("config reloaded")
        else:
            for pid in list(self.matched):
                if not self._traced(pid):
                    continue
                info = procs.info(pid, addresses=False)
                self._retarget(pid, new.probes_for(info), new.matching(info),
                               new.budget_group(info))
            self.session.budgets.configure(new.budget_rates())
            for exe, binary in list(self.watched.items()):  # what new processes get
                self._watch(self.session, new, exe, binary)
            self.scan()
        if self.shipper is None and new.ship:
            self.shipper = Shipper(new.ship, new.root, self.session.warn)
            self.shipper.start()
        self.status(f"config reloaded ({len(self.matched)} process(es) traced)")
        notify.notify("READY=1\nSTATUS=config reloaded")

    def status_dict(self, now: float) -> dict:
        """What `daemon --status` prints (status.py): now, and rates since the last."""
        s = self.session
        then, cpu0, rows0 = self._status_at
        cpu = _cpu_seconds()
        rows = dict(s.written)
        dt = max(now - then, 1e-3)
        if now - self._output[0] >= OUTPUT_SCAN_EVERY_S:  # (retention's walk, if recent)
            parts, total = retention.scan(self.cfg.root)
            self._output = (now, total, len(parts))
        if now - self._maps[0] >= OUTPUT_SCAN_EVERY_S:
            self._maps = (now, {name: [s.program.maps[name].dump()[2],
                                       s.program.maps[name].max_entries]
                                for name in STATUS_MAPS})
        alive = {p for p in self.matched if p in s.targets and p not in s.exited}
        stats = s.program.stats()
        ship = None
        if self.shipper is not None:
            ship = dict(self.shipper.stats, last_upload=self.shipper.last_upload)
        return {
            "pid": os.getpid(), "started": self.started, "updated": time.time(),
            "config": str(self.cfg.path), "host": self.cfg.host, "root": str(self.cfg.root),
            "session_id": s.session_id, "probes": ",".join(sorted(s.opts.probes)),
            "processes": len(alive),
            "selectors": [{"index": i + 1, "match": sel.describe(),
                           "probes": sorted(sel.probes),
                           "processes": sum(i in self.selected.get(p, ()) for p in alive)}
                          for i, sel in enumerate(self.cfg.selectors)],
            "interval_s": dt,
            "rates": {t: (n - rows0.get(t, 0)) / dt for t, n in sorted(rows.items())},
            "rows": rows,
            "lost": {f"kernel.{k}": stats[k] for k in events.LOSSES},
            "adoption": dict(s.adoption),
            "maps": self._maps[1],
            "watched": sorted(self.watched),
            "breaker": {"state": _breaker_state(s.breaker),
                        "trips": s.breaker.trips if s.breaker else 0},
            "budgets": {"trips_by_selector": {str(g): t for g, t in s.budgets.trips.items()},
                        **s.budgets.totals} if s.budgets is not None and s.budgets.rates
            else None,
            "output_bytes": self._output[1], "parts": self._output[2],
            "ship": ship,
            "cpu_percent": 100 * (cpu - cpu0) / dt if rows0 else 0.0,
            "rss_bytes": _rss(), "reloads": self.reloads,
        }

    def write_status(self, now: float) -> None:
        try:
            st = self.status_dict(now)
            status_file.write(self.cfg.root, st)
        except (OSError, ScopeError) as e:
            self.session.warn(f"status file not written: {e}")
            st = {"rows": dict(self.session.written)}
        self._status_at = (now, _cpu_seconds(), st["rows"])

    def enforce_retention(self) -> None:
        if self.cfg.retain_bytes <= 0 and self.cfg.retain_days <= 0:
            return  # no limits: no need to walk the tree every few seconds
        parts, total = retention.scan(self.cfg.root)
        gone = retention.enforce(self.cfg.root, self.cfg.retain_bytes, self.cfg.retain_days,
                                 scanned=(parts, total))
        # what is left: the status file's figures, without a walk of its own
        self._output = (time.monotonic(), total - sum(p.size for p in gone),
                        len(parts) - len(gone))
        if gone:
            self.status(f"retention: deleted {len(gone)} oldest part(s)")


def _breaker_state(b: safety.Breaker | None) -> str:
    """'off' (no calls selector: nothing to trip), else closed, open or half-open."""
    if b is None or not b.rate:
        return "off"
    return {safety.CLOSED: "closed", safety.OPEN: "open",
            safety.HALF_OPEN: "half-open"}.get(b.state, str(b.state))


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def daemon_owner(cfg: Config) -> Ownership:
    """root:group (root by default), directories 0750 and files 0640."""
    return Ownership(0, group_id(cfg.group) if cfg.group else 0, shared=True)


def load_config(path: Path) -> Config:
    """The config, refused (one line) if anyone but root may write to it."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise ConfigError(f"{path} must be owned by root and writable only by root "
                          f"(it decides what a root daemon reads): chmod go-w, chown root")
    return cfgmod.load(path)


def check(config_path: Path) -> Config:
    """What ``daemon --check`` runs: every check start-up makes before it traces
    (the config, the host, the output root, created if missing as start-up
    would), so a config that passes is not then refused by the daemon."""
    cfg = load_config(config_path)
    check_environment()
    check_root(cfg.root, daemon_owner(cfg))
    return cfg


def check_root(root: Path, owner: Ownership) -> None:
    """The output root exists or can be created, and is writable (ConfigError)."""
    try:
        OutputDir(root, owner=owner).close()  # validates and proves writability
    except OutputError as e:
        raise ConfigError(f"output.root: {e}") from None


def prepare_root(root: Path, owner: Ownership) -> None:
    """Check the root is writable and drop unfinished parts of a killed daemon."""
    check_root(root, owner)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(".part-") and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(dirpath, name))
                except OSError:
                    pass
