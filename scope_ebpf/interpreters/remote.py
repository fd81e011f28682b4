"""Every thread's Python stack of a running process, read from outside.

The process's memory is read with pread() on /proc/PID/mem (root, or the
ptrace access the kernel asks for), following the layouts of .layouts from
``_PyRuntime`` to each interpreter's threads and their frames. Nothing runs
in the target and nothing is attached to it; with ``lock=True`` it is stopped
(SIGSTOP) while it is read and continued (SIGCONT) after, unless it was
stopped already.

A running target can change a stack while it is read. Each thread is read,
then its innermost frame read again: if the stack moved (or a read landed on
freed memory) the thread is read again, up to a few times, and otherwise
returned marked ``torn``. Stacks deeper than ``max_depth`` are cut there and
say how many frames were left out (counted, not read).

Threads are named as ``threading`` names them (``Thread.name``, read by .names
from ``threading._active``), else by the OS (/proc/PID/task/TID/comm).
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import time
from dataclasses import dataclass, field

from .. import usdt
from ..errors import ScopeError
from ..textsafe import safe
from .layouts import Runtime, find_runtime, instruction_offset, line_for
from .names import ThreadNames, Unreadable

MAX_DEPTH = 1024           # frames read per thread by default
_COUNT_LIMIT = 1_000_000   # frames counted past max_depth at most
_MAX_THREADS = 100_000
_MAX_INTERPRETERS = 256
_MAX_STR = 1 << 16         # characters of a name or file name
_MAX_BYTES = 1 << 22       # bytes of a line table
_RETRIES = 8
_PTHREAD_SCAN = 4096       # bytes of glibc's struct pthread searched for the tid
_PAGE = 4096


@dataclass
class Frame:
    function: str   # qualified name where the version has one (3.11+), else the name
    name: str       # co_name
    file: str
    line: int       # the line being executed (-1 if the line table gives none)
    first_line: int

    def row(self) -> dict:
        return {"function": self.function, "name": self.name, "file": self.file,
                "line": self.line, "first_line": self.first_line}


@dataclass
class Thread:
    tid: int | None          # kernel thread id (None if it could not be told)
    pthread_id: int          # PyThreadState.thread_id (pthread_t)
    name: str | None         # threading's name (Thread.name), else os_name
    os_name: str | None      # the OS thread name (/proc/PID/task/TID/comm)
    state: str | None        # the kernel's state letter: R running, S sleeping, ...
    frames: list[Frame] = field(default_factory=list)  # innermost first
    missing: int = 0         # frames past max_depth, left out
    torn: bool = False       # kept changing while read: the frames may be wrong

    @property
    def active(self) -> bool:
        return self.state in ("R", "D")

    def row(self) -> dict:
        return {"tid": self.tid, "pthread_id": self.pthread_id, "name": self.name,
                "os_name": self.os_name, "state": self.state, "active": self.active,
                "frames": [f.row() for f in self.frames], "missing_frames": self.missing,
                "torn": self.torn}


@dataclass
class Dump:
    pid: int
    version: str
    interpreter: str      # the file holding _PyRuntime, as the process maps it
    layout_source: str
    paused: bool          # the process was stopped while read (by --lock or already)
    threads: list[Thread]
    cmdline: str = ""

    def row(self) -> dict:
        return {"pid": self.pid, "cmdline": self.cmdline, "python_version": self.version,
                "interpreter": self.interpreter, "layout_source": self.layout_source,
                "paused": self.paused, "threads": [t.row() for t in self.threads]}


class _Gone(Unreadable):
    """A read of memory that is not mapped (freed, or never was)."""


class _Torn(Unreadable):
    """What was read does not hold together (a stack that changed under us)."""


class _Memory:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):  # gone, or exiting (no memory)
            raise ScopeError(f"no such process: {pid}") from None
        except PermissionError:
            raise ScopeError(usdt.denied(pid).replace("memory maps", "memory")) from None

    def close(self) -> None:
        os.close(self.fd)

    def read(self, addr: int, size: int) -> bytes:
        if addr <= 0 or addr >= 1 << 63 or size <= 0:
            raise _Gone()
        try:
            data = os.pread(self.fd, size, addr)
        except OSError as e:
            if e.errno in (errno.EIO, errno.EFAULT, errno.EINVAL):
                raise _Gone() from None
            if e.errno == errno.ESRCH:
                raise ScopeError(f"process {self.pid} exited while being read") from None
            raise
        if len(data) != size:
            if not data and not os.path.exists(f"/proc/{self.pid}"):
                raise ScopeError(f"process {self.pid} exited while being read")
            raise _Gone()
        return data

    def ptr(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]


def _u64(buf: bytes, off: int) -> int:
    return struct.unpack_from("<Q", buf, off)[0]


@dataclass
class _Code:
    name: str
    qualname: str
    file: str
    first_line: int
    table: bytes


class _Reader:
    def __init__(self, mem: _Memory, rt: Runtime) -> None:
        self.mem, self.rt, self.lay = mem, rt, rt.layout
        lay = self.lay
        self.tstate_size = max(lay.tstate_next, lay.tstate_thread_id,
                               lay.tstate_native_thread_id, lay.tstate_frame) + 8
        self.frame_size = max(lay.frame_previous, lay.frame_code, lay.frame_instr,
                              lay.frame_owner) + 8
        self.code_size = max(lay.code_name, lay.code_qualname, lay.code_filename,
                             lay.code_firstlineno, lay.code_linetable, lay.object_type) + 8
        self.tag_mask = ~lay.frame_code_tag_bits & (1 << 64) - 1
        self.codes: dict[int, _Code] = {}

    # -- objects --
    def string(self, addr: int) -> str:
        lay = self.lay
        head = self.mem.read(addr, lay.str_compact_data + 8)
        state = head[lay.str_state]
        length = _u64(head, lay.str_length)
        kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if kind not in (1, 2, 4) or length > _MAX_STR:
            raise _Torn()
        if compact:
            data = addr + (lay.str_ascii_data if ascii_ else lay.str_compact_data)
        else:  # a legacy string: PyUnicodeObject.data.any follows the compact part
            data = _u64(head, lay.str_compact_data)
        raw = self.mem.read(data, length * kind) if length else b""
        codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        return raw.decode(codec, errors="replace")

    def bytes_(self, addr: int) -> bytes:
        size = struct.unpack("<q", self.mem.read(addr + self.lay.bytes_size, 8))[0]
        if not 0 <= size <= _MAX_BYTES:
            raise _Torn()
        return self.mem.read(addr + self.lay.bytes_data, size) if size else b""

    def code(self, addr: int) -> _Code:
        found = self.codes.get(addr)
        if found is not None:
            return found
        lay = self.lay
        buf = self.mem.read(addr, self.code_size)
        if self.rt.code_type and _u64(buf, lay.object_type) != self.rt.code_type:
            raise _Torn()  # not a code object (any more)
        name = self.string(_u64(buf, lay.code_name))
        qualname = self.string(_u64(buf, lay.code_qualname)) if lay.code_qualname >= 0 else name
        found = _Code(name, qualname, self.string(_u64(buf, lay.code_filename)),
                      struct.unpack_from("<i", buf, lay.code_firstlineno)[0],
                      self.bytes_(_u64(buf, lay.code_linetable)))
        self.codes[addr] = found
        return found

    # -- frames --
    def top_frame(self, tstate: int) -> int:
        frame = self.mem.ptr(tstate + self.lay.tstate_frame)
        if frame and self.lay.cframe_current_frame >= 0:  # 3.11-3.12: via the _PyCFrame
            frame = self.mem.ptr(frame + self.lay.cframe_current_frame)
        return frame

    def _instr(self, buf: bytes) -> int:
        if self.lay.instr_kind in ("lasti_bytes", "lasti_units"):
            return struct.unpack_from("<i", buf, self.lay.frame_instr)[0]
        return _u64(buf, self.lay.frame_instr)

    def _is_shim(self, buf: bytes) -> bool:
        lay = self.lay
        return lay.frame_owner_skip >= 0 and buf[lay.frame_owner] >= lay.frame_owner_skip

    def walk(self, frame: int, max_depth: int) -> tuple[list[Frame], int, tuple, bool]:
        """(frames innermost first, frames left out, what to compare on a re-read,
        whether the walk broke off on memory that no longer held a frame)."""
        lay = self.lay
        out: list[Frame] = []
        seen: set[int] = set()
        first = None
        try:
            while frame:
                if frame in seen:
                    raise _Torn()  # a cycle: the chain changed while it was followed
                seen.add(frame)
                buf = self.mem.read(frame, self.frame_size)
                if not self._is_shim(buf):
                    if len(out) >= max_depth:
                        return out, self._count(frame), first, False
                    code_addr = _u64(buf, lay.frame_code) & self.tag_mask
                    if first is None:
                        first = (frame, code_addr)
                    code = self.code(code_addr)
                    offset = instruction_offset(lay, self._instr(buf), code_addr)
                    out.append(Frame(code.qualname, code.name, code.file,
                                     line_for(lay, code.table, code.first_line, offset),
                                     code.first_line))
                frame = _u64(buf, lay.frame_previous)
        except (_Gone, _Torn):
            return out, 0, first, True
        return out, 0, first, False

    def _count(self, frame: int) -> int:
        """Python frames from ``frame`` outwards, without decoding them."""
        n = 0
        while frame and n < _COUNT_LIMIT:
            buf = self.mem.read(frame, self.frame_size)
            n += not self._is_shim(buf)
            frame = _u64(buf, self.lay.frame_previous)
        return n

    def first(self, tstate: int) -> tuple | None:
        """The innermost Python frame's (address, code), read again: if they are
        unchanged the walk saw one stack (its instruction may have moved on, which
        only makes the innermost line a moment older)."""
        frame = self.top_frame(tstate)
        while frame:
            buf = self.mem.read(frame, self.frame_size)
            if not self._is_shim(buf):
                return frame, _u64(buf, self.lay.frame_code) & self.tag_mask
            frame = _u64(buf, self.lay.frame_previous)
        return None

    # -- threads --
    def tstates(self) -> list[tuple[int, int, int | None, int]]:
        """(thread state address, pthread_t, native tid, interpreter state address)
        of every thread, oldest first (each interpreter's list starts with its
        newest thread)."""
        lay, mem = self.lay, self.mem
        out = []
        interp = mem.ptr(self.rt.runtime + lay.runtime_interpreters_head)
        seen: set[int] = set()
        for _ in range(_MAX_INTERPRETERS):
            if not interp or interp in seen:
                break
            seen.add(interp)
            tstate = mem.ptr(interp + lay.interp_threads_head)
            mine = []
            while tstate and tstate not in seen and len(out) + len(mine) < _MAX_THREADS:
                seen.add(tstate)
                buf = mem.read(tstate, self.tstate_size)
                native = (_u64(buf, lay.tstate_native_thread_id)
                          if lay.tstate_native_thread_id >= 0 else None)
                mine.append((tstate, _u64(buf, lay.tstate_thread_id), native, interp))
                tstate = _u64(buf, lay.tstate_next)
            out += reversed(mine)
            interp = mem.ptr(interp + lay.interp_next)
        return out


def _tids_from_pthreads(mem: _Memory, pthreads: list[int], tasks: set[int],
                        main: int) -> dict[int, int]:
    """pthread_t -> tid through glibc's struct pthread (the pthread_t is its
    address): the offset of its ``tid`` is found once, as where the main thread's
    struct holds ``main`` (the pid) and every other thread's struct one of
    ``tasks``; both as the process sees them (its own PID namespace)."""
    blocks = {}
    for p in pthreads:
        try:
            blocks[p] = mem.read(p, _PTHREAD_SCAN)
        except _Gone:
            try:  # the struct ends its thread's stack mapping: what is left of its page
                blocks[p] = mem.read(p, -p % _PAGE or _PAGE)
            except _Gone:
                continue
    if not blocks:
        return {}
    for off in range(0, min(map(len, blocks.values())) - 3, 4):
        tids = {p: struct.unpack_from("<i", b, off)[0] for p, b in blocks.items()}
        if (main in tids.values() or main not in tasks) and all(
                t in tasks for t in tids.values()) and len(set(tids.values())) == len(tids):
            return tids
    return {}


def _ns_tids(pid: int) -> tuple[dict[int, int], int] | None:
    """In a PID namespace (a container): (tid as the process sees it -> tid as we
    do, its own pid as it sees it), from the NSpid lines of /proc; None outside."""
    own = _nspid(_task_file(pid, pid, "status"))
    if own is None or len(own) < 2:
        return None
    out = {}
    for tid in _tasks(pid):
        ids = _nspid(_task_file(pid, tid, "status"))
        if ids:
            out[ids[-1]] = ids[0]
    return out, own[-1]


def _nspid(status: str | None) -> list[int] | None:
    for line in (status or "").splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return None


def _kernel_tids(mem: _Memory, pid: int, states: list[tuple]) -> list[int | None]:
    """Each thread state's kernel tid (as this process sees it), from its native
    thread id (3.11+) or glibc's struct pthread (before): both hold the tid of the
    target's own PID namespace, translated here when it has one."""
    ns = _ns_tids(pid)
    by_pthread: dict[int, int] = {}
    if any(native is None for _t, _p, native, _i in states):
        tasks, main = (set(ns[0]), ns[1]) if ns else (_tasks(pid), pid)
        by_pthread = _tids_from_pthreads(mem, [p for _t, p, _n, _i in states], tasks, main)
    out: list[int | None] = []
    for _t, pthread, native, _i in states:
        tid = native if native is not None else by_pthread.get(pthread)
        out.append(ns[0].get(tid) if ns and tid is not None else tid)
    return out


