"""Dropping what a long-running root daemon does not need.

After the daemon has attached, it keeps only the capabilities that tracing
new processes needs (and that the unit file grants), removes every other one
from its effective, permitted, inheritable and bounding sets (so no child it
starts, the bcc loader included, can regain them), and sets no_new_privs.
"""

from __future__ import annotations

import ctypes
import os

# linux/capability.h
CAP_CHOWN = 0              # output files owned by root:group
CAP_DAC_READ_SEARCH = 2    # interpreter files and /proc of other users and containers
CAP_SYS_PTRACE = 19        # /proc/PID/{exe,maps,root,mem} of other users' processes
CAP_SYS_ADMIN = 21         # setns() into a container's network namespace
CAP_SYS_RESOURCE = 24      # map memory limits on older kernels
CAP_PERFMON = 38           # uprobes/tracepoints through perf_event_open
CAP_BPF = 39               # programs and maps
KEEP = frozenset({CAP_CHOWN, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN,
                  CAP_SYS_RESOURCE, CAP_PERFMON, CAP_BPF})

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def drop_capabilities(keep: frozenset[int] = KEEP) -> list[int]:
    """Keep only ``keep``; returns the capabilities dropped. Raises OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    dropped = []
    for cap in range(_last_cap() + 1):
        if cap not in keep:
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                err = ctypes.get_errno()
                if err != 22:  # EINVAL: not a capability of this kernel
                    raise OSError(err, f"PR_CAPBSET_DROP {cap}: {os.strerror(err)}")
            dropped.append(cap)
    hdr = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capget: {os.strerror(err)}")
    for i in range(2):
        mask = sum(1 << (c - 32 * i) for c in keep if 32 * i <= c < 32 * (i + 1))
        data[i].effective &= mask
        data[i].permitted &= mask
        data[i].inheritable &= mask
    if libc.capset(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"no_new_privs: {os.strerror(err)}")
    return dropped
