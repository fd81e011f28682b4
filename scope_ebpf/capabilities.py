"""What an interpreter file can be traced with, and how: one definition of the
tracing modes that ``run``, ``trace`` and ``scope-ebpf probes`` all use.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import procs, usdt
from .interpreters import offsets as pyoffsets

# Probe -> the table it feeds.
PROBES = {
    "function__entry": "calls",
    "function__return": "calls",
    "gc__start": "gc",
    "gc__done": "gc",
    "import__find__load__start": "imports",
    "import__find__load__done": "imports",
    "audit": "audit",
}

# Exit codes of `scope-ebpf probes`, for scripts.
EXIT_CALLS = 0      # function calls will be traced
EXIT_NO_CALLS = 3   # probes present, but calls will not appear in this mode
EXIT_NO_PROBES = 4  # not a CPython with USDT probes


@dataclass
class Capabilities:
    path: str
    version: str | None
    present: dict[str, int]   # probe name -> number of locations
    calls_mode: str           # "usdt", "usdt+hook", "eval" or "none"
    cpython: bool = True      # a CPython interpreter or libpython (exports _PyRuntime)

    @property
    def has_probes(self) -> bool:
        return bool(self.present)

    def fires(self, probe: str, launched: bool) -> tuple[bool, str]:
        """Whether a probe fires for a process (launched by `run`, or attached to)."""
        if probe not in self.present:
            return False, "not in this build"
        if probe.startswith("function__") and self.version == "3.11":
            if probe == "function__return":
                return True, "fires always; entries need a profile/trace hook"
            if launched:
                return True, "fires: `run` installs a profile hook (sys.setprofile(slice))"
            return False, "fires only while the process has a profile/trace hook (3.11)"
        return True, "fires"

    def calls(self, launched: bool) -> tuple[bool, str]:
        """Whether calls rows will appear, and the mode that produces them."""
        if self.calls_mode == "usdt":
            return True, "function__entry/return probes"
        if self.calls_mode == "usdt+hook":
            if launched:
                return True, "function probes under the profile hook `run` installs"
            # Whether a running process has a hook is not known from outside: say when
            # calls appear, not that they will not.
            return False, ("function probes fire only while the process has a profile or "
                           "trace hook set (a profiler, debugger or coverage tool); without "
                           "one, trace it from its start with `scope-ebpf run`")
        if self.calls_mode == "eval":
            if launched:
                return True, ("perf trampoline (PYTHONPERFSUPPORT=1) + uprobes on "
                              "_PyEval_EvalFrameDefault, frames read via _Py_DebugOffsets")
            how = "`scope-ebpf run` turns it on at start-up"
            if _minor(self.version) >= 14:
                how += ", `scope-ebpf trace --activate` in a running process"
            return False, ("no function probes in this version: calls need the perf "
                           "trampoline, on only if the process started with "
                           f"PYTHONPERFSUPPORT=1 or -X perf; {how}")
        return False, "no function probes and no known frame layout in this version"


def of_file(path: str) -> Capabilities:
    """Capabilities of an interpreter (or libpython) file. Raises usdt.ProbeError."""
    present: dict[str, int] = {}
    for p in usdt.read_probes(path):
        if p.provider == "python":
            present[p.name] = present.get(p.name, 0) + 1
    version = procs.python_version(path)
    cpython = bool(present) or _exports(path, "_PyRuntime")
    if not present:
        mode = "none"
    elif "function__entry" in present:
        mode = "usdt+hook" if version == "3.11" else "usdt"
    elif pyoffsets.supported(version) and _exports_eval(path):
        mode = "eval"
    else:
        mode = "none"
    return Capabilities(path, version, present, mode, cpython)


def _minor(version: str | None) -> int:
    """11 for '3.11'; 0 when unknown."""
    try:
        return int(version.split(".")[1]) if version else 0
    except (IndexError, ValueError):
        return 0


def _exports(path: str, *names: str) -> bool:
    try:
        for name in names:
            usdt.find_symbol(path, name)
    except usdt.ProbeError:
        return False
    return True


def _exports_eval(path: str) -> bool:
    return _exports(path, "_PyEval_EvalFrameDefault", "_PyRuntime")
