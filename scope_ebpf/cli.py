"""The ``scope-ebpf`` command: thin click commands over controller.Session."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from . import __version__
from .errors import ScopeError
from .textsafe import safe
from .units import human_bytes

_PREFIX = "scope-ebpf: "


def _status(msg: str) -> None:
    """One status, warning or log line on stderr (daemon logs included); names in
    it may come from a traced program, so control characters are shown escaped."""
    click.echo(_PREFIX + safe(msg), err=True)


def _default_output() -> Path:
    return Path(time.strftime("scope-%Y%m%d-%H%M%S"))


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.parquet"))


def _summary(session, seconds: float) -> None:
    w = session.written
    stats = session.last_stats
    from .events import LOSSES

    losses = {k: stats[k] for k in LOSSES if stats.get(k)}
    lost = sum(losses.values())
    calls = session.calls_completed
    rows = "" if w["calls"] == calls else f" ({w['calls']:,} rows)"
    _status(
        f"traced {calls:,} calls{rows}, {w['gc']:,} gc, {w['sched']:,} off-CPU intervals "
        f"in {seconds:.1f} s; lost {lost:,} -> {session.opts.output} "
        f"({human_bytes(_du(session.opts.output))})")
    for k, n in losses.items():
        _status(f"warning: {n:,} {LOSSES[k]} (session table: kernel.{k})")


def _preload() -> None:
    """Start compiling the BPF program now, while the rest of scope-ebpf imports
    (called once the options are valid: bad input starts no compiler)."""
    if os.geteuid() == 0:
        from .program import start_loading

        start_loading()


def _fail(e: ScopeError) -> None:
    click.echo(f"{_PREFIX}error: {safe(e)}", err=True)
    sys.exit(e.exit_code)


class _Signals:
    """Turns SIGINT/SIGTERM into a flag the loop checks (never mid-write)."""

    def __init__(self, on_signal: Callable[[int], None] | None = None) -> None:
        self.count = 0
        self.last = 0
        self._on = on_signal
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        self.last = signum
        if self._on:
            self._on(signum)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class _Tracing:
    """A command's session lifecycle: on every way out the session is closed
    (flushed, detached) and the signal handlers restored; ScopeError -> one line."""

    def __init__(self, sigs: _Signals) -> None:
        self.sigs = sigs
        self.session = None
        self.started = time.monotonic()

    def __enter__(self) -> _Tracing:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if isinstance(exc, ScopeError):
                if self.session:
                    try:
                        self.session.close(f"error: {exc}")
                    except ScopeError:
                        pass  # a write failing again: the first error is the one to tell
                _fail(exc)
            if self.session:
                self.session.close("error")  # no-op once closed
        finally:
            self.sigs.restore()

    def finish(self, reason: str) -> None:
        self.session.close(self.session.stop_reason or reason)
        _summary(self.session, time.monotonic() - self.started)


def _duration(text: str | None) -> float | None:
    """-d/--duration in seconds: the shared duration grammar, a bare number is seconds."""
    if text is None:
        return None
    from .units import parse_duration

    ns = parse_duration(text, "--duration", bare="s")
    if ns <= 0:
        raise ScopeError(f"--duration must be positive, not {text!r}")
    return ns / 1e9


_OUTPUT = click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
                       help="Output directory (default: ./scope-YYYYmmdd-HHMMSS).")
_PROBES = click.option("--probes", default="calls,gc,sched,imports,audit", show_default=True,
                       help="Probe sets to attach (comma-separated): calls, gc, sched, "
                            "imports, audit, stacks (Python stacks sampled in the kernel "
                            "at --sample-hz: any CPython 3.8-3.15, no USDT probes needed).")
_SAMPLE_HZ = click.option("--sample-hz", type=click.IntRange(1, 10_000), default=99,
                          show_default=True,
                          help="stacks probe set: samples per second of each CPU (a "
                               "software cpu-clock timer; only target threads are recorded).")


class _UsageError(click.ClickException):
    """click's usage errors (unknown option, missing argument, bad value) in the
    style of every other bad input: one ``error:`` line, then one hint line."""

    exit_code = 2

    def __init__(self, e: click.UsageError) -> None:
        if isinstance(e, click.NoSuchOption):
            message = f"no such option: {e.option_name}"
            if e.possibilities:  # closest first
                message += f". Did you mean {e.possibilities[0]}?"
        else:
            message = e.format_message().replace("\n", " ").removesuffix(".")
            if message[1:2].islower():  # "Missing argument" -> "missing ...", not "DIRECTORY"
                message = message[0].lower() + message[1:]
        super().__init__(message)
        self.hint = f"try '{e.ctx.command_path} --help'" if e.ctx is not None else None

    def show(self, file=None) -> None:
        click.echo(f"{_PREFIX}error: {self.message}", err=True)
        if self.hint:
            click.echo(f"{_PREFIX}{self.hint}", err=True)


class _Group(click.Group):
    """Turns the usage errors of the group and of every command into _UsageError."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise  # bare `scope-ebpf`: the help, as click shows it
        except click.UsageError as e:
            raise _UsageError(e) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _UsageError(e) from None


