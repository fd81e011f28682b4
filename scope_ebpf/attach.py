"""Attach a loaded BPF program to a uprobe via the uprobe PMU and a BPF link.

Why not bcc's attach helpers: they cannot set a BPF cookie, and bcc's USDT
support raises semaphores by writing into the target's memory, which leaks a
raised semaphore forever if the tracer is SIGKILLed.  Opening the uprobe with
``ref_ctr_offset`` makes the kernel own the semaphore: it is raised in every
process mapping the file (including ones started later) and lowered when our
fds close, however we die.  Only ctypes + raw syscalls are used.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import threading
from collections.abc import Sequence
from types import TracebackType

__all__ = ["AttachError", "PerfEventLink", "TracepointLink", "UprobeLink", "UprobeMultiLink",
           "bpf_syscall",
           "close_all", "uprobe_multi_supported"]

_SYSCALLS = {  # machine -> (perf_event_open, bpf)
    "x86_64": (298, 321),
    "aarch64": (241, 280),
}
_PMU_DIR = "/sys/bus/event_source/devices/uprobe"
_PERF_ATTR_SIZE = 128  # PERF_ATTR_SIZE_VER7
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_BPF_LINK_CREATE = 28
_BPF_PERF_EVENT = 41
BPF_TRACE_UPROBE_MULTI = 48  # attach type (and the programs' expected attach type)
_BPF_ATTR_SIZE = 64  # covers link_create incl. the perf_event.bpf_cookie union member

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class AttachError(Exception):
    """Attaching a uprobe failed; the message is one line and says what to do."""


def _syscall(nr_index: int, *args: int | ctypes.Array[ctypes.c_char]) -> int:
    """Run a raw syscall, returning the result or raising OSError with errno."""
    try:
        nr = _SYSCALLS[platform.machine()][nr_index]
    except KeyError:
        raise AttachError(f"unsupported architecture {platform.machine()}") from None
    cargs = [a if isinstance(a, ctypes.Array) else ctypes.c_long(a) for a in args]
    ret = int(_libc.syscall(ctypes.c_long(nr), *cargs))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def bpf_syscall(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    """bpf(cmd, attr, sizeof attr); raises OSError."""
    return _syscall(1, cmd, attr, len(attr))


def _link(prog_fd: int, perf_fd: int, cookie: int, where: str) -> int:
    battr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
    struct.pack_into("<IIIIQ", battr, 0, prog_fd, perf_fd, _BPF_PERF_EVENT, 0, cookie)
    try:
        return _syscall(1, _BPF_LINK_CREATE, battr, _BPF_ATTR_SIZE)
    except OSError as e:
        hint = ""
        if e.errno in (errno.EPERM, errno.EACCES):
            hint = " (needs root or CAP_BPF+CAP_PERFMON)"
        elif e.errno == errno.EINVAL:
            hint = " (wrong program type, or kernel lacks BPF links on perf events)"
        raise AttachError(f"BPF_LINK_CREATE for {where}: {e.strerror}{hint}") from None


class _PerfLink:
    """A BPF program linked to a perf event: both fds, closed together."""

    def __init__(self, prog_fd: int, attr: ctypes.Array, cpu: int, what: str) -> None:
        self.perf_fd = self.link_fd = -1
        try:
            self.perf_fd = _syscall(0, attr, -1, cpu, -1, _PERF_FLAG_FD_CLOEXEC)
            self.link_fd = _link(prog_fd, self.perf_fd, 0, what)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for attr in ("link_fd", "perf_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                os.close(fd)


class TracepointLink(_PerfLink):
    """A BPF program linked to a kernel tracepoint (``category:name``)."""

    def __init__(self, prog_fd: int, tracepoint: str, tracefs: str = "/sys/kernel/tracing"):
        category, _, name = tracepoint.partition(":")
        try:
            with open(f"{tracefs}/events/{category}/{name}/id") as f:
                tp_id = int(f.read())
        except (OSError, ValueError) as e:
            raise AttachError(f"no tracepoint {tracepoint} in {tracefs}: {e}") from None
        attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
        struct.pack_into("<IIQQ", attr, 0, 2, _PERF_ATTR_SIZE, tp_id, 1)  # PERF_TYPE_TRACEPOINT
        try:
            # (CPU 0: a tracepoint's program runs on every CPU whichever the event's)
            super().__init__(prog_fd, attr, 0, f"tracepoint {tracepoint}")
        except OSError as e:
            raise AttachError(f"perf_event_open(tracepoint {tracepoint}): {e.strerror}") from None


class PerfEventLink(_PerfLink):
    """A BPF perf_event program on a software cpu-clock event of one CPU, sampling
    whatever runs there ``freq`` times a second (no hardware PMU needed)."""

    def __init__(self, prog_fd: int, cpu: int, freq: int):
        attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
        # PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, sample_freq, flags: freq (bit 10)
        struct.pack_into("<IIQQQQQ", attr, 0, 1, _PERF_ATTR_SIZE, 0, freq, 0, 0, 1 << 10)
        try:
            super().__init__(prog_fd, attr, cpu, f"cpu-clock of CPU {cpu}")
        except OSError as e:
            hint = (" (raise kernel.perf_event_max_sample_rate or lower --sample-hz)"
                    if e.errno == errno.EINVAL else "")
            raise AttachError(f"perf_event_open(cpu-clock, CPU {cpu}, {freq} Hz): "
                              f"{e.strerror}{hint}") from None


def uprobe_multi_supported() -> bool:
    """Whether uprobes are attached with uprobe_multi links (Linux 6.6+).

    ``SCOPE_EBPF_UPROBE_MULTI=0`` forces one perf event per uprobe (the path
    for older kernels), e.g. to test it.
    """
    if os.environ.get("SCOPE_EBPF_UPROBE_MULTI", "") == "0":
        return False
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 6)


def close_all(links: Sequence[TracepointLink | UprobeLink | UprobeMultiLink]) -> None:
    """Close links at once, each from its own thread, and wait for all.

    Each detach waits for RCU grace periods in the kernel (30-100 ms here, more
    on a busy host); closed concurrently, the waits overlap: 10 uprobe_multi
    links took 480 ms one by one and 80 ms together.
    """
    if len(links) <= 1:
        for link in links:
            link.close()
        return
    errors: list[BaseException] = []

    def close(link: TracepointLink | UprobeLink | UprobeMultiLink) -> None:
        try:
            link.close()
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=close, args=(link,), daemon=True) for link in links]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _format_shift(field: str, default: int) -> int:
    """Bit position of a uprobe PMU format field (e.g. ``config:32-63`` -> 32)."""
    try:
        with open(f"{_PMU_DIR}/format/{field}") as f:
            spec = f.read().strip()
    except OSError:
        return default
    name, _, bits = spec.partition(":")
    lo = bits.split("-")[0]
    return int(lo) if name == "config" and lo.isdigit() else default


def _pmu_type() -> int:
    try:
        with open(f"{_PMU_DIR}/type") as f:
            return int(f.read())
    except (OSError, ValueError) as e:
        raise AttachError(f"kernel has no uprobe PMU ({_PMU_DIR}/type): {e}") from e


class UprobeLink:
    """A BPF program linked to one uprobe; closing it detaches (and lowers the semaphore)."""

    def __init__(
        self,
        prog_fd: int,
        path: str,
        offset: int,
        semaphore_offset: int = 0,
        cookie: int = 0,
    ) -> None:
        self.perf_fd = -1
        self.link_fd = -1
        if not 0 <= cookie < 1 << 64:
            raise AttachError(f"cookie {cookie} does not fit in 64 bits")
        if not 0 <= semaphore_offset < 1 << 32:
            raise AttachError(f"semaphore offset {semaphore_offset:#x} does not fit in 32 bits")
        self.path = path
        self.offset = offset
        self._path_buf = ctypes.create_string_buffer(os.fsencode(path))  # kernel reads it
        config = semaphore_offset << _format_shift("ref_ctr_offset", 32)
        attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
        struct.pack_into("<IIQQ", attr, 0, _pmu_type(), _PERF_ATTR_SIZE, config, 1)
        struct.pack_into("<QQ", attr, 56, ctypes.addressof(self._path_buf), offset)
        where = f"{path}+{offset:#x}"
        try:
            self.perf_fd = _syscall(0, attr, -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
        except OSError as e:
            raise AttachError(self._perf_error(e, where, semaphore_offset)) from None

        try:
            self.link_fd = _link(prog_fd, self.perf_fd, cookie, f"uprobe {where}")
        except AttachError:
            self.close()
            raise

    @staticmethod
    def _perf_error(e: OSError, where: str, semaphore_offset: int,
                    call: str = "perf_event_open") -> str:
        """Turn a perf_event_open (or uprobe_multi link) errno into an actionable line."""
        if e.errno == errno.EINVAL and semaphore_offset:
            return (
                f"{call}(uprobe {where}, semaphore {semaphore_offset:#x}) failed with "
                "EINVAL: another tracer (e.g. a bcc tool) may be attached to this probe with "
                "different semaphore handling (kernel logs 'ref_ctr_offset mismatch')"
            )
        if e.errno == errno.ENOENT:
            return f"{call}(uprobe {where}): file not found (did the binary go away?)"
        if e.errno in (errno.EPERM, errno.EACCES):
            return f"{call}(uprobe {where}): {e.strerror}; needs root/CAP_PERFMON+CAP_BPF"
        return f"{call}(uprobe {where}): {e.strerror}"

    @property
    def fd(self) -> int:
        """The BPF link fd (the one that keeps the program attached)."""
        return self.link_fd

    def close(self) -> None:
        """Detach: close the link then the perf event.  Safe to call repeatedly."""
        for name in ("link_fd", "perf_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)

    def __enter__(self) -> UprobeLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        fds = f"perf_fd={self.perf_fd}, link_fd={self.link_fd}"
        return f"UprobeLink({self.path}+{self.offset:#x}, {fds})"


class UprobeMultiLink:
    """A BPF program linked to many uprobes of one file by one uprobe_multi link.

    Why: the kernel waits for an RCU grace period each time a uprobe goes away.
    Closing one perf event per probe took about 100 ms a probe here (1.5 s for
    3.13's 14 probes, longer with another tracer detaching at the same time); a
    multi link unregisters its whole set and then waits once. Semaphores
    (``ref_ctr_offsets``) stay kernel-managed, cookies stay per probe. The
    program must have been loaded with BPF_TRACE_UPROBE_MULTI as its expected
    attach type.
    """

    def __init__(self, prog_fd: int, path: str, offsets: list[int],
                 semaphore_offsets: list[int], cookies: list[int]) -> None:
        self.link_fd = -1
        self.path = path
        self.offsets = list(offsets)
        n = len(offsets)
        if not n or len(semaphore_offsets) != n or len(cookies) != n:
            raise AttachError(f"uprobe_multi link on {path}: {n} offsets, "
                              f"{len(semaphore_offsets)} semaphores, {len(cookies)} cookies")
        array = ctypes.c_uint64 * n
        # the kernel copies all of these during the syscall
        path_buf = ctypes.create_string_buffer(os.fsencode(path))
        offs, refs, cks = array(*offsets), array(*semaphore_offsets), array(*cookies)
        battr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
        struct.pack_into("<IIII", battr, 0, prog_fd, 0, BPF_TRACE_UPROBE_MULTI, 0)
        struct.pack_into("<QQQQIII", battr, 16, ctypes.addressof(path_buf),
                         ctypes.addressof(offs), ctypes.addressof(refs), ctypes.addressof(cks),
                         n, 0, 0)  # flags 0: entry probes; pid 0: every process
        try:
            self.link_fd = _syscall(1, _BPF_LINK_CREATE, battr, _BPF_ATTR_SIZE)
        except OSError as e:
            where = f"{path}+{offsets[0]:#x}" + (f" and {n - 1} more" if n > 1 else "")
            raise AttachError(UprobeLink._perf_error(e, where, max(semaphore_offsets),
                                                     "uprobe_multi link")) from None

    @property
    def fd(self) -> int:
        return self.link_fd

    def close(self) -> None:
        """Detach every probe of the set (and lower their semaphores). Idempotent."""
        fd, self.link_fd = getattr(self, "link_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"UprobeMultiLink({self.path}, {len(self.offsets)} uprobes, link_fd={self.link_fd})"
