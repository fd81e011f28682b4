"""Process state of traced targets, read with psutil.

Everything read here comes from other processes and is untrusted: lengths
are bounded and failures (the process exited, a zombie, a permission error)
turn into missing values rather than exceptions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import psutil

from .errors import ScopeError

_VERSION = re.compile(r"python(\d+\.\d+)")
MAX_CMDLINE = 4096


@dataclass
class ProcInfo:
    pid: int
    exe: str | None
    cmdline: str | None
    python_version: str | None
    parent_pid: int | None


def validate_pid(pid: int) -> psutil.Process:
    """The live process ``pid`` or a ScopeError naming what is wrong with it."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            raise ScopeError(f"process {pid} has already exited (zombie)")
    except psutil.NoSuchProcess:
        raise ScopeError(f"no such process: {pid}") from None
    return proc


def python_version(path: str | None) -> str | None:
    """'3.11' from an interpreter or libpython path, None if it does not say."""
    if not path:
        return None
    m = _VERSION.search(os.path.basename(path))
    return m.group(1) if m else None


def thread_names(pid: int) -> dict[int, str]:
    """tid -> kernel thread name (comm, 15 bytes) of every thread of a process."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", "rb") as f:
                out[int(tid)] = f.read(64).rstrip(b"\n").decode(errors="replace")
        except (OSError, ValueError):
            continue
    return out


def python_pids() -> list[int]:
    """Processes whose executable or name says Python (candidates, not proof)."""
    out = []
    for p in psutil.process_iter(["name", "exe"]):
        name = (p.info.get("name") or "") + " " + (p.info.get("exe") or "")
        if "python" in name:
            out.append(p.pid)
    return out


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def info(pid: int, binary: str | None = None) -> ProcInfo:
    """Static metadata of a process; fields it cannot read are None."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            exe = _safe(p.exe)
            cmd = _safe(p.cmdline)
            ppid = _safe(p.ppid)
    except psutil.NoSuchProcess:
        exe = cmd = ppid = None
    cmdline = " ".join(cmd)[:MAX_CMDLINE] if cmd else None
    return ProcInfo(pid, exe, cmdline, python_version(binary) or python_version(exe), ppid)


def sample(pid: int) -> dict | None:
    """Resource usage of one process now, or None if it is gone."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            cpu = p.cpu_times()
            ctx = p.num_ctx_switches()
            return {
                "rss_bytes": p.memory_info().rss,
                "cpu_user_s": cpu.user,
                "cpu_system_s": cpu.system,
                "num_threads": p.num_threads(),
                "num_fds": _safe(p.num_fds),
                "ctx_switches_voluntary": ctx.voluntary,
                "ctx_switches_involuntary": ctx.involuntary,
            }
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _safe(fn):
    try:
        return fn()
    except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None