def main() -> None:
    """Console entry point: a bug in scope-ebpf is one line too, unless debugging."""
    try:
        cli()
    except Exception as e:  # noqa: BLE001 - anything that reaches here is our bug
        if os.environ.get("SCOPE_EBPF_DEBUG"):
            raise
        click.echo(f"{_PREFIX}internal error: {type(e).__name__}: {safe(e)} "
                   "(set SCOPE_EBPF_DEBUG=1 for a traceback)", err=True)
        sys.exit(70)


def _control_options(f):
    """Options of run and trace that decide in the kernel what is kept."""
    opts = [
        click.option("--include", multiple=True, metavar="PATTERN",
                     help="Keep calls of functions matching FILE:FUNCTION (shell glob, or "
                          "re:REGEX; a glob without ':' matches the function name). "
                          "Repeatable."),
        click.option("--exclude", multiple=True, metavar="PATTERN",
                     help="Drop calls of matching functions; wins over --include."),
        click.option("--min-duration", metavar="DURATION",
                     help="Only calls at least this long become rows (a unit is required: "
                          "500us, 2ms)."),
        click.option("--tid", "tids", type=int, multiple=True, metavar="TID",
                     help="Only these threads' calls become rows (repeatable)."),
        click.option("--thread-name", "thread_names", multiple=True, metavar="PATTERN",
                     help="Only calls of threads whose kernel name matches (repeatable)."),
        click.option("--max-rate", default="200000", show_default=True, metavar="N",
                     help="Call rows per second; hot functions are sampled 1-in-k above "
                          "it (rows carry weight k). 0: no sampling."),
        click.option("--breaker-rate", default="2000000", show_default=True, metavar="N",
                     help="Probe hits per second across targets that trip the circuit "
                          "breaker (function probes detached, re-attached after a back-off). "
                          "0: off."),
        click.option("--max-cpu", default=None, metavar="PERCENT",
                     help="Controller CPU above which tracing degrades (sampling, then "
                          "breaker)."),
        click.option("--max-output", default=None, metavar="SIZE",
                     help="Stop cleanly once the output reaches SIZE (e.g. 500MB)."),
        click.option("--append", is_flag=True,
                     help="Add this session to an output directory that already holds a "
                          "trace (refused without it); rows carry a session_id, and "
                          "`report --session` picks one session."),
        click.option("--group", default=None, metavar="NAME",
                     help="Share the output with this group (0750/0640); by default it "
                          "is private (0700/0600) to the user who ran sudo."),
        click.option("--redact", multiple=True, metavar="REGEX",
                     help="Also mask matches of REGEX in recorded command lines "
                          "(repeatable)."),
        click.option("--no-redact", is_flag=True,
                     help="Record command lines as they are (by default credentials, "
                          "URL passwords and random-looking tokens are masked)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _options(output: Path | None, probes: str, include: tuple[str, ...],
             exclude: tuple[str, ...], min_duration: str | None, tids: tuple[int, ...],
             thread_names: tuple[str, ...], max_rate: str, breaker_rate: str,
             max_cpu: str | None, max_output: str | None, group: str | None = None,
             redact: tuple[str, ...] = (), no_redact: bool = False, append: bool = False,
             sample_hz: int = 99):
    """Validate every option before anything is attached."""
    from .control.matchers import Matcher, check_patterns
    from .controller import Options, parse_probes
    from .redact import Redactor
    from .safefs import invoking_user
    from .units import parse_duration, parse_size

    Matcher(list(include), list(exclude))  # raises on a bad glob or regex
    check_patterns(thread_names, "--thread-name")
    for tid in tids:
        if not 0 < tid <= _PID_MAX_LIMIT:
            raise ScopeError(f"--tid {tid} is not a thread id (1 to {_PID_MAX_LIMIT})")
    Redactor(redact)
    sets = parse_probes(probes)
    if "calls" not in sets:
        for name, given in (("--include", include), ("--exclude", exclude),
                            ("--min-duration", min_duration), ("--tid", tids),
                            ("--thread-name", thread_names)):
            if given:
                raise ScopeError(f"{name} needs the calls probes: add calls to --probes")
    return Options(
        output or _default_output(), sets,
        include=include, exclude=exclude,
        min_duration_ns=parse_duration(min_duration, "--min-duration") if min_duration else 0,
        tids=tids, thread_names=thread_names,
        max_rate=_number(max_rate, "--max-rate"),
        breaker_rate=_number(breaker_rate, "--breaker-rate"),
        max_cpu=_number(max_cpu, "--max-cpu") if max_cpu is not None else 0,
        max_output=parse_size(max_output, "--max-output") if max_output else 0,
        owner=invoking_user(group), redact=redact, no_redact=no_redact, append=append,
        sample_hz=sample_hz,
    )


_PID_MAX_LIMIT = 4_194_304  # the kernel's largest pid_max (64-bit)


def _python_file(pid: int) -> str:
    """The interpreter file (libpython or executable) of a running process."""
    from . import procs, usdt

    procs.validate_pid(pid)
    try:
        return usdt.find_python_binary(pid)
    except usdt.ProbeError as e:
        raise ScopeError(str(e)) from None


def _stacks_line(pid: int | None, path: str, version: str | None) -> str:
    """`probes`: how the stacks probe set reads this interpreter."""
    from .interpreters.layouts import find_runtime, layout_for
    from .interpreters.remote import in_pid_namespace
    from .kernel.stacks import offsets_record, stacks_mode

    namespaced = pid is not None and in_pid_namespace(pid)
    try:
        if pid is not None:
            rt = find_runtime(pid)
            lay, runtime = rt.layout, rt.runtime
        else:
            lay, runtime = layout_for(path, version), 0
        offsets_record(runtime, lay, namespaced)
    except ScopeError as e:
        return f"stacks: no ({e})"
    return f"stacks: yes [{stacks_mode(lay, namespaced)}] offsets: {lay.source}"


def _number(text: str, option: str) -> float:
    try:
        v = float(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise ScopeError(f"{option} needs a number, not {text!r}") from None
    if not math.isfinite(v):  # "inf", "nan", "1e400": the kernel limits are integers
        raise ScopeError(f"{option} needs a finite number, not {text!r}")
    if v < 0:
        raise ScopeError(f"{option} must not be negative: {text}")
    return v


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scope-ebpf")
def cli() -> None:
    """eBPF tracer for CPython: USDT probes and scheduler tracepoints to Parquet.

    \b
    Examples:
      sudo scope-ebpf run -o out -- python3 app.py --port 8080
      sudo scope-ebpf trace --pid 1234 --duration 30s -o out
      scope-ebpf query out "SELECT function, count(*) FROM calls GROUP BY 1 ORDER BY 2 DESC"
      sudo scope-ebpf daemon --config /etc/scope-ebpf/config.toml
      scope-ebpf report out -o report.html
      scope-ebpf probes --pid 1234
      sudo scope-ebpf dump --pid 1234
      scope-ebpf schema
    """


@cli.command(context_settings={"allow_interspersed_args": False})
@_OUTPUT
@_PROBES
@click.option("--no-hook", is_flag=True,
              help="CPython 3.11: do not install the profile hook that makes its function "
                   "probes fire (calls will then be empty).")
@click.option("--root", type=click.Path(exists=True, file_okay=False), default="/",
              help="Run COMMAND chrooted in this directory (a container image or a "
                   "debootstrap root); the probes are attached through the host path.")
@click.option("-d", "--duration", default=None, metavar="DURATION",
              help="Stop tracing after this long (30s, 5m; a bare number is seconds); "
                   "the program keeps running.")
@_SAMPLE_HZ
@_control_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(output: Path | None, probes: str, no_hook: bool, root: str, duration: str | None,
        command: tuple[str, ...], **control) -> None:
    """Start COMMAND with the probes live and trace it until it exits.

    The program keeps its argv, cwd, environment and stdio; scope-ebpf exits
    with its exit code. Options go before COMMAND (or before `--`); what
    follows the command name is the command's. On CPython 3.11 a minimal
    profile hook (sys.setprofile with the C builtin `slice`) is installed at
    start-up, because 3.11 fires its function probes only while a hook is set.
    SIGTERM is passed on to the program; a second SIGINT/SIGTERM stops tracing
    and leaves it running.

    \b
    Examples:
      sudo scope-ebpf run -o out -- python3 app.py arg1 arg2
      sudo scope-ebpf run -d 30s -o out -- python3 server.py --port 8080
      sudo scope-ebpf run --root /srv/image -o out -- python3.15 /app/main.py
    """
    from . import spawn
    from .controller import Session

    child_pid = 0

    def forward(signum: int) -> None:
        if child_pid and signum == signal.SIGTERM and sigs.count == 1:
            os.kill(child_pid, signal.SIGTERM)

    sigs = _Signals(forward)
    exit_status: list[int] = []
    with _Tracing(sigs) as t:
        seconds = _duration(duration)
        opts = _options(output, probes, **control)
        _preload()
        session = t.session = Session(opts, _status)
        root = os.path.abspath(root)
        # a build without probes is sampled instead (before check_command refuses it)
        fallback = session.stacks_fallback(None, spawn.resolve(list(command), root)[1])
        if fallback:
            _status(fallback)
        session.check_command(list(command), root)
        session.open()
        child = session.launch(list(command), hook=not no_hook, root=root)
        child_pid = child.pid
        _status(f"tracing pid {child.pid} ({os.path.basename(child.interpreter)}) "
                f"-> {session.opts.output}")
        deadline = None if seconds is None else time.monotonic() + seconds

        def done() -> bool:
            if sigs.count >= 2:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return True
            pid, st = os.waitpid(child_pid, os.WNOHANG)
            if pid:
                exit_status.append(st)
            return bool(pid)

        session.run(done)
        t.finish("target exited" if exit_status else
                 "duration" if deadline and sigs.count < 2 else "signal")
    if exit_status:
        from .spawn import exit_code

        sys.exit(exit_code(exit_status[0]))
    _status(f"stopped tracing; pid {child_pid} is still running")
    if sigs.count:
        sys.exit(128 + sigs.last)


@cli.command()
@click.option("-p", "--pid", "pids", type=int, multiple=True,
              help="Process to trace (repeatable).")
@click.option("--exe", "exes", multiple=True, type=click.Path(),
              help="Trace every process running this interpreter (or libpython) file, "
                   "including processes started later (repeatable).")
@click.option("--all-python", is_flag=True,
              help="--exe for every interpreter file that a running Python process uses.")
@_OUTPUT
@_PROBES
@click.option("-d", "--duration", default=None, metavar="DURATION",
              help="Trace for this long once attached (30s, 5m; a bare number is seconds; "
                   "default: until Ctrl-C, or until the --pid targets exit).")
@click.option("--activate", is_flag=True,
              help="CPython 3.14 --pid targets: turn on the perf trampoline with "
                   "sys.remote_exec (runs code in the target) so calls can be traced.")
@_SAMPLE_HZ
@_control_options
def trace(pids: tuple[int, ...], exes: tuple[str, ...], all_python: bool,
          output: Path | None, probes: str, duration: str | None, activate: bool,
          **control) -> None:
    """Attach to running Python processes, or to every process of a binary.

    With --pid it stops on Ctrl-C, SIGTERM, --duration, or when every target
    has exited; with --exe/--all-python on Ctrl-C, SIGTERM or --duration. In
    every case the output is flushed and closed.

    \b
    Examples:
      sudo scope-ebpf trace --pid 1234 --pid 5678 --duration 60s -o out
      sudo scope-ebpf trace --exe /usr/bin/python3.11 -o out
      sudo scope-ebpf trace --all-python --probes gc,sched -d 5m -o out
    """
    from .controller import Session

    sigs = _Signals()
    reason = "signal"
    with _Tracing(sigs) as t:
        if not (pids or exes or all_python):
            raise ScopeError("nothing to trace: give --pid, --exe or --all-python")
        seconds = _duration(duration)
        opts = _options(output, probes, **control)
        _preload()
        session = t.session = Session(opts, _status)
        for pid in pids:
            fallback = session.stacks_fallback(pid, _python_file(pid), activate)
            if fallback:
                _status(fallback)
            binary = session.check_pid(pid)
            if activate:
                session.check_activate(pid, binary)
        for exe in exes:
            session.check_exe(exe)
        session.open()
        for pid in pids:
            session.add_pid(pid, activate=activate)
        binaries = list(exes) + (session.python_binaries() if all_python else [])
        for exe in binaries:
            session.add_exe(exe)
        what = [f"pid {', '.join(map(str, pids))}"] if pids else []
        what += [f"{len(binaries)} interpreter file(s)"] if binaries else []
        _status(f"tracing {' and '.join(what)} -> {session.opts.output} (Ctrl-C to stop)")
        deadline = None if seconds is None else time.monotonic() + seconds  # from attach
        last_check = 0.0
        watch_pids = bool(pids) and not binaries

        def done() -> bool:
            nonlocal reason, last_check
            if sigs.count:
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                reason = "duration"
                return True
            if watch_pids and now - last_check >= 0.2:
                last_check = now
                if not session.alive_targets(list(pids)):
                    reason = "targets exited"
                    return True
            return False

        session.run(done)
        t.finish(reason)


@cli.command()
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path),
              default=Path("/etc/scope-ebpf/config.toml"), show_default=True,
              help="TOML config (see packaging/config.toml for every key).")
