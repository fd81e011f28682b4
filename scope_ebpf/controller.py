"""The tracing session: the one API the CLI, the daemon and the tests drive.

A Session owns the loaded BPF program, the uprobe links, the kernel's target
set and the output directory. Its loop drains the ring buffers in batches,
decodes them column-wise and hands Arrow batches to the writer; process state
is sampled once a second. ``close()`` is safe on every way out: it detaches
the probes first, drains what is left, writes calls still open with a null
duration, records every counter in ``session`` and closes the Parquet files.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import platform
import resource
import select
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import __version__, capabilities, events, procs, spawn, usdt
from .control import aggregates, safety
from .control.budgets import Budgets, group_mask
from .control.matchers import Matcher
from .control.sampling import Sampler
from .decode import Decoder, rows_to_batch
from .errors import ScopeError
from .kernel.links import PROBE_SETS, Binary, ProbeLinks
from .kernel.stacks import Sampler as StackSampler
from .program import Limits, Program, check_environment
from .redact import Redactor
from .safefs import AS_CREATED, Ownership
from .threads import Threads, hook_events, hook_name
from .writer import OutputDir, OutputError, new_session_id

PLAN_HEADROOM = 0.8
GUARD_K = 256  # further 1-in-k sampling of rows over budget within a 100 ms window
KEEP_NS = 1_000_000  # calls at least this long are never sampled (README: --max-rate)



def probe_mask(probes: frozenset[str] | set[str]) -> int:
    """The kernel's bits (PROBE_* in scope.h) for a set of probe set names."""
    mask = 0
    for name in probes:
        mask |= events.const(f"PROBE_{name.upper()}")
    return mask


def parse_probes(text: str) -> frozenset[str]:
    names = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = names - PROBE_SETS.keys()
    if unknown or not names:
        raise ScopeError(f"unknown probe set {', '.join(sorted(unknown)) or '(none)'}: "
                         f"choose from {','.join(PROBE_SETS)}")
    return names


@dataclass
class Options:
    output: Path
    probes: frozenset[str] = frozenset(PROBE_SETS) - {"stacks"}  # stacks: on request
    limits: Limits = field(default_factory=Limits)
    include: tuple[str, ...] = ()     # FILE:FUNCTION patterns (matchers.Matcher)
    exclude: tuple[str, ...] = ()
    min_duration_ns: int = 0          # shorter calls are counted, not written
    tids: tuple[int, ...] = ()        # only these threads' calls become rows
    thread_names: tuple[str, ...] = ()  # ... or threads whose name matches these globs
    max_rate: float = 200_000         # call rows/s budget for adaptive sampling; 0 = none
    breaker_rate: float = 2_000_000   # probe hits/s that trip the breaker; 0 = off
    max_cpu: float = 0                # controller CPU % that degrades tracing; 0 = off
    max_output: int = 0               # bytes of output that stop tracing; 0 = off
    poll_interval: float = 0.05       # seconds between ring buffer drains (a quarter-full
                                      # calls buffer is drained at once)
    stacks_poll_interval: float = 1.0  # the same without calls or sched probes: samples
                                      # come at most --sample-hz per CPU; a new stack or
                                      # a process event wakes it sooner (a new stack's
                                      # code objects are resolved while they live)
    stacks_min_interval: float = 0.05  # ... but never more often than this
    sample_interval: float = 1.0      # seconds between psutil samples
    control_interval: float = 0.1     # seconds between sampling decisions
    snapshot_interval: float = 2.0    # seconds between functions snapshots
    rotate_seconds: float = 60        # a Parquet part is closed this old ...
    rotate_bytes: int = 0             # ... or this big (0: no size limit)
    host: str | None = None           # set: Hive partitions host=H/date=D/hour=HH (daemon)
    watch_exec: bool = False          # hear of every exec on the host (see on_exec)
    adopt: bool = False               # interpreter files are attached for any process,
                                      # which the kernel adopts at its first instruction
                                      # until on_adopt decides (daemon)
    owner: Ownership = AS_CREATED     # who owns the output, and whether a group shares it
    redact: tuple[str, ...] = ()      # extra regexes masked in command lines
    no_redact: bool = False           # keep command lines as they are
    net_addresses: bool = False       # addresses of every target's namespace, not only
                                      # of namespaces other than ours (daemon)
    append: bool = False              # add a session to an output that holds a trace
                                      # (else refused); the daemon always appends
    sample_hz: int = 99               # stacks probe set: timer samples per second per CPU