def in_pid_namespace(pid: int) -> bool:
    """Whether ``pid`` lives in a PID namespace of its own (its thread states'
    native ids then are not the kernel tids the tracer sees)."""
    ids = _nspid(_task_file(pid, pid, "status"))
    return bool(ids) and len(ids) > 1


def _tasks(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def _task_file(pid: int, tid: int, name: str) -> str | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/{name}", "rb") as f:
            return f.read(4096).decode(errors="replace")
    except OSError:
        return None


def _state(pid: int, tid: int) -> str | None:
    stat = _task_file(pid, tid, "stat")
    if not stat or ")" not in stat:
        return None
    rest = stat.rsplit(")", 1)[1].split()
    return rest[0] if rest else None


def _stopped(pid: int) -> bool:
    return all(_state(pid, t) in ("T", "t", None) for t in _tasks(pid) or {pid})


def _read_threads(mem: _Memory, rt: Runtime, max_depth: int) -> list[Thread]:
    reader = _Reader(mem, rt)
    for attempt in range(_RETRIES):
        try:
            states = reader.tstates()
            break
        except (_Gone, _Torn):
            if attempt == _RETRIES - 1:
                raise ScopeError(f"process {rt.pid}: its thread list kept changing or could "
                                 "not be read (is it shutting down?)") from None
    tids = _kernel_tids(mem, rt.pid, states)
    names = ThreadNames(reader, rt)
    threads = []
    for (tstate, pthread, _native, interp), tid in zip(states, tids, strict=True):
        th = Thread(tid, pthread, None, None, None)
        if tid is not None:
            comm = _task_file(rt.pid, tid, "comm")
            th.os_name = comm.rstrip("\n") if comm is not None else None
            th.state = _state(rt.pid, tid)
        th.name = names.of(interp).get(pthread, th.os_name)
        for attempt in range(_RETRIES):
            try:
                frames, missing, first, broken = reader.walk(reader.top_frame(tstate), max_depth)
                th.frames, th.missing = frames, missing
                th.torn = broken or reader.first(tstate) != first
            except (_Gone, _Torn):
                th.torn = True
            if not th.torn:
                break
            reader.codes.clear()  # a code object may have been freed and its memory reused
            if attempt >= 2:
                time.sleep(0.0002 * attempt)
        threads.append(th)
    return threads


class Process:
    """One live process read through its layout, for the stack sampler: its
    threads' states and its code objects (each read once, then cached)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.mem = _Memory(rt.pid)
        self.reader = _Reader(self.mem, rt)
        self.namespaced = in_pid_namespace(rt.pid)  # its native thread ids are not ours

    def threads(self) -> dict[int, int]:
        """Kernel tid -> PyThreadState address of every thread with one now (3.8-3.10:
        through glibc's struct pthread); {} while the thread list cannot be read."""
        try:
            states = self.reader.tstates()
        except (_Gone, _Torn):
            return {}
        out = {}
        for (tstate, _p, _n, _i), tid in zip(states, _kernel_tids(self.mem, self.rt.pid, states),
                                             strict=True):
            if tid:
                out[tid] = tstate
        return out

    def frame(self, code_addr: int, instr: int) -> Frame | None:
        """The frame of a code object at an instruction (f_lasti, or a pointer into
        its bytecode); None if no code object can be read there."""
        try:
            code = self.reader.code(code_addr)
        except (_Gone, _Torn):
            return None
        offset = instruction_offset(self.rt.layout, instr, code_addr)
        return Frame(code.qualname, code.name, code.file,
                     line_for(self.rt.layout, code.table, code.first_line, offset),
                     code.first_line)

    def close(self) -> None:
        self.mem.close()


def dump(pid: int, max_depth: int = MAX_DEPTH, lock: bool = False) -> Dump:
    """Every thread's Python stack of process ``pid`` now; ScopeError (one line)
    for a pid that is gone, not CPython, unsupported or not readable."""
    if max_depth < 1:
        raise ScopeError(f"the depth limit must be at least 1, not {max_depth}")
    rt = find_runtime(pid)
    mem = _Memory(pid)
    paused = _stopped(pid)
    stopped_here = False
    try:
        if lock and not paused:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped_here = True
                deadline = time.monotonic() + 1.0
                while not _stopped(pid) and time.monotonic() < deadline:
                    time.sleep(0.001)
                paused = _stopped(pid)
                threads = _read_threads(mem, rt, max_depth)
            finally:
                if stopped_here:
                    os.kill(pid, signal.SIGCONT)
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        else:
            threads = _read_threads(mem, rt, max_depth)
    except ProcessLookupError:
        raise ScopeError(f"process {pid} exited while being read") from None
    finally:
        mem.close()
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read(4096).rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    return Dump(pid, rt.version, rt.mapped, rt.layout.source, paused, threads, cmdline)


def text(d: Dump) -> str:
    """The dump as py-spy prints one: a header, then each thread, named as threading
    names it (and the OS name in parentheses where that differs), and its frames,
    innermost first, as ``function (file:line)``; names shown with control
    characters escaped."""
    out = [f"Process {d.pid}: {d.cmdline}",
           f"Python v{d.version} ({d.interpreter})", ""]
    for t in d.threads:
        tid = t.tid if t.tid is not None else f"{t.pthread_id:#x}"
        state = "stopped" if d.paused else "active" if t.active else "idle"
        name = f'"{t.name}"' if t.name is not None else '"?"'
        if t.os_name is not None and t.os_name != t.name:
            name += f' (OS name "{t.os_name}")'
        out.append(f"Thread {tid} ({state}): {name}")
        for f in t.frames:
            line = f":{f.line}" if f.line >= 0 else ""
            out.append(f"    {f.function} ({f.file}{line})")
        if t.missing:
            out.append(f"    ... {t.missing} more frame(s) not shown (raise --max-depth)")
        if t.torn:
            out.append("    (the stack kept changing while it was read: it may be wrong; "
                       "--lock pauses the process)")
    return "\n".join(map(safe, out)) + "\n"