@click.option("--check", is_flag=True,
              help="Run every check start-up runs (the config, root privileges, kernel "
                   "headers, tracefs, the output root) and exit.")
@click.option("--status", "show_status", is_flag=True,
              help="Print what the daemon running with this config traces now: processes "
                   "per selector, row rates, losses, breaker, output, shipping, its CPU "
                   "and RSS (from the status file it rewrites every 2 s).")
@click.option("--json", "as_json", is_flag=True, help="With --status: the status as JSON.")
def daemon(config_path: Path, check: bool, show_status: bool, as_json: bool) -> None:
    """Trace every Python process the config selects, now and started later.

    Meant for a systemd unit (packaging/scope-ebpf.service, Type=notify).
    SIGTERM flushes, closes and detaches; SIGHUP reloads the config (a bad one
    is refused and the running one kept). Output is Hive-partitioned:

    \b
      ROOT/<table>/host=H/date=YYYY-MM-DD/hour=HH/part-NNNNN.parquet

    \b
    Examples:
      sudo scope-ebpf daemon --config /etc/scope-ebpf/config.toml
      sudo scope-ebpf daemon --config ./config.toml --check
      sudo scope-ebpf daemon --status                 # what the running one traces
      scope-ebpf query /var/lib/scope-ebpf --host web-17 --date 2026-11-26 \\
          "SELECT count(*) FROM gc"
    """
    from .fleet.daemon import Daemon
    from .fleet.daemon import check as check_config

    try:
        if show_status:
            from .fleet import status
            from .fleet.daemon import load_config

            st = status.read(load_config(config_path).root)
            click.echo(json.dumps(st, indent=2) if as_json else status.text(st))
            return
        if as_json:
            raise ScopeError("--json goes with --status")
        if check:
            cfg = check_config(config_path)
            _status(f"{config_path}: ok ({len(cfg.selectors)} selector(s), probes "
                    f"{','.join(sorted(cfg.probes))}, output {cfg.root})")
            return
        d = Daemon(config_path, status=_status)
        d.install_signals()
        try:
            d.start()
            d.run()
        finally:
            d.close("stopped")
    except ScopeError as e:
        _fail(e)


