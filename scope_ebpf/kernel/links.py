"""Which uprobes an interpreter file gets, and their lifetime.

For each interpreter file: the USDT probes of the selected probe sets, each
with a BPF cookie that indexes its argument spec (and where the build keeps
its frames); for the function probes, the extra sites the call model needs
(the eval function's entry and exits in 3.13/3.14, 3.13's inline __init__,
3.15's throw() resumes), found in interpreters/. The function probes can be
detached and re-attached as a set (the breaker); everything else stays
until close().
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import capabilities, events, procs, usdt
from ..attach import AttachError, UprobeLink, UprobeMultiLink, close_all
from ..errors import ScopeError
from ..interpreters import disasm, gil
from ..interpreters import offsets as pyoffsets
from ..program import Program

PROBE_SETS = {
    "calls": ("function__entry", "function__return"),
    "gc": ("gc__start", "gc__done"),
    "sched": (),
    "imports": ("import__find__load__start", "import__find__load__done"),
    "audit": ("audit",),
    "stacks": (),
}
PROGRAMS = {
    "function__entry": "on_entry",
    "function__return": "on_return",
    "gc__start": "on_gc_start",
    "gc__done": "on_gc_done",
    "import__find__load__start": "on_import_start",
    "import__find__load__done": "on_import_done",
    "audit": "on_audit",
}
_ARG_KIND = {"reg": events.const("ARG_REG"), "mem": events.const("ARG_MEM"),
             "const": events.const("ARG_CONST")}
_RETURN_PROGS = ("on_return", "on_eval_return", "on_inline_return", "on_inline_unwind")


@dataclass
class _Link:
    """How to (re-)create one uprobe link."""

    prog: str
    path: str
    offset: int
    semaphore: int
    cookie: int

    def open(self, program: Program) -> UprobeLink:
        return UprobeLink(program.prog_fd(self.prog), self.path, self.offset, self.semaphore,
                          cookie=self.cookie)


Link = UprobeLink | UprobeMultiLink


def _open(program: Program, specs: list[_Link]) -> list[Link]:
    """Links for ``specs`` (all of one file), in their order: one uprobe_multi link
    per program where the kernel has them (detaching then waits for one grace
    period per program, not one per probe), else one perf event per probe."""
    if not program.uprobe_multi:
        groups = [[spec] for spec in specs]
    else:
        by_prog: dict[str, list[_Link]] = {}
        for spec in specs:
            by_prog.setdefault(spec.prog, []).append(spec)
        groups = list(by_prog.values())
    links: list[Link] = []
    try:
        for group in groups:
            if not program.uprobe_multi:
                links.append(group[0].open(program))
                continue
            links.append(UprobeMultiLink(program.prog_fd(group[0].prog), group[0].path,
                                         [s.offset for s in group], [s.semaphore for s in group],
                                         [s.cookie for s in group]))
    except BaseException:
        for link in links:
            link.close()
        raise
    return links


@dataclass
class Binary:
    path: str
    probes: set[str]
    links: list[Link]                 # everything but the function probes
    calls_mode: str = "none"          # see capabilities.Capabilities.calls_mode
    call_specs: list[_Link] = field(default_factory=list)
    call_links: list[Link] = field(default_factory=list)    # the function entries
    return_links: list[Link] = field(default_factory=list)  # the ways out


class ProbeLinks:
    """The uprobe links of one session, per interpreter file."""

    def __init__(self, program: Program, probes: frozenset[str], max_specs: int,
                 warn: Callable[[str], None], blocked: Callable[[], bool]) -> None:
        self.program = program
        self.probes = probes
        self.max_specs = max_specs
        self.warn = warn
        self.blocked = blocked  # the breaker is open: function probes stay off
        self.binaries: dict[tuple[int, int], Binary] = {}
        # executables whose entry point adopts processes (daemon): inode ->
        # (path, cookie, link), and cookie -> path for the adoption events
        self.entries: dict[tuple[int, int], tuple[str, int, Link]] = {}
        self.entry_paths: dict[int, str] = {}
        self._next_cookie = 0

    def attach_binary(self, path: str, *, any_pid: bool = False) -> Binary:
        """Attach the selected USDT probes of an interpreter file, once per file.

        With ``any_pid`` (exe mode) every process that runs the file becomes a
        target at its first probe hit, in the kernel: processes started later
        are traced from their first call without racing the controller.
        """
        try:
            st = os.stat(path)
            found = usdt.read_probes(path)
        except (OSError, usdt.ProbeError) as e:
            raise ScopeError(f"cannot read probes of {path}: {e}") from None
        key = (st.st_dev, st.st_ino)
        if key in self.binaries:
            return self.binaries[key]
        python = [p for p in found if p.provider == "python"]
        if not python:
            if "stacks" not in self.probes:
                raise ScopeError(f"{path} has no CPython USDT probes (built without "
                                 "--with-dtrace); Debian's and Fedora's /usr/bin/python3 "
                                 "have them, and --probes stacks samples any CPython")
            # sampled stacks and the scheduler need no probes
            b = Binary(path, set(), [])
            try:
                if "sched" in self.probes:
                    b.links += _open(self.program, self._gil_specs(path, any_pid))
            except AttachError as e:
                raise ScopeError(str(e)) from None
            self.binaries[key] = b
            return b
        have = {p.name for p in python}
        wanted = {n for s in self.probes for n in PROBE_SETS[s]}
        calls_mode = "none"
        if "calls" in self.probes:
            calls_mode = capabilities.of_file(path).calls_mode
            if calls_mode == "none":
                self.warn(f"{path} (CPython {procs.python_version(path) or '?'}) has no "
                          "function probes and no frame layout scope-ebpf knows: no calls "
                          "will be recorded")
        links: list[Link] = []
        other: list[_Link] = []
        calls: list[_Link] = []
        b = Binary(path, wanted & have, links, calls_mode, calls)
        try:
            entry = pyoffsets.entry_offsets(path, procs.python_version(path))
            frame_regs = (_frame_registers(python, entry)
                          if calls_mode in ("usdt", "usdt+hook") else {})
            for probe in python:
                if probe.name in wanted:
                    spec = _Link(PROGRAMS[probe.name], probe.path, probe.offset,
                                 probe.semaphore_offset, self._cookie(_spec(
                                     probe.args, any_pid, frame_regs.get(probe.offset))))
                    if probe.name == "function__entry" and entry is not None:
                        self.program.set_frame_offsets(spec.cookie, entry)
                    if probe.name in PROBE_SETS["calls"]:
                        calls.append(spec)
                    else:
                        other.append(spec)
            if "sched" in self.probes:
                other += self._gil_specs(path, any_pid)
            if calls_mode == "eval":
                calls += self._eval_specs(path, any_pid)
            elif frame_regs and entry["frame_owner"] and "calls" in self.probes:
                calls += self._eval_specs(path, any_pid, throw_only=True)
            links += _open(self.program, other)
            self.open_calls(b)
        except (AttachError, ScopeError) as e:
            close_all(links + b.call_links + b.return_links)
            raise ScopeError(str(e)) from None
        self.binaries[key] = b
        return b

    def open_calls(self, b: Binary) -> None:
        if self.blocked():
            return  # attached at the breaker's next half-open
        # Returns first: an entry without its return would leave a frame pushed for
        # good; a return without its entry is only counted (unmatched).
        b.return_links = _open(self.program, [s for s in b.call_specs
                                              if s.prog in _RETURN_PROGS])
        try:
            b.call_links = _open(self.program, [s for s in b.call_specs
                                                if s.prog not in _RETURN_PROGS])
        except BaseException:
            close_all(b.return_links)
            b.return_links = []
            raise

    def attach_calls(self) -> None:
        for b in self.binaries.values():
            if not b.call_links and not b.return_links:
                self.open_calls(b)

    def detach_calls(self) -> None:
        """Detach the function probes of every file: all entries at once (see
        close_all), then all returns, so that no entry pushes a frame after
        the return that would pop it is gone."""
        entries = [link for b in self.binaries.values() for link in b.call_links]
        returns = [link for b in self.binaries.values() for link in b.return_links]
        for b in self.binaries.values():
            b.call_links, b.return_links = [], []
        close_all(entries)
        close_all(returns)

    def _cookie(self, spec: np.void) -> int:
        cookie = self._next_cookie
        if cookie >= self.max_specs:
            raise ScopeError("too many probe locations for the spec map")
        self._next_cookie += 1
        self.program.set_spec(cookie, spec)
        return cookie

    def _gil_specs(self, path: str, any_pid: bool) -> list[_Link]:
        """Uprobes around the GIL's condition wait, so that sched names the time
        a thread waits to take the GIL; without them that time is 'sleeping'."""
        try:
            site = gil.wait_site(path)
        except usdt.ProbeError as e:
            self.warn(f"GIL waits will show as sleeping: {e}")
            return []
        spec = self._cookie(_spec((), any_pid))
        return [_Link("on_gil_wait", path, site.call, 0, spec),
                _Link("on_gil_done", path, site.after, 0, spec)]

    def _eval_specs(self, path: str, any_pid: bool, throw_only: bool = False) -> list[_Link]:
        """Plain uprobes on _PyEval_EvalFrameDefault(tstate, frame, throwflag): at its
        entry (``throw_only``: for the throw() resumes that fire no entry probe),
        and else on every way out of it too (no uretprobes: those are limited to
        64 nested frames, cost ~30 us and hold the target at traced speed until
        it exits once attached)."""
        try:
            if throw_only:
                entry, exits = disasm.eval_entry(path), ()
            else:
                sites = disasm.eval_sites(
                    path, **pyoffsets.inline_init(procs.python_version(path)))
                entry, exits = sites.entry, sites.exits
        except usdt.ProbeError as e:
            raise ScopeError(f"cannot find where to probe the eval function: {e}") from None
        frame_arg = usdt.ArgSpec(8, False, "reg", usdt.REGS.index("rsi"), 0)
        throw_arg = usdt.ArgSpec(4, False, "reg", usdt.REGS.index("rdx"), 0)
        spec = _spec((frame_arg, throw_arg), any_pid)
        if throw_only:
            spec["flags"] |= events.const("SPEC_THROW_ONLY")
        cookie = self._cookie(spec)
        frame_offsets = pyoffsets.frame_offsets(path)
        self.program.set_frame_offsets(cookie, frame_offsets)
        links = [_Link("on_eval_entry", path, entry, 0, cookie)]
        for site in exits:
            exit_spec = _spec((), any_pid)
            exit_spec["exit_cond"] = site.cond
            links.append(_Link("on_eval_return", path, site.offset, 0, self._cookie(exit_spec)))
        inline = None if throw_only else sites.inline
        if inline is not None:
            push = self._cookie(_spec((), any_pid, inline.frame_reg + 1))
            self.program.set_frame_offsets(push, frame_offsets)
            links.append(_Link("on_inline_push", path, inline.push, 0, push))
            links.append(_Link("on_inline_return", path, inline.returned, 0,
                               self._cookie(_spec((), any_pid))))
            links.append(_Link("on_inline_unwind", path, inline.unwind, 0,
                               self._cookie(_spec((frame_arg,), any_pid))))
        return links

    def attach_entry(self, exe: str, mask: int) -> bool:
        """Adopt every process that runs ``exe`` at its first instruction with
        the probe sets ``mask`` (a uprobe on the ELF entry point; see on_start),
        or, attached already, change that mask. False if it was attached already."""
        try:
            st = os.stat(exe)
        except OSError as e:
            raise ScopeError(f"cannot read {exe}: {e.strerror}") from None
        key = (st.st_dev, st.st_ino)
        spec = _spec(())
        spec["adopt_mask"] = mask
        if key in self.entries:
            self.program.set_spec(self.entries[key][1], spec)
            return False
        try:
            offset = usdt.entry_offset(exe)
        except usdt.ProbeError as e:
            raise ScopeError(str(e)) from None
        cookie = self._cookie(spec)
        try:
            link = _open(self.program, [_Link("on_start", exe, offset, 0, cookie)])[0]
        except AttachError as e:
            raise ScopeError(str(e)) from None
        self.entries[key] = (exe, cookie, link)
        self.entry_paths[cookie] = exe
        return True

    def close(self) -> None:
        """Detach everything: entry points first (no process is adopted while
        the rest goes), then function probes, entries before returns."""
        close_all([link for _path, _cookie, link in self.entries.values()])
        self.entries.clear()
        self.detach_calls()
        links = [link for b in self.binaries.values() for link in b.links]
        for b in self.binaries.values():
            b.links = []
        close_all(links)


def _frame_registers(probes: list[usdt.Probe], offsets: np.void | None) -> dict[int, int]:
    """Probe offset -> REGS index + 1 of the register holding the frame, for every
    function probe site of a build whose frames the kernel can read; empty unless
    every site has one (a frame known at entries but not at returns cannot pair)."""
    sites = [p.offset for p in probes if p.name in PROBE_SETS["calls"]]
    if offsets is None or not sites:
        return {}
    regs = disasm.frame_registers(probes[0].path, sites)
    if None in regs.values():
        return {}
    return {off: reg + 1 for off, reg in regs.items()}


def _spec(args: tuple[usdt.ArgSpec, ...], any_pid: bool = False,
          frame_reg: int | None = None) -> np.void:
    rec = np.zeros(1, events.dtypes()["probe_spec"])[0]
    rec["flags"] = events.const("SPEC_ANY_PID") if any_pid else 0
    rec["frame_reg"] = frame_reg or 0
    for i, a in enumerate(args[:3]):
        rec[f"kind{i}"] = _ARG_KIND[a.kind]
        rec[f"reg{i}"] = max(a.reg, 0)
        rec[f"size{i}"] = a.size
        rec[f"signed{i}"] = int(a.signed)
        rec[f"disp{i}"] = a.disp
    return rec