class Session:
    """One tracing session writing to one output directory."""

    def __init__(self, options: Options, status: Callable[[str], None] = lambda s: None):
        check_environment()  # root, headers, tracefs: before anything is created
        self.opts = options
        self.status = status
        self.out: OutputDir | None = None
        self.program: Program | None = None
        self.links: ProbeLinks | None = None
        self.stacks: StackSampler | None = None  # the stacks probe set's user side
        self._stacks_added = False  # stacks_fallback() added the set (not asked for)
        self._fallback_pids: set[int] = set()  # ... for these (it said so already)
        self.targets: dict[int, procs.ProcInfo] = {}
        self.exited: set[int] = set()
        self._traced: dict[int, None] = {}  # pids for the session row, in order
        self.traced_count = 0
        self._completed = 0  # calls counted by the kernel, summed over snapshots
        # exited processes: what is kept about their functions goes one snapshot
        # later, when their last staged calls have surely been decoded
        self._reap: set[int] = set()
        self._reap_next: set[int] = set()
        self._user_dropped: Counter[int] = Counter()  # rows dropped here, per function id
        self.warnings: list[str] = []
        self.written: Counter[str] = Counter()
        self.meta: dict[str, str] = {}
        self.last_stats: dict[str, int] = {}
        self._cpu_at_open = 0
        self._last_sample = 0.0
        self._closed = False
        self._match_rows: list[dict] = []  # session rows: what each --thread-name matched
        self._cleanup: list[str] = []  # files we left in targets' roots
        self.matcher = Matcher(list(options.include), list(options.exclude))
        self.redactor = Redactor(options.redact, defaults=not options.no_redact)
        # The plan aims below the budget; the kernel's row guard enforces the budget
        # itself, and rarely needs to if the plan leaves it headroom.
        self.sampler = (Sampler(options.max_rate * PLAN_HEADROOM) if options.max_rate > 0
                        else None)
        self.breaker: safety.Breaker | None = None
        self.budgets: Budgets | None = None  # per daemon selector and process (budgets.py)
        self._rng = np.random.default_rng()
        self._totals = aggregates.Totals.empty()      # at the last functions snapshot
        self._control_totals = aggregates.Totals.empty()  # at the last sampling decision
        self._last_control = self._last_snapshot = self._last_limits = time.monotonic()
        self._last_counters = time.monotonic()
        self._last_lost = 0
        self._cpu_window = (time.monotonic(), _cpu_seconds())
        self._over_cpu = 0
        self.threads = Threads(options.thread_names, self._select_tid, status)
        self.stop_reason: str | None = None  # set when a self-limit ends the session
        self.detach_ns = 0
        self.start_ns = time.time_ns()
        self.session_id = new_session_id()  # in every row this session writes
        self._output_error: OutputError | None = None  # the first write that failed
        self.decoder = Decoder(_mono_to_wall())
        # With watch_exec: called with (pid, filename) for every exec on the host,
        # before its row is written; the daemon decides there what becomes a target.
        self.on_exec: Callable[[int, str, int], None] | None = None  # pid, exe, ts_ns
        # With adopt: called with the kernel's "start" row of every process it
        # adopted, before any of its rows is written; answers with confirm()
        # or ignore(). Until then its rows wait in the ring buffers.
        self.on_adopt: Callable[[dict], None] | None = None
        self._ignored: dict[int, None] = {}  # pids ignored whose rows may still come
        self._ignored_pids: np.ndarray | None = None
        self._exec_ns: dict[int, int] = {}  # pid -> its last exec (adopt), for adopt_ns
        self.adoption: Counter[str] = Counter()  # adopt.* counters
        self._decide_ns: deque[int] = deque(maxlen=_DECISIONS_KEPT)  # adoption -> decision

    # -- set-up -------------------------------------------------------------

    def open(self) -> None:
        """Create the output, compile and load the BPF program (tracepoints go live)."""
        o = self.opts
        try:
            self.out = OutputDir(o.output, rotate_seconds=o.rotate_seconds,
                                 rotate_bytes=o.rotate_bytes, owner=o.owner,
                                 partition=hive_partition(o.host) if o.host else None,
                                 session_id=self.session_id, fresh=not o.append)
        except OutputError as e:
            raise ScopeError(str(e)) from None
        self.status("compiling BPF program")
        stacks = "stacks" in o.probes
        self.program = Program(dataclasses.replace(o.limits, stacks=stacks),
                               sched="sched" in self.opts.probes)
        limit = math.ceil(o.breaker_rate * safety.WINDOW_S) if o.breaker_rate > 0 else 0
        self.program.set_config(
            min_duration_ns=o.min_duration_ns, breaker_limit=limit,
            tid_filter=int(bool(o.tids or o.thread_names)),
            row_limit=math.ceil(o.max_rate * events.const("GUARD_WINDOW_NS") / 1e9)
            if self.sampler else 0,
            guard_k=GUARD_K, keep_ns=KEEP_NS if self.sampler else 0,
            any_pid_mask=probe_mask(o.probes), watch_exec=int(o.watch_exec))
        for tid in o.tids:
            self.program.select_tid(tid)
        self.meta["uprobe_links"] = "uprobe_multi" if self.program.uprobe_multi else "perf_event"
        self.links = ProbeLinks(self.program, o.probes, o.limits.max_specs, self.warn,
                                blocked=lambda: self.breaker is not None
                                and self.breaker.state == safety.OPEN)
        self.budgets = Budgets(self.program)
        self.breaker = safety.Breaker(self.program, o.breaker_rate,
                                      detach=self.links.detach_calls,
                                      attach=self.links.attach_calls)
        if stacks:
            self.stacks = StackSampler(self.program, self.warn)
            self.program.start_sampling(o.sample_hz)
            self.meta["sample_hz"] = str(o.sample_hz)
        self._cpu_at_open = int(_cpu_seconds() * 1e9)

    @property
    def binaries(self) -> dict[tuple[int, int], Binary]:
        return self.links.binaries if self.links is not None else {}

    def attach_binary(self, path: str, *, any_pid: bool = False) -> Binary:
        """Attach the selected probes of an interpreter file, once per file
        (see ProbeLinks.attach_binary)."""
        assert self.links is not None
        return self.links.attach_binary(path, any_pid=any_pid or self.opts.adopt)

    def watch_exe(self, exe: str, probes: frozenset[str]) -> bool:
        """Adopt: every process that runs the executable ``exe`` is adopted in
        the kernel at its first instruction with ``probes``, for on_adopt to
        decide (none: not adopted). True if it was not watched yet."""
        assert self.opts.adopt and self.links is not None
        return self.links.attach_entry(exe, probe_mask(probes & self.opts.probes))

    def confirm(self, row: dict, probes: frozenset[str], binary: str | None = None,
                group: int = 0) -> None:
        """Adopt: trace the process of a kernel "start" row with ``probes``
        (on_adopt's answer). A process that has exited meanwhile keeps its rows."""
        pid = row["pid"]
        self._unignore(pid)
        alive = self.program.confirm_target(pid, probe_mask(probes & self.opts.probes)
                                            | group_mask(group))
        info = self.adopted_info(row, binary, redact=True)
        exec_ns = self._exec_ns.pop(pid, None)
        adopted = {"new_binary": False}
        if exec_ns is not None:
            adopted["adopt_ns"] = max(row["ts_ns"] - exec_ns, 0)
        self.adoption["confirmed"] += 1
        self._started(pid, binary, ts_ns=row["ts_ns"], adopted=adopted, info=info,
                      alive=alive and procs.alive(pid))

    def ignore(self, pid: int) -> None:
        """Adopt: not a target (on_adopt's answer, or a process a scan did not
        select): the kernel stops tracing it and will not adopt it again until
        it execs; rows it sent meanwhile are dropped, counted."""
        if pid in self.targets and pid not in self.exited:
            raise ValueError(f"process {pid} is traced: set_probes() stops that")
        self.program.ignore(pid)
        if not os.path.exists(f"/proc/{pid}"):
            self.program.unignore(pid)  # it exited before: the kernel's exit hook has run
        self._exec_ns.pop(pid, None)
        self._ignored[pid] = None
        self._ignored_pids = None
        self._reap.add(pid)  # what the kernel interned of it goes after the snapshots
        self.adoption["ignored"] += 1

    def ignored(self, pid: int) -> bool:
        """Adopt: whether ``pid`` was ignored and its rows may still come."""
        return pid in self._ignored

    def _unignore(self, pid: int) -> None:
        """Traced after all: off the kernel's ignored map and the row gate."""
        self.program.unignore(pid)
        if self._ignored.pop(pid, None) is not None:
            self._ignored_pids = None

    def adopted_info(self, row: dict, binary: str | None = None,
                     redact: bool = False) -> procs.ProcInfo:
        """What /proc tells of a process the kernel adopted, completed with what
        the kernel saw (a process that has exited, even a zombie not yet reaped,
        has no command line or executable there any more)."""
        info = procs.info(row["pid"], binary, self.redactor if redact else None,
                          self.opts.net_addresses or None if redact else False)
        if info.exe is None or info.cmdline is None:
            if not redact:  # (counted once, at the decision)
                self.adoption["decided_by_kernel_view"] += 1
                if not row.get("argv"):
                    self.adoption["decided_without_argv"] += 1
            seen = self.kernel_info(row, redact)
            for name in ("exe", "cmdline", "python_version", "uid", "user", "cgroup"):
                if getattr(info, name) is None:
                    setattr(info, name, getattr(seen, name))
        return info

    def kernel_info(self, row: dict, redact: bool = False) -> procs.ProcInfo:
        """A process as the kernel saw it at adoption (its executable, argv, uid
        and cgroup): for a process gone before /proc could be read."""
        exe = self.links.entry_paths.get(row.get("cookie")) if self.links else None
        argv = row.get("argv") or []
        if redact and self.redactor.active:
            argv = self.redactor.argv(argv)
        uid = row.get("uid")
        cg = procs.cgroup_path(row["cgroup_id"]) if row.get("cgroup_id") else None
        return procs.ProcInfo(row["pid"], exe, " ".join(argv)[:procs.MAX_CMDLINE] or None,
                              procs.python_version(exe), None, uid,
                              procs.user_name(uid) if uid is not None else None, cg)

    def _adoptions(self, rows: list[dict]) -> None:
        """Adopt: decide on the processes the kernel adopted, before any of
        their rows is written; a child of an ignored process is ignored."""
        for row in rows:
            ev, pid = row["event"], row["pid"]
            if ev == "exec":
                if len(self._exec_ns) >= _EXEC_KEPT:  # the host's execs, most not Python
                    self._exec_ns.clear()
                self._exec_ns[pid] = row["ts_ns"]
            elif ev == "start":
                self.adoption["adopted"] += 1
                self.on_adopt(row)
                # how long it ran adopted before the decision reached the kernel
                wait = max(time.time_ns() - row["ts_ns"], 0)
                self.adoption["decide_ns_total"] += wait
                self.adoption["decide_ns_max"] = max(self.adoption["decide_ns_max"], wait)
                self._decide_ns.append(wait)
            elif ev == "fork" and row["parent_pid"] in self._ignored:
                self.ignore(pid)

    def check_pid(self, pid: int) -> str:
        """Validate a running target before anything is loaded; return its probe file."""
        procs.validate_pid(pid)
        try:
            binary = usdt.find_python_binary(pid)
        except usdt.ProbeError as e:
            raise ScopeError(str(e)) from None
        if not _has_python_probes(binary):
            exe = procs.info(pid).exe or binary
            if "stacks" not in self.opts.probes:
                raise ScopeError(f"process {pid} ({exe}) is not a CPython with USDT probes "
                                 "(--probes stacks samples its stacks without them)")
            _check_runtime(pid, exe)
        return binary

    def stacks_fallback(self, pid: int | None, binary: str, activate: bool = False) -> str | None:
        """When calls are asked for but a target will give none (3.11 without a hook,
        3.12, 3.13 not started with the trampoline, a build without probes), add the
        stacks probe set instead; the one line that says so, else None. Before open()."""
        probes = self.opts.probes
        if "calls" not in probes or "stacks" in probes and not self._stacks_added:
            return None
        try:
            caps = capabilities.of_file(binary)
        except usdt.ProbeError:
            return None
        if not caps.cpython:
            return None
        instead = "instead"
        if caps.has_probes:
            ok, _why = caps.calls(launched=pid is None)
            if ok or (activate and caps.calls_mode == "eval"):
                return None
            why = {"usdt+hook": "calls only while it has a profile or trace hook",
                   "eval": "no calls: no function probes, and the perf trampoline is off"}.get(
                       caps.calls_mode, "no calls: no function probes")
            if caps.calls_mode == "usdt+hook":  # it may have a hook: calls stay attached
                instead = "as well"
        else:
            why = "no calls: no USDT probes in this build"
        self.opts.probes = probes | {"stacks"}
        self._stacks_added = True
        if pid is not None:
            self._fallback_pids.add(pid)
        who = f"process {pid}" if pid is not None else os.path.basename(binary)
        return (f"{who} (CPython {caps.version or '?'}): {why}: sampling its Python "
                f"stacks at {self.opts.sample_hz} Hz {instead} (--probes stacks)")

    @staticmethod
    def check_activate(pid: int, binary: str) -> None:
        """Refuse ``--activate`` for a target that needs it but cannot run it, before
        anything is created: eval mode below 3.14 has no sys.remote_exec."""
        if capabilities.of_file(binary).calls_mode != "eval":
            return  # its calls are traced without the trampoline
        version = procs.python_version(binary) or "?"
        from . import activate as act

        act.check_version(pid, version)

    def add_pid(self, pid: int, *, activate: bool = False,
                probes: frozenset[str] | None = None, binary: str | None = None,
                exec_ns: int | None = None, group: int = 0) -> None:
        """Trace a running process from now on.

        ``activate`` turns the perf trampoline on in a 3.14 target (it runs code
        in the target, so only on request) so that its calls can be traced.
        ``probes`` narrows the session's probe sets for this process (daemon
        selectors); the session must have attached them. ``binary``: what
        check_pid() already returned for ``pid``, not to check it twice.
        ``exec_ns``: when the kernel saw it exec (daemon adoption), for its start
        row's adopt_ns. ``group``: its budget group (budgets.py), 0 for none.
        """
        assert self.program is not None
        binary = binary or self.check_pid(pid)
        known = len(self.binaries)
        b = self.attach_binary(binary)
        new_binary = len(self.binaries) > known
        probes = self.opts.probes if probes is None else probes & self.opts.probes
        ok, why = capabilities.of_file(binary).calls(launched=False)
        if activate and "calls" in probes and b.calls_mode == "eval":
            from . import activate as act

            self._cleanup += act.perf_trampoline(pid, binary,
                                                 procs.python_version(binary) or "?")
            self.meta["perf_trampoline"] = "activated with sys.remote_exec"
            self.status(f"activated the perf trampoline in process {pid}")
            ok = True
        if "calls" in probes and b.calls_mode != "none" and not ok and (
                pid not in self._fallback_pids):
            self.warn(f"process {pid} (CPython {procs.python_version(binary)}): {why}. "
                      "gc, sched and process data are recorded either way")
        self.program.add_target(pid, probe_mask(probes) | group_mask(group))
        if self.opts.adopt:
            self._unignore(pid)
        adopted = {"new_binary": new_binary}
        if exec_ns is not None:
            adopted["adopt_ns"] = max(time.time_ns() - exec_ns, 0)
        self._started(pid, binary, adopted=adopted)

    def set_probes(self, pid: int, probes: frozenset[str], group: int = 0) -> None:
        """Change a target's probe sets (and budget group); none at all stops
        tracing it."""
        probes &= self.opts.probes
        if not probes:
            self.program.remove_target(pid)
            self.targets.pop(pid, None)
        else:
            self.program.add_target(pid, probe_mask(probes) | group_mask(group))

    @staticmethod
    def check_exe(path: str) -> str:
        """Validate an --exe file before anything is loaded; return its real path."""
        real = os.path.realpath(path)
        if not os.path.isfile(real):
            raise ScopeError(f"no such file: {path}")
        if not _has_python_probes(real):
            raise ScopeError(f"{path} has no CPython USDT probes (for a shared build, pass "
                             "its libpython3.X.so; CPython must be built with --with-dtrace)")
        return real

    def add_exe(self, path: str) -> Binary:
        """Exe mode: trace every process that runs ``path``, now or started later."""
        real = self.check_exe(path)
        b = self.attach_binary(real, any_pid=True)
        self.meta.setdefault("exe_mode", "")
        self.meta["exe_mode"] = ",".join(filter(None, [self.meta["exe_mode"], real]))
        return b

    def python_binaries(self) -> list[str]:
        """Every distinct interpreter file with probes that a running process uses."""
        found: dict[tuple[int, int], str] = {}
        for pid in procs.python_pids():
            if pid == os.getpid():
                continue
            try:
                binary = usdt.find_python_binary(pid)
                st = os.stat(binary)
            except (usdt.ProbeError, OSError):
                continue
            if (st.st_dev, st.st_ino) not in found and _has_python_probes(binary):
                found[(st.st_dev, st.st_ino)] = binary
        return list(found.values())

    def check_command(self, argv: list[str], root: str = "/") -> tuple[str, str]:
        """(executable, interpreter) of a command to launch, validated up front."""
        exe, interp = spawn.resolve(argv, root)
        if not _has_python_probes(interp) and "stacks" not in self.opts.probes:
            raise ScopeError(f"{interp} has no CPython USDT probes (built without "
                             "--with-dtrace); Debian's and Fedora's /usr/bin/python3 have them")
        return exe, interp

    def launch(self, argv: list[str], *, hook: bool = True, root: str = "/") -> spawn.Child:
        """Start ``argv`` (inside ``root``) with the probes live before its first instruction."""
        exe, interp = self.check_command(argv, root)
        binary = self.attach_binary(interp)  # raises if it is not a Python with probes
        env = dict(os.environ)
        if hook and binary.calls_mode == "usdt+hook":
            env = spawn.hook_env(env)
            self.meta["profile_hook"] = "slice (installed by sitecustomize)"
        elif binary.calls_mode == "eval":
            # Every Python call then enters _PyEval_EvalFrameDefault on its own.
            env["PYTHONPERFSUPPORT"] = "1"
            self.meta["perf_trampoline"] = "PYTHONPERFSUPPORT=1"
        pid, go, err = spawn.fork_held(exe, argv, env, root)
        try:
            self.program.add_target(pid, probe_mask(self.opts.probes))
        except BaseException:
            spawn.cancel(pid, go, err)
            raise
        spawn.release(pid, go, err, exe)  # returns once it has exec'd
        self._started(pid, interp)
        self.meta["command"] = " ".join(self.redactor.argv(argv))
        if binary.calls_mode == "usdt+hook" and hook and "audit" in self.opts.probes:
            self.meta["python_thread_names"] = "reported by the hook (audit event)"
        return spawn.Child(pid, argv, exe, interp)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.status("warning: " + msg)

    # -- the loop -----------------------------------------------------------

    def poll(self) -> int:
        """Drain every ring buffer once; return the number of records."""
        p = self.program
        assert p is not None
        # Calls first, then names: every function a drained call refers to
        # was submitted before that call, so it is in this names batch.
        calls, calls_pos = p.rings["calls_rb"].peek()
        # paths before names too: a path is sent after the function it ends in
        paths = p.rings["paths_rb"].drain()
        funcs = p.rings["funcs_rb"].drain()
        gc = p.rings["gc_rb"].drain()
        sched = p.rings["sched_rb"].drain()
        imports = p.rings["imports_rb"].drain()
        audit = p.rings["audit_rb"].drain()
        if self.stacks is not None:
            samples, new = p.rings["samples_rb"].drain(), p.rings["pystacks_rb"].drain()
        # Process events last: a process the kernel adopted sent its adoption
        # before any of its rows, so each row drained above has its process's
        # adoption in this batch, and that is decided before any row is written.
        proc = p.rings["proc_rb"].drain()
        prows = self.decoder.proc_events(proc) if len(proc) else []
        if self.on_adopt is not None and prows:
            self._adoptions(prows)
        nsamples = self._samples(samples, new) if self.stacks is not None else 0
        self._learn(funcs)
        self._paths(paths)
        ncalls = 0
        part = None
        try:
            for part in calls:
                for i in range(0, len(part), _BATCHES_PER_DECODE):
                    # in slices: a full ring decoded at once would double the peak memory
                    chunk = _unbatch(part[i:i + _BATCHES_PER_DECODE])
                    ncalls += len(chunk)
                    self._calls(chunk)
        finally:
            # Views into the ring's mapping: a failed write's traceback keeps this
            # frame, and with it these, alive; unmapping the ring then fails
            # (BufferError: cannot close exported pointers exist).
            del calls, part
        p.rings["calls_rb"].release(calls_pos)
        # (after _samples: the stacks these carry were sent before them)
        if len(gc):
            self._add("gc", self.decoder.gc(gc, self._stack_ids(gc)))
        if len(sched):
            self._add("sched", self.decoder.sched(sched, self._stack_ids(sched)))
        if len(imports):
            self._add("imports", self.decoder.imports(imports))
        hooked = hook_events(audit) if len(audit) else None
        if hooked is not None and not hooked.all():
            self._add("audit", self.decoder.audit(audit[~hooked],
                                                  self._stack_ids(audit[~hooked])))
        if prows:
            self._proc_events(prows)
        if hooked is not None and hooked.any():
            # after the proc events: a thread's creation comes before its hook's report
            self._hook_names(audit[hooked])
        self._thread_rows()
        now = time.monotonic()
        if now - self._last_sample >= self.opts.sample_interval:
            self._last_sample = now
            self.sample()
        if now - self._last_control >= self.opts.control_interval:
            self._control(now)
        self._breaker()
        if now - self._last_snapshot >= self.opts.snapshot_interval:
            self._snapshot(now)
        if now - self._last_counters >= self.opts.rotate_seconds:
            self._last_counters = now
            self._write_counters(self._counts(self.program.stats()))
        if now - self._last_limits >= 0.25:
            self._limits(now)
            try:
                self.out.tick()  # rotation
            except OutputError as e:
                self._output_error = self._output_error or e
                if not self._closed:
                    raise
        if self.stacks is not None:
            self.stacks.poll(p.stat("samples_no_thread"))
        return ncalls + nsamples + sum(map(len, (funcs, paths, gc, sched, proc, imports, audit)))

    def _stack_ids(self, r: np.ndarray) -> pa.Array | None:
        """The stack_id column of gc, sched or audit records (stacks set), else None."""
        return self.stacks.resolve(r) if self.stacks is not None else None

    def _samples(self, samples: np.ndarray, new: np.ndarray) -> int:
        """Samples, then the stacks they carry (each sent before its first sample,
        and drained after it), resolved now while their processes live."""
        if len(new):
            batch = self.stacks.stacks(new, self.decoder.offset)
            if batch is not None:
                self._add("stacks", batch)
        if len(samples):
            self._add("samples", self.stacks.samples(samples, self.decoder.offset))
        return len(samples)

    def _learn(self, funcs: np.ndarray) -> None:
        """New functions: their names, and the matcher's verdict on them."""
        new = self.decoder.functions.add(funcs)
        if new and self.matcher.active:
            drop = [fid for fid, name, file in new if not self.matcher.keep(file, name)]
            self.decoder.functions.set_keep(drop, False)
            self._verdicts({fid: 0 for fid in drop})

    def _paths(self, recs: np.ndarray) -> None:
        if len(recs):
            batch = self.decoder.paths.add(recs, self.decoder.functions)
            if batch is not None:
                self._add("stacks", batch)

    def _calls(self, calls: np.ndarray) -> None:
        """Decode call records (possibly a view into the ring: nothing keeps them)."""
        if self._ignored:  # before decoding: most rows of a busy ignored process
            drop = self._discarded("calls", calls["pid"])
            if drop is not None:
                calls = calls[~drop]
        f = self.decoder.functions
        found = f.find(calls["func_id"])
        keep, weights = f.row_filter(found, calls["weight"], self._rng,
                                     calls["duration_ns"] >= KEEP_NS)
        if not keep.all():
            # decisions the kernel did not have yet: counted per function as dropped
            gone = calls["func_id"][~keep & ((calls["flags"] & _CALL_OPEN) == 0)]
            for fid, n in zip(*np.unique(gone, return_counts=True), strict=True):
                self._user_dropped[int(fid)] += int(n)
            calls, weights = calls[keep], weights[keep]
            found = (found[0][keep], found[1][keep])
        if len(calls):
            self._add("calls", self.decoder.calls(calls, weights, found))

    def _control(self, now: float) -> None:
        """Sampling from exact per-function rates, then the breaker."""
        seconds = now - self._last_control
        self._last_control = now
        if self.sampler is not None and "calls" in self.opts.probes:
            # (without calls probes no function has a rate: the map dump is skipped)
            totals = aggregates.read(self.program)
            count = totals.since(self._control_totals).count
            self._control_totals = totals
            f = self.decoder.functions
            kept = f.kept(totals.ids)
            # id 0 collects calls whose function could not be interned: no verdict for it
            # (a count below the last one: the function was forgotten and interned
            # anew meanwhile; no rate to plan from)
            counts = {int(i): int(c) for i, c, k in zip(totals.ids, count, kept, strict=True)
                      if c > 0 and k and i != events.const("SCOPE_NO_FUNC")}
            changes = self.sampler.update(counts, seconds, time.time_ns())
            self._verdicts({fid: new for fid, _old, new, _r in changes})
            for fid, _old, new, _rate in changes:
                f.set_k(fid, new)
            if changes:
                self._sampling_rows(changes, "rate")
    def _verdicts(self, ks: dict[int, int]) -> None:
        """Per-function k (0: drop) into the kernel's interning map."""
        if ks:
            keys = self.decoder.functions.kernel_keys(list(ks))
            self.program.set_verdicts([(fid, key, ks[fid]) for fid, key in keys])

    def _breaker(self) -> None:
        """Every loop: the kernel may have tripped it; detach without delay. The
        budgets of selectors and processes trip and re-admit in the kernel: their
        trips are written as they are seen."""
        for t in self.breaker.poll() if self.breaker is not None else ():
            self._breaker_row(t)
            self.status(f"breaker {t.state}: {t.reason}")
        rows = self.budgets.poll() if self.budgets is not None else []
        if rows:
            ts = time.time_ns()
            self._add("breaker", rows_to_batch("breaker", [dict(r, ts_ns=ts) for r in rows]))
            for r in rows:
                self.status("breaker open: " + r["reason"])

    def _breaker_row(self, t: safety.Transition) -> None:
        self._add("breaker", rows_to_batch("breaker", [{
            "ts_ns": t.mono_ns + self.decoder.offset, "state": t.state, "rate": t.rate,
            "limit": self.opts.breaker_rate or None, "backoff_s": t.backoff_s,
            "reason": t.reason}]))

    def _sampling_rows(self, changes: list[tuple[int, int, int, float]], reason: str) -> None:
        rows = []
        ts = time.time_ns()
        for fid, old, new, rate in changes:
            pid, name, file, _line = self.decoder.functions.describe(fid)
            rows.append({"ts_ns": ts, "pid": pid, "function": name, "file": file,
                         "rate": rate, "old_k": old, "new_k": new,
                         "budget": self.sampler.budget, "reason": reason})
        self._add("sampling", rows_to_batch("sampling", rows))

    def _snapshot(self, now: float, final: bool = False) -> None:
        """Write the aggregates accumulated since the last snapshot. A function
        whose name has not arrived yet (interned after the names were drained)
        waits for the next one; at the final snapshot, names that never came
        (a full names buffer, counted) are taken from the kernel's key. So do
        the functions of a process the daemon has not decided on yet."""
        self._last_snapshot = now
        f = self.decoder.functions
        totals = aggregates.read(self.program)
        self._learn(self.program.rings["funcs_rb"].drain())
        known = f.find(totals.ids)[1]
        if final and not known.all():
            f.add(self.program.func_keys(totals.ids[~known]))  # known by pid and line
            known[:] = True
        ready = known & self._decided(f.pids_of(totals.ids))
        if not ready.all():
            totals = totals.hold(self._totals, ready)
        delta = totals.since(self._totals)
        batch = None
        if len(totals.ids) or len(self._totals.ids) or self._user_dropped:  # (stacks only: none)
            batch = aggregates.functions_batch(totals, delta, f, time.time_ns(),
                                               self._user_dropped)
        self._user_dropped.clear()
        self._completed += int(delta.count.clip(min=0).sum())
        self._totals = totals
        if batch is not None:
            self._add("functions", batch)
        if final:
            return  # nothing is forgotten at the end: nothing comes after
        if self._reap_next:
            self._forget(self._reap_next)
        self._reap_next, self._reap = self._reap, set()

    def _decided(self, pids: np.ndarray) -> np.ndarray | bool:
        """Adopt: which of these processes user space has decided on (traced or
        ignored). One the kernel adopted after the last drain of process events
        has aggregates already: they wait for its decision, as its rows do."""
        if self.on_adopt is None:
            return True
        decided = np.fromiter(itertools.chain(self.targets, self._ignored), np.int64,
                              len(self.targets) + len(self._ignored))
        return np.isin(pids, decided)

    def _forget(self, pids: set[int]) -> None:
        """Exited processes' last calls are in the totals just written: drop what
        is kept about them, in the kernel (the interning map would fill with the
        dead) and here (exe mode and the daemon see processes come and go for days)."""
        f = self.decoder.functions
        ids = f.ids_of(pids)
        # the kernel's own list, not only the named ones: a function whose name
        # record was lost would stay, and come back at the next snapshot
        self.program.forget_functions(self.program.functions_of(pids))
        f.forget(ids)
        self.decoder.paths.forget(pids)
        if self.stacks is not None:
            self.stacks.forget(pids)
        if self.sampler is not None:
            self.sampler.forget(ids)
        if self.budgets is not None:
            self.budgets.forget(pids)
        self.threads.forget(pids)
        for pid in pids:
            self.targets.pop(pid, None)
            self.exited.discard(pid)
            if self._ignored.pop(pid, None) is not None:
                self._ignored_pids = None

    def _limits(self, now: float) -> None:
        """Self-limits, four times a second: kernel buffer loss, controller CPU, output size."""
        self._last_limits = now
        stats = self.program.stats()
        lost = stats["calls_lost"]
        if lost > self._last_lost and self.sampler is not None:
            self._degrade(f"the kernel lost {lost - self._last_lost:,} call records",
                          "kernel buffer loss")
        self._last_lost = lost
        if self.opts.max_cpu > 0 and now - self._cpu_window[0] >= 1.0:
            t0, c0 = self._cpu_window
            c1 = _cpu_seconds()
            cpu = (c1 - c0) * 100 / (now - t0)
            self._cpu_window = (now, c1)
            self._over_cpu = self._over_cpu + 1 if cpu > self.opts.max_cpu else 0
            if self._over_cpu >= 2:
                self._over_cpu = 0
                self._degrade(f"controller at {cpu:.0f}% CPU > --max-cpu "
                              f"{self.opts.max_cpu:g}%", "controller cpu")
        if self.opts.max_output > 0 and self.out.bytes_on_disk() >= self.opts.max_output:
            self.stop_reason = (f"--max-output {self.opts.max_output:,} bytes reached")

    def _degrade(self, why: str, reason: str) -> None:
        """Sampling first; once the budget is at its floor, the breaker."""
        if self.sampler is not None and self.sampler.budget > Sampler.MIN_BUDGET:
            self.sampler.scale_budget(0.5)
            self.warn(f"{why}: call row budget lowered to {self.sampler.budget:,.0f}/s")
            self._add("sampling", rows_to_batch("sampling", [{
                "ts_ns": time.time_ns(), "budget": self.sampler.budget, "reason": reason}]))
        elif self.breaker is not None:
            t = self.breaker.trip(why)
            if t:
                self._breaker_row(t)
                self.warn(f"{why}: breaker opened")

    def _select_tid(self, tid: int) -> None:
        """--thread-name: a thread's name matched; its calls become rows from now on."""
        self.program.select_tid(tid)

    def _hook_names(self, r: np.ndarray) -> None:
        """Python thread names reported by the 3.11 run hook (audit events)."""
        for rec in r:
            name = hook_name(bytes(rec["event"]))
            if name is not None:
                self.threads.seen(int(rec["ts_ns"]) + self.decoder.offset, int(rec["pid"]),
                                  int(rec["tid"]), python_name=name)

    def _thread_rows(self) -> None:
        rows = self.threads.take_rows()
        if rows:
            self._add("threads", rows_to_batch("threads", rows))

    def _write_open_calls(self, exited: bool = False) -> None:
        """Rows for calls open at stop, or (``exited``) when their thread exited."""
        frames = self.program.open_frames(exited)
        if frames:
            self._add("calls", self.decoder.open_calls(frames))

    def sample(self) -> None:
        self._write_open_calls(exited=True)
        rows = []
        ts = time.time_ns()
        for pid, info in self.targets.items():
            if pid in self.exited:
                continue
            s = procs.sample(pid)
            if s is None:
                self.exited.add(pid)
                self._reap.add(pid)
                continue
            rows.append({"ts_ns": ts, "pid": pid, "event": "sample", "exe": info.exe,
                         "python_version": info.python_version, **s})
            if s["num_threads"] != self.threads.count(pid):
                # events keep names current; a count that differs means threads
                # exited (no event) or events were lost: look at /proc
                self.threads.scan(pid, ts)
        if rows:
            self._add("processes", rows_to_batch("processes", rows))
        self._thread_rows()

    def _started(self, pid: int, binary: str | None = None, ts_ns: int | None = None,
                 adopted: dict | None = None, info: procs.ProcInfo | None = None,
                 alive: bool = True) -> None:
        self._new_target(pid)
        info = self.targets[pid] = info or procs.info(pid, binary, self.redactor,
                                                      self.opts.net_addresses or None)
        self._add("processes", rows_to_batch("processes", [{
            "ts_ns": ts_ns or time.time_ns(), "event": "start", **info.row(),
            **(adopted or {})}]))
        self.threads.add_process(pid, info.python_version, ts_ns)
        self._thread_rows()
        if self.stacks is not None and alive:
            self.stacks.add(pid)

    def _new_target(self, pid: int) -> bool:
        """Count ``pid`` as a new target unless it is one already; True if new."""
        if pid in self.targets and pid not in self.exited:
            return False  # already traced (the daemon retargets, a fork row after a start)
        # A reused pid is a new process: not exited, and not to be forgotten at
        # the next snapshot (the old one's functions go when this one exits).
        self.exited.discard(pid)
        self._reap.discard(pid)
        self._reap_next.discard(pid)
        # for the session row; the first ones only: the daemon sees processes for days
        self.traced_count += 1
        if len(self._traced) < _TRACED_LISTED:
            self._traced[pid] = None
        return True

    def _proc_events(self, rows: list[dict]) -> None:
        other = []
        for row in rows:
            if row["event"] == "start":  # adopted by the kernel (exe mode, daemon)
                if self.on_adopt is None:  # (else decided by _adoptions)
                    self._started(row["pid"], ts_ns=row["ts_ns"])
                continue
            if row["event"] == "exec" and self.on_exec is not None:
                traced = row["pid"] in self.targets
                self.on_exec(row["pid"], row.get("exe") or "", row["ts_ns"])
                if not traced:  # the whole host's execs: only targets' are rows
                    continue
            if row["event"] == "rename":  # the threads table's, not a process event
                self.threads.seen(row["ts_ns"], row["pid"], row["tid"], os_name=row["comm"])
                continue
            if row["event"] == "thread":
                self.threads.new_thread(row["ts_ns"], row["pid"], row["tid"], row["comm"])
                if self.stacks is not None:
                    self.stacks.thread_started(row["pid"])
            elif row["event"] == "fork":
                child = row["pid"]
                if child in self._ignored:
                    continue
                if self._new_target(child):
                    self.targets[child] = procs.info(child)
                    self.threads.add_process(child, self.targets[child].python_version,
                                             row["ts_ns"])
                    if self.stacks is not None:
                        self.stacks.add(child)
            elif row["event"] == "exec" and self.stacks is not None and (
                    row["pid"] in self.stacks.targets):
                self.stacks.forget({row["pid"]})  # a new program: a new layout
                self.stacks.add(row["pid"])
            elif row["event"] == "exit":
                self.exited.add(row["pid"])
                self._reap.add(row["pid"])
            other.append(row)
        if other:
            self._add("processes", rows_to_batch("processes", other))

    def alive_targets(self, pids: list[int] | None = None) -> list[int]:
        return [p for p in (pids or list(self.targets))
                if p not in self.exited and procs.alive(p)]

    def run(self, stop: Callable[[], bool]) -> None:
        """Poll until ``stop()`` is true; busy buffers are drained without sleeping.

        With only stacks (and gc, audit, import) probes a poll costs about a
        millisecond whatever it drains, most of it fixed, while samples come at
        --sample-hz: it polls once a stacks_poll_interval, or sooner when a new
        stack or a process event wakes it (epoll on their buffers), and looks at
        ``stop()`` every poll_interval in between."""
        rings = [self.program.rings["calls_rb"]]
        waker = None
        if self.stacks is not None:
            rings += [self.program.rings["samples_rb"], self.program.rings["pystacks_rb"]]
            if not {"calls", "sched"} & self.opts.probes:
                waker = select.epoll()
                for name in ("pystacks_rb", "proc_rb"):
                    waker.register(self.program.maps[name].fd, select.EPOLLIN)
        stopping = False  # (stop() may say so once only: it is asked once a turn)
        try:
            while not stopping and not stop() and self.stop_reason is None:
                last = time.monotonic()
                self.poll()
                if any(r.pending_bytes() >= r.size // 4 for r in rings):
                    continue
                if waker is None:
                    time.sleep(self.opts.poll_interval)
                    continue
                time.sleep(self.opts.stacks_min_interval)
                while time.monotonic() - last < self.opts.stacks_poll_interval:
                    if waker.poll(self.opts.poll_interval * 4):
                        break
                    if stop():
                        stopping = True
                        break
        finally:
            if waker is not None:
                waker.close()

    # -- output -------------------------------------------------------------

    def _add(self, table: str, batch: pa.RecordBatch) -> None:
        if self._ignored and table not in _NO_PID:
            batch = self._gate(table, batch)
            if batch is None:
                return
        # The writer groups batches into large row groups itself.
        try:
            self.out.writer(table).write(batch)
        except OutputError as e:
            self._output_error = self._output_error or e
            if not self._closed:
                raise  # tracing stops: close() then keeps what it can
            return
        self.written[table] += batch.num_rows

    def _gate(self, table: str, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        """Rows of processes ignored after the kernel adopted them: dropped, counted."""
        pids = batch.column("pid")
        if pids.null_count:
            pids = pids.fill_null(0)
        drop = self._discarded(table, pids.to_numpy(zero_copy_only=False))
        if drop is None:
            return batch
        return batch.filter(pa.array(~drop)) if not drop.all() else None

    def _discarded(self, table: str, pids: np.ndarray) -> np.ndarray | None:
        """Which of these rows belong to ignored processes (counted), or None."""
        if self._ignored_pids is None:
            self._ignored_pids = np.fromiter(self._ignored, np.int64, len(self._ignored))
        drop = np.isin(pids, self._ignored_pids)
        n = int(drop.sum())
        if not n:
            return None
        self.adoption[f"discarded_rows.{table}"] += n
        self.adoption["discarded_rows"] += n
        return drop

    # -- shutdown -----------------------------------------------------------

    def close(self, reason: str = "stopped") -> None:
        """Detach, drain, write what is left, close every file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.program is not None:
                self.program.stop_sampling()
            if self.links is not None:
                t0 = time.monotonic_ns()
                self.links.close()
                self.detach_ns = time.monotonic_ns() - t0
            stats: dict[str, int] = {}
            if self.program is not None:
                self.program.flush_staged_calls()
                self.poll()
                self.poll()
                self._snapshot(time.monotonic(), final=True)
                self._write_open_calls(exited=True)
                self._write_open_calls()
                stats = self.last_stats = self.program.stats()
                self._thread_rows()
                self._match_rows, warnings = self.threads.summary()
                for w in warnings:
                    self.warn(w)
            if self.out is not None and self.program is not None:
                # (a session that failed before loading traced nothing: it leaves
                # no trace, and its -o can be used again without --append)
                counts = self._counts(stats)  # the same figures in both tables
                self._write_counters(counts)
                self._write_session(self._session_rows(reason, counts))
        finally:
            from .activate import remove

            remove(self._cleanup)
            try:
                if self.out is not None:
                    self.out.close()
            except OutputError as e:
                self._output_error = self._output_error or e
            finally:
                if self.program is not None:
                    self.program.close()
        if self._output_error is not None:
            raise self._output_error

    def _write_session(self, rows: list[dict]) -> None:
        """The session table, closed before anything else (its part was allocated
        at open); if even that fails, its facts go to the status line as JSON."""
        try:
            w = self.out.writer("session")
            w.write(rows_to_batch("session", rows))
            w.close()
            self.written["session"] += len(rows)
            return
        except OutputError as e:
            self._output_error = self._output_error or e
        facts: dict[str, object] = {}
        for r in rows:
            if r["key"] == "warning":
                facts.setdefault("warnings", []).append(r["value"])
            else:
                facts[r["key"]] = r["value_int"] if r.get("value_int") is not None else r["value"]
        self.status("session table not written: " + json.dumps(facts))

    def _session_rows(self, reason: str, counts: dict[str, int]) -> list[dict]:
        meta = {
            "session_id": self.session_id,
            "host": socket.gethostname(),
            "kernel": platform.release(),
            "tracer_version": __version__,
            "targets": ",".join(map(str, self._traced))
                       + (",..." if self.traced_count > len(self._traced) else ""),
            "probes": ",".join(sorted(self.opts.probes)),
            "binaries": ",".join(b.path for b in self.binaries.values()),
            "stop_reason": reason,
            **self.meta,
        }
        rows = [{"key": k, "value": v} for k, v in meta.items()]
        # instants typed as in every other table (ns since the epoch), not only as text
        rows += [{"key": k, "value": str(v), "value_int": v}
                 for k, v in (("start_ns", self.start_ns), ("end_ns", time.time_ns()))]
        rows += self._match_rows
        rows += [{"key": "warning", "value": w} for w in self.warnings]
        if self._output_error is not None:
            rows.append({"key": "output_error", "value": str(self._output_error)})
        if self.stacks is not None and self.stacks.modes:
            rows.append({"key": "stacks_mode", "value": "; ".join(
                f"pid {pid} {mode}" for pid, mode in list(self.stacks.modes.items())[:20])})
        rows += [{"key": k, "count": v, "value": str(v), "value_int": v}
                 for k, v in counts.items()]
        return rows

    def _counts(self, stats: dict[str, int]) -> dict[str, int]:
        """Every counter of the session (the kernel's ``stats`` among them)."""
        counts = {f"kernel.{k}": v for k, v in stats.items()}
        counts["functions_interned"] = self.decoder.functions.count
        counts["processes_traced"] = self.traced_count
        counts["breaker_trips"] = self.breaker.trips if self.breaker else 0
        if self.budgets is not None and self.budgets.rates:
            counts.update({f"budget.{k}": v for k, v in self.budgets.totals.items()})
        counts["controller_cpu_ns"] = int(_cpu_seconds() * 1e9)  # ours, not the target's
        # CPU of the event path alone: since the program was compiled and loaded
        counts["tracing_cpu_ns"] = counts["controller_cpu_ns"] - self._cpu_at_open
        counts["controller_peak_rss_bytes"] = _peak_rss()
        counts["detach_ns"] = self.detach_ns  # removing every probe, at the end
        if self.stacks is not None:
            counts.update(self.stacks.counts)
        if self.opts.adopt:
            counts.update({f"adopt.{k}": v for k, v in self.adoption.items()})
            if self._decide_ns:  # over the last _DECISIONS_KEPT decisions
                p50, p99 = np.percentile(np.fromiter(self._decide_ns, np.int64), [50, 99])
                counts["adopt.decide_ns_p50"], counts["adopt.decide_ns_p99"] = int(p50), int(p99)
        for table in ("calls", "functions", "gc", "sched", "imports", "audit", "processes",
                      "threads", "samples", "stacks"):
            w = self.out.writers.get(table) if self.out is not None else None
            # after a failed write: the rows in the parts that were finished
            counts[f"rows.{table}"] = w.rows_finished if w and w.failed else self.written[table]
        return counts

    def _write_counters(self, counts: dict[str, int]) -> None:
        """A snapshot of every counter into the counters table, as a finished part
        of its own: what a SIGKILL cannot take back."""
        ts = time.time_ns()
        rows = [{"ts_ns": ts, "key": k, "count": v} for k, v in counts.items()]
        try:
            w = self.out.writer("counters")
            w.write(rows_to_batch("counters", rows))
            w.finish_part()
        except OutputError as e:
            self._output_error = self._output_error or e
            if not self._closed:
                raise

    @property
    def calls_completed(self) -> int:
        """Exact completed calls of traced functions, at the last functions snapshot."""
        return self._completed

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close("error" if exc[0] else "stopped")


def hive_partition(host: str) -> Callable[[], str]:
    """``host=H/date=YYYY-MM-DD/hour=HH`` of the current UTC hour."""
    def partition() -> str:
        return time.strftime(f"host={host}/date=%Y-%m-%d/hour=%H", time.gmtime())
    return partition


_BATCH_SLOTS = np.arange(events.const("CALL_BATCH"))
_BATCHES_PER_DECODE = 512  # 32k calls
_TRACED_LISTED = 1000  # pids named in the session row
_EXEC_KEPT = 4096  # execs remembered for adopt_ns
_DECISIONS_KEPT = 1000  # adoption decision latencies kept for the p50/p99 counters
_NO_PID = frozenset({"breaker", "counters", "session"})  # tables without a pid column
_CALL = events.dtypes()["call_event"]
_CALL_OPEN = events.const("CALL_OPEN")
_CALL_BYTES = np.dtype((np.void, _CALL.itemsize))


def _unbatch(batches: np.ndarray) -> np.ndarray:
    """The valid call records of call_batch records (slots past count are stale).

    Selected as opaque 40-byte items: numpy copies those with memcpy, where a
    structured copy goes field by field (4 ns instead of 27 ns a record)."""
    slots = batches["ev"].view(_CALL_BYTES)
    return slots[_BATCH_SLOTS < batches["count"][:, None]].view(_CALL)


def _peak_rss() -> int:
    """High-water RSS of this process image: VmHWM, which, unlike ru_maxrss, does
    not inherit the peak of whatever process forked us before exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _check_runtime(pid: int, exe: str) -> None:
    """A process without USDT probes can still be sampled if its layout is known."""
    from .interpreters.layouts import find_runtime

    try:
        find_runtime(pid)
    except ScopeError as e:
        raise ScopeError(f"process {pid} ({exe}) cannot be sampled: {e}") from None


def _has_python_probes(path: str) -> bool:
    try:
        return any(p.provider == "python" for p in usdt.read_probes(path))
    except (OSError, usdt.ProbeError):
        return False


def _mono_to_wall() -> int:
    """Offset from CLOCK_MONOTONIC (bpf_ktime_get_ns) to UTC wall-clock ns."""
    best = None
    for _ in range(5):  # the tightest of a few readings bounds the error
        a = time.monotonic_ns()
        w = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) // 2)
    return best[1]