def _filters(f):
    """--pid/--since/--until/--session and a daemon tree's --host/--date/--hour."""
    opts = [
        click.option("--pid", "pid", type=int, default=None, help="Only this process's rows."),
        click.option("--since", default=None,
                     help="Only rows from this time on: ISO UTC (2026-11-26T10:00:00) or "
                          "+DURATION from the trace's first event (+1.5s)."),
        click.option("--until", default=None, help="Only rows before this time (same forms)."),
        click.option("--host", default=None, help="Daemon tree: only this host's partitions."),
        click.option("--date", default=None,
                     help="Daemon tree: only this UTC date (YYYY-MM-DD)."),
        click.option("--hour", default=None, help="Daemon tree: only this UTC hour (00-23)."),
        click.option("--session", default=None, metavar="ID",
                     help="Only this session's rows (a directory written with --append, "
                          "or a daemon tree, holds several: see the session_id column)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _connect_args(directory: Path, pid: int | None, since: str | None, until: str | None,
                  host: str | None, date: str | None, hour: str | None,
                  session: str | None = None) -> dict:
    from .query import resolve_time

    if hour is not None and hour.isdigit():
        hour = f"{int(hour):02d}"
    where = {"host": host, "date": date, "hour": hour}
    return {"where": where, "pid": pid, "session": session,
            "since_ns": resolve_time(directory, where, since, "--since", session),
            "until_ns": resolve_time(directory, where, until, "--until", session)}


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("sql", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@click.option("--top", "named", flag_value="top",
              help="Named query: functions by total time, exact counts.")
@click.option("--gc", "named", flag_value="gc", help="Named query: GC pauses per generation.")
@click.option("--offcpu", "named", flag_value="offcpu",
              help="Named query: off-CPU time by function and state.")
@_filters
def query(directory: Path, sql: str | None, fmt: str, named: str | None, **filters) -> None:
    """Run SQL with DuckDB over an output directory.

    Every table is a view (see `scope-ebpf schema`): calls, functions, gc, sched,
    imports, audit, processes, threads, sampling, breaker, session. DIRECTORY is a run's
    output or a daemon's root (one host's or many hosts' copied together): its
    views then have the columns host, date and hour, and --host/--date/--hour
    read only the matching partitions. --pid/--since/--until filter every view.
    Every *_ns column is an integer (instants: ns since the Unix epoch, UTC); the
    views add start, "end" and ts, the same instants as UTC timestamps.

    \b
    Examples:
      scope-ebpf query out "SELECT function, count(*) AS n, sum(duration_ns)/1e6 AS ms
                            FROM calls GROUP BY 1 ORDER BY ms DESC LIMIT 10"
      scope-ebpf query out --top --pid 1234 --since +10s --until +20s
      scope-ebpf query /var/lib/scope-ebpf --gc --host web-17 --date 2026-11-26
    """
    from .query import NAMED, run_query

    try:
        if (sql is None) == (named is None):
            raise ScopeError("give either SQL or one of --top, --gc, --offcpu")
        args = _connect_args(directory, **filters)
        text = run_query(directory, sql or NAMED[named], fmt, **args)
        click.echo(text, nl=not text.endswith("\n"))
    except ScopeError as e:  # QueryError included
        _fail(e)


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where the HTML page (or the export) is written [default: ./report.html "
                   "for html, stdout for folded and speedscope].")
@click.option("--format", "fmt", type=click.Choice(["html", "folded", "speedscope"]),
              default="html", show_default=True,
              help="html: the page; folded / speedscope: the flame graph for other viewers.")
@click.option("--graph", type=click.Choice(["calls", "cpu", "offcpu"]), default=None,
              help="Which flame graph folded / speedscope export: calls (exact rows' on-CPU "
                   "time), cpu (stack samples), offcpu (sched rows' stacks) [default: calls "
                   "if there are call rows, else cpu, else offcpu].")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No terminal summary.")
@_filters
def report(directory: Path, output: Path | None, fmt: str, graph: str | None, force: bool,
           quiet: bool, **filters) -> None:
    """Hot paths, flame graph, GC pauses, off-CPU time and anomalies of a trace.

    Prints a summary and writes a self-contained HTML page (no network access
    needed to view it). Works on a run's output or a daemon tree, with the same
    filters as `query`. The page and exports are private (0600, the sudo user's)
    and an existing file is never replaced without --force. An export without
    -o goes to stdout, with no summary.

    \b
    Examples:
      scope-ebpf report out                          # summary + ./report.html
      scope-ebpf report out -o app.html --pid 1234 --since +5s
      scope-ebpf report out --format folded > out.folded      # flamegraph.pl, inferno
      scope-ebpf report out --format speedscope -o out.speedscope.json
      scope-ebpf report out --format folded --graph offcpu > offcpu.folded
    """
    from . import analysis
    from . import report as rep
    from .query import connect
    from .safefs import AS_CREATED, invoking_user, write_file

    try:
        if output is None and fmt == "html":
            output = Path("report.html")
        exists = ScopeError(f"{output} exists: name another file with -o, or add --force "
                            "to replace it")
        if output is not None and not force and os.path.lexists(output):
            raise exists
        con = connect(directory, **_connect_args(directory, **filters))
        try:
            a = analysis.analyze(con, exact_rows=fmt == "speedscope")
        finally:
            con.close()
        graph = graph or rep.default_graph(a)
        if fmt != "html" and graph != "calls" and not rep.graph_stacks(a, graph):
            raise ScopeError(f"no {'stack samples' if graph == 'cpu' else 'off-CPU stacks'} "
                             f"in {directory}: --graph {graph} needs a trace with --probes "
                             f"{'stacks' if graph == 'cpu' else 'stacks,sched'}")
        if fmt == "folded":
            body = rep.folded_text(a, graph)
        elif fmt == "speedscope":
            body = rep.speedscope(a, str(directory), graph)
            if graph == "calls" and a.sampled_rows:  # say why the profiles are not evented
                _status(rep.speedscope_note(a))
        else:
            body = rep.page(a, f"scope-ebpf report: {directory}")
        if output is None:  # an export to stdout: it is the output, so no summary
            click.echo(body, nl=not body.endswith("\n"))
            return
        data = body.encode()
        # The report holds what the trace holds: private to the user, as the trace is.
        owner = invoking_user() if os.geteuid() == 0 else AS_CREATED
        try:
            write_file(str(output), data, owner, replace=force)
        except FileExistsError:
            raise exists from None
        except OSError as e:
            raise ScopeError(f"cannot write {output}: {e.strerror}") from None
        if not quiet:
            click.echo(rep.text(a))
        _status(f"wrote {output} ({human_bytes(len(data))})")
    except ScopeError as e:  # QueryError included
        _fail(e)


@cli.command()
@click.option("-p", "--pid", type=int, default=None, help="A running process.")
@click.option("--binary", type=click.Path(), default=None,
              help="An interpreter or libpython file.")
def probes(pid: int | None, binary: str | None) -> None:
    """Show which CPython probes exist, whether they fire, and the calls mode.

    Exit code: 0 if function calls will be traced (for --pid: by `trace`; for
    --binary: by `run`), 3 if probes exist but calls will not appear that way,
    4 if there are no CPython USDT probes, 2 on bad input.

    \b
    Examples:
      scope-ebpf probes --pid 1234
      scope-ebpf probes --binary /usr/bin/python3.11
    """
    from . import capabilities, procs, usdt

    try:
        if (pid is None) == (binary is None):
            raise ScopeError("give exactly one of --pid or --binary")
        if pid is not None:
            procs.validate_pid(pid)
            path = usdt.find_python_binary(pid)
        else:
            path = binary
            if not os.path.isfile(path):
                raise ScopeError(f"no such file: {path}")
        caps = capabilities.of_file(path)
    except usdt.ProbeError as e:
        _fail(ScopeError(str(e)))
    except ScopeError as e:
        _fail(e)
    launched = pid is None
    who = f"process {pid}: " if pid is not None else ""
    if not caps.cpython:
        click.echo(safe(f"{who}{path} is not a CPython interpreter or libpython (no CPython "
                        "USDT probes, no _PyRuntime symbol)"))
        sys.exit(capabilities.EXIT_NO_PROBES)
    version = f"CPython {caps.version}" if caps.version else "CPython, version unknown"
    click.echo(safe(f"{who}{path} ({version})"))
    for probe, table in capabilities.PROBES.items():
        n = caps.present.get(probe, 0)
        fires, why = caps.fires(probe, launched)
        mark = "yes" if fires else "no"
        note = "" if why == "fires" else why
        click.echo(safe(f"  {probe:<27} {'present' if n else 'missing':<8} fires: {mark:<4}"
                        f"-> {table:<8} {note}".rstrip()))
    click.echo(safe(_stacks_line(pid, path, caps.version)))
    if not caps.has_probes:
        click.echo("calls: no (not a CPython with USDT probes: built without --with-dtrace)")
        sys.exit(capabilities.EXIT_NO_PROBES)
    ok, why = caps.calls(launched)
    via = "`run`" if launched else "`trace --pid`"
    click.echo(safe(f"calls with {via}: {'yes' if ok else 'no'} [{caps.calls_mode}] {why}"))
    sys.exit(capabilities.EXIT_CALLS if ok else capabilities.EXIT_NO_CALLS)


@cli.command()
@click.option("-p", "--pid", type=int, required=True, help="The Python process to read.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.option("--lock", is_flag=True,
              help="Stop the process (SIGSTOP) while its stacks are read, continue it "
                   "(SIGCONT) after: consistent stacks, a pause of milliseconds. Default: "
                   "read it running, re-reading a thread whose stack changed meanwhile.")
@click.option("--max-depth", type=click.IntRange(1, 1_000_000), default=1024,
              show_default=True,
              help="Frames read per thread; deeper stacks say how many were left out.")
def dump(pid: int, as_json: bool, lock: bool, max_depth: int) -> None:
    """Print every thread's Python stack of a running process, like `py-spy dump`.

    Reads the process's memory from outside (/proc/PID/mem, as root): no
    probes, no hook, nothing runs in it. Any CPython 3.8-3.15 on x86-64, with or
    without USDT probes, static or shared libpython, in a chroot or container.
    Frames are innermost first, as `function (file:line)` (the qualified name
    from 3.11 on); threads are named as threading names them (Thread.name), with
    the OS name (/proc/PID/task/TID/comm) beside it where that differs, or
    alone for a thread threading does not know.

    \b
    Examples:
      sudo scope-ebpf dump --pid 1234
      sudo scope-ebpf dump --pid 1234 --lock --json > stacks.json
      sudo scope-ebpf dump --pid 1234 --max-depth 50
    """
    from . import procs
    from .interpreters import remote
    from .textsafe import json_text

    try:
        if not 0 < pid <= _PID_MAX_LIMIT:
            raise ScopeError(f"--pid {pid} is not a process id (1 to {_PID_MAX_LIMIT})")
        procs.validate_pid(pid)
        d = remote.dump(pid, max_depth=max_depth, lock=lock)
    except ScopeError as e:
        _fail(e)
    click.echo(json_text(d.row()) if as_json else remote.text(d), nl=as_json)


@cli.command()
def schema() -> None:
    """Print every output table's columns, types and meaning."""
    from .schema import describe

    click.echo(describe())
