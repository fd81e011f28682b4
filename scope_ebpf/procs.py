"""Process state of traced targets, read with psutil.

Everything read here comes from other processes and is untrusted: lengths
are bounded and failures (the process exited, a zombie, a permission error)
turn into missing values rather than exceptions.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import threading
from dataclasses import dataclass, field

import psutil

from .errors import ScopeError

_VERSION = re.compile(r"python(\d+\.\d+)")
# docker/containerd/cri-o/podman put the 64-hex container id in the cgroup path
_CONTAINER = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?:/|$)")
MAX_CMDLINE = 4096
MAX_CGROUP = 1024
CLONE_NEWNET = 0x40000000


@dataclass
class ProcInfo:
    pid: int
    exe: str | None
    cmdline: str | None
    python_version: str | None
    parent_pid: int | None
    uid: int | None = None
    user: str | None = None
    cgroup: str | None = None
    container_id: str | None = None
    netns: int | None = None          # inode of /proc/PID/ns/net
    addresses: list[str] = field(default_factory=list)  # "if=addr/len" in that namespace

    def row(self) -> dict:
        """The columns of a processes 'start' row."""
        return {"pid": self.pid, "parent_pid": self.parent_pid, "exe": self.exe,
                "cmdline": self.cmdline, "python_version": self.python_version,
                "uid": self.uid, "user": self.user, "cgroup": self.cgroup,
                "container_id": self.container_id, "netns": self.netns,
                "addresses": self.addresses or None}


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


def info(pid: int, binary: str | None = None, redactor=None,
         addresses: bool | None = None) -> ProcInfo:
    """Static metadata of a process; fields it cannot read are None.

    ``redactor`` (redact.Redactor) masks secrets in the command line.
    ``addresses``: list the interface addresses of its network namespace; by
    default only for a namespace other than ours (a container), since reading
    them costs a thread and pyroute2's import (~60 ms of CPU, ~15 MB)."""
    uids = None
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            # (psutil says "" when the link is gone: a process exiting, or one
            # read at the wrong moment; unknown, not an executable named "")
            exe = _safe(p.exe) or None
            cmd = _safe(p.cmdline)
            ppid = _safe(p.ppid)
            uids = _safe(p.uids)
    except psutil.NoSuchProcess:
        exe = cmd = ppid = None
    if cmd and redactor is not None and redactor.active:
        cmd = redactor.argv(cmd)
    cmdline = " ".join(cmd)[:MAX_CMDLINE] if cmd else None
    out = ProcInfo(pid, exe, cmdline, python_version(binary) or python_version(exe), ppid)
    if uids is not None:
        out.uid = uids.real
        out.user = user_name(uids.real)
    out.cgroup = cgroup(pid)
    if out.cgroup:
        m = _CONTAINER.search(out.cgroup)
        out.container_id = m.group(1) if m else None
    try:
        out.netns = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        pass
    else:
        if addresses or (addresses is None and out.netns != _own_netns()):
            out.addresses = net_addresses(pid, out.netns)
    return out


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def cgroup(pid: int) -> str | None:
    """The process's cgroup v2 path ("0::/path"), else its first v1 path."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            lines = f.read(16 * MAX_CGROUP).decode(errors="replace").splitlines()
    except OSError:
        return None
    paths = [ln.split(":", 2)[2] for ln in lines if ln.count(":") >= 2]
    v2 = [ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")]
    chosen = (v2 or paths or [None])[0]
    return chosen[:MAX_CGROUP] if chosen else None


_cgroups: dict[int, str] = {}  # cgroup v2 id (directory inode) -> path


def cgroup_path(cgroup_id: int, root: str | None = None) -> str | None:
    """The cgroup v2 path ("/system.slice/x.service") of a cgroup id, as
    /proc/PID/cgroup names it; None if there is no such cgroup (any more)."""
    root = root or _cgroup2_root()
    if root and cgroup_id not in _cgroups:
        if len(_cgroups) > 65536:
            _cgroups.clear()
        for dirpath, _dirs, _files in os.walk(root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            rel = dirpath[len(root):] or "/"
            _cgroups[ino] = rel[:MAX_CGROUP]
    return _cgroups.get(cgroup_id)


def _cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified
    on a hybrid host)."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    return fields[1]
    except OSError:
        pass
    return None


_addresses: dict[int, list[str]] = {}  # netns inode -> addresses (few namespaces per host)
_addresses_lock = threading.Lock()


def net_addresses(pid: int, netns: int) -> list[str]:
    """Interface addresses ("eth0=10.0.0.5/24") inside the network namespace of ``pid``.

    Read with pyroute2 from a short-lived thread that enters the namespace:
    network namespaces are per thread, so the rest of the tracer stays put.
    Cached per namespace inode.
    """
    with _addresses_lock:
        if netns in _addresses:
            return _addresses[netns]
    result: list[str] = []

    def read() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if _libc().setns(fd, CLONE_NEWNET) != 0:
                return
        finally:
            os.close(fd)
        from pyroute2 import IPRoute

        with IPRoute() as ip:
            names = {link["index"]: link.get("IFLA_IFNAME") for link in ip.get_links()}
            for a in ip.get_addr():
                name = a.get("IFA_LABEL") or names.get(a["index"]) or "?"
                result.append(f"{name}={a.get('IFA_ADDRESS')}/{a['prefixlen']}")

    t = threading.Thread(target=read, name="scope-netns", daemon=True)
    t.start()
    t.join(5)
    with _addresses_lock:
        if len(_addresses) > 4096:
            _addresses.clear()
        _addresses[netns] = result[:64]
    return result[:64]


_LIBC = None


def _own_netns() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return -1


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


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
