"""Thread names: the threads table, and what --thread-name matches.

Two names per thread. The OS name (comm, 15 bytes) comes from the kernel: a
new thread's event carries its creator's name, a rename event the new one, and
/proc fills in threads that were running before tracing began. The Python name
(threading.Thread.name) is known on CPython 3.14+, which sets the OS name from
it (so: truncated to 15 bytes), and on 3.11 under ``run``, whose hook reports it
with an audit event (HOOK_PREFIX) when each thread starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import procs
from .control.matchers import Matcher
from .decode import _text

# The audit event the 3.11 ``run`` hook raises in each new thread: this prefix,
# then the thread's name (hook/sitecustomize.py). Not an audit row.
HOOK_PREFIX = b"scope_ebpf.thread:"
_MATCHES_SHOWN = 10  # status lines per pattern; the session row lists more
_NAMES_LISTED = 40   # names a "matched no thread" warning lists


@dataclass
class _Thread:
    os_name: str | None
    python_name: str | None = None
    source: str = "os"


def hook_events(audit: np.ndarray) -> np.ndarray:
    """Which audit records are the hook's thread names (a boolean mask)."""
    return np.char.startswith(audit["event"], HOOK_PREFIX)


def hook_name(event: bytes) -> str | None:
    """The thread name in a hook's audit event; None if it is not valid UTF-8."""
    return _text(event[len(HOOK_PREFIX):])


def _py_sets_os_name(version: str | None) -> bool:
    try:
        major, minor = (int(x) for x in (version or "").split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (3, 14)


class Threads:
    """Every traced thread's names; rows for the threads table; --thread-name.

    ``select(tid)`` is called once for each thread whose Python or OS name
    matches a pattern: its calls become rows from then on.
    """

    def __init__(self, patterns: tuple[str, ...], select: Callable[[int], None],
                 status: Callable[[str], None]) -> None:
        self.patterns = patterns
        self._select = select
        self._status = status
        self._known: dict[tuple[int, int], _Thread] = {}
        self._per_pid: dict[int, set[int]] = {}
        self._py_os: set[int] = set()        # pids whose Python names its OS threads
        self._main_comm: dict[int, str] = {}  # pid -> name a thread inherits
        self._selected: set[int] = set()
        self.matched: dict[str, dict[tuple[int, int], str]] = {p: {} for p in patterns}
        self.names_seen: dict[str, None] = {}
        self.rows: list[dict] = []

    # -- sightings -----------------------------------------------------------

    def add_process(self, pid: int, python_version: str | None,
                    ts_ns: int | None = None) -> None:
        """A new target: its threads as they are now."""
        if _py_sets_os_name(python_version):
            self._py_os.add(pid)
        self.scan(pid, ts_ns)

    def scan(self, pid: int, ts_ns: int | None = None) -> None:
        """Threads of ``pid`` from /proc: new ones, changed names, exited ones."""
        names = procs.thread_names(pid)
        if not names:
            return
        if pid in names:
            self._main_comm.setdefault(pid, names[pid])
        ts = ts_ns or time.time_ns()
        for tid in self._per_pid.get(pid, set()) - names.keys():
            self._drop(pid, tid)  # exited: a later thread may reuse the tid
        for tid, name in names.items():
            self.seen(ts, pid, tid, os_name=name)

    def new_thread(self, ts_ns: int, pid: int, tid: int, os_name: str | None) -> None:
        """A thread was created (possibly reusing an exited thread's tid)."""
        self._drop(pid, tid)
        self.seen(ts_ns, pid, tid, os_name=os_name)

    def seen(self, ts_ns: int, pid: int, tid: int, os_name: str | None = None,
             python_name: str | None = None) -> None:
        """A name read or reported for a thread: a row if it is new or changed."""
        t = self._known.get((pid, tid))
        new = t is None
        if new:
            if os_name is None:  # a hook name before any OS name: read it
                os_name = procs.thread_names(pid).get(tid)
            t = self._known[(pid, tid)] = _Thread(os_name)
            self._per_pid.setdefault(pid, set()).add(tid)
        before = (t.os_name, t.python_name)
        if os_name is not None:
            t.os_name = os_name
        if python_name is not None:
            t.python_name, t.source = python_name, "python"
        elif t.source == "os" and pid in self._py_os:
            # 3.14+ names threading.Thread threads after their Python name; a
            # thread that kept its creator's name was not named by Python.
            inherited = tid == pid or t.os_name == self._main_comm.get(pid)
            t.python_name = None if inherited else t.os_name
        if new or (t.os_name, t.python_name) != before:
            self.rows.append({"ts_ns": ts_ns, "pid": pid, "tid": tid, "os_name": t.os_name,
                              "python_name": t.python_name, "source": t.source})
            self._match(pid, tid, t)

    def _drop(self, pid: int, tid: int) -> None:
        if self._known.pop((pid, tid), None) is not None:
            self._per_pid[pid].discard(tid)

    def count(self, pid: int) -> int:
        return len(self._per_pid.get(pid, ()))

    def forget(self, pids: set[int]) -> None:
        """Exited processes (the daemon sees processes come and go for days)."""
        for pid in pids:
            for tid in self._per_pid.pop(pid, set()):
                self._known.pop((pid, tid), None)
                self._selected.discard(tid)
            self._py_os.discard(pid)
            self._main_comm.pop(pid, None)

    def take_rows(self) -> list[dict]:
        rows, self.rows = self.rows, []
        return rows

    # -- --thread-name -------------------------------------------------------

    def _match(self, pid: int, tid: int, t: _Thread) -> None:
        for name in (t.python_name, t.os_name):
            if name is not None and len(self.names_seen) < 10 * _NAMES_LISTED:
                self.names_seen.setdefault(name, None)
        if not self.patterns:
            return
        for pattern in self.patterns:
            # the Python name first; an OS name set on purpose (prctl) counts too
            for kind, name in (("python name", t.python_name), ("OS name", t.os_name)):
                if name is None or not Matcher.name_matches(name, (pattern,)):
                    continue
                hits = self.matched[pattern]
                if (pid, tid) not in hits:
                    hits[(pid, tid)] = name
                    if len(hits) <= _MATCHES_SHOWN:
                        self._status(f"--thread-name {pattern!r} matched {kind} {name!r} "
                                     f"(pid {pid} tid {tid})")
                if tid not in self._selected:
                    self._selected.add(tid)
                    self._select(tid)
                break

    def summary(self) -> tuple[list[dict], list[str]]:
        """Session rows (what each pattern matched) and warnings (what matched nothing)."""
        rows, warnings = [], []
        for pattern, hits in self.matched.items():
            listed = [f"{name} (tid {tid})" for (_pid, tid), name in list(hits.items())[:20]]
            more = f", ... ({len(hits)} threads)" if len(hits) > 20 else ""
            rows.append({"key": "thread_name_matched", "count": len(hits),
                         "value": f"{pattern!r}: " + (", ".join(listed) + more or "no thread")})
            if not hits:
                seen = list(self.names_seen)[:_NAMES_LISTED]
                warnings.append(f"--thread-name {pattern!r} matched no thread (names seen: "
                                f"{', '.join(seen) or 'none'}"
                                f"{', ...' if len(self.names_seen) > len(seen) else ''})")
        return rows, warnings
