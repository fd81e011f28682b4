"""The daemon's configuration: one TOML file, validated in full before it is used.

Every problem is a ``ConfigError`` naming the file and the key, so a bad file
is one line at start and, on SIGHUP, a warning while the old config stays.
The commented default is ``packaging/config.toml``; keep the two in step.
"""

from __future__ import annotations

import fnmatch
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..control import budgets
from ..errors import ScopeError
from ..procs import ProcInfo
from ..redact import Redactor
from ..safefs import group_id
from ..units import parse_size

# The cheap probe sets every matching process gets unless its selector says otherwise.
DEFAULT_PROBES = frozenset({"stacks", "gc", "sched", "imports", "audit"})  # no calls
PROBE_SETS = ("calls", "gc", "sched", "imports", "audit", "stacks")
DEFAULT_MAX_RATE = 50_000       # call rows/s, when a calls selector names none
DEFAULT_BREAKER_RATE = 500_000  # probe hits/s
_HOST_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_TOP = {"host", "output", "select", "budget", "ship", "limits", "redact", "no_redact"}
_OUTPUT = {"root", "rotate_seconds", "rotate_bytes", "retain_bytes", "retain_days", "group"}
_SELECT = {"exe", "cmdline", "user", "cgroup", "probes", "max_rate", "breaker_rate",
           "process_max_rate", "process_breaker_rate"}
_BUDGET = {"max_cpu"}
_SHIP = {"endpoint", "bucket", "prefix", "region", "interval_seconds", "delete_after_upload"}
_LIMITS = {"max_targets", "max_threads"}


class ConfigError(ScopeError):
    """The config file is unreadable or invalid (one line: file, key, why)."""


@dataclass(frozen=True)
class Selector:
    """Which processes get which probe sets. Every given criterion must hold."""

    exe: str = "*"                        # glob on the executable's path
    cmdline: re.Pattern[str] | None = None  # "re:REGEX" searched, or a glob matched
    user: str | None = None               # name or numeric uid
    cgroup: str | None = None             # glob on the cgroup path
    probes: frozenset[str] = DEFAULT_PROBES
    max_rate: float = 0                   # calls: rows/s, and probe hits/s that trip
    breaker_rate: float = 0               # its breaker, for the selector as a whole ...
    process_max_rate: float = 0           # ... and for each process it selects
    process_breaker_rate: float = 0
    cmdline_text: str | None = field(default=None, compare=False)  # as written

    def describe(self) -> str:
        """What it matches, as the config says it: 'exe *python3*, cmdline re:x'."""
        parts = [f"exe {self.exe}"]
        if self.cmdline is not None:
            parts.append(f"cmdline {self.cmdline_text or 're:' + self.cmdline.pattern}")
        parts += [f"{k} {v}" for k, v in (("user", self.user), ("cgroup", self.cgroup)) if v]
        return ", ".join(parts)

    def matches(self, p: ProcInfo) -> bool:
        if not p.exe or not fnmatch.fnmatchcase(p.exe, self.exe):
            return False
        if self.cmdline is not None and not self.cmdline.search(p.cmdline or ""):
            return False
        if self.user is not None and self.user not in (p.user, str(p.uid)):
            return False
        return self.cgroup is None or fnmatch.fnmatchcase(p.cgroup or "", self.cgroup)


@dataclass(frozen=True)
class Shipping:
    """Closed files are uploaded to S3-compatible storage, then deleted locally."""

    endpoint: str | None      # e.g. http://minio:9000; None: AWS
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    interval_seconds: float = 10
    delete_after_upload: bool = True


@dataclass(frozen=True)
class Config:
    path: Path
    host: str
    root: Path
    selectors: tuple[Selector, ...]
    rotate_seconds: float = 60
    rotate_bytes: int = 64 * 1024**2
    retain_bytes: int = 10 * 1024**3
    retain_days: float = 7
    max_cpu: float = 5.0
    ship: Shipping | None = None
    max_targets: int = 4096
    max_threads: int = 16384
    group: str | None = None            # output root 0750 root:group (default root)
    redact: tuple[str, ...] = ()        # extra regexes masked in command lines
    no_redact: bool = False
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def probes(self) -> frozenset[str]:
        """Every probe set some selector asks for: what the daemon attaches."""
        out: frozenset[str] = frozenset()
        for s in self.selectors:
            out |= s.probes
        return out

    def probes_for(self, p: ProcInfo) -> frozenset[str]:
        """Probe sets for a process: the union over the selectors it matches."""
        out: frozenset[str] = frozenset()
        for s in self.selectors:
            if s.matches(p):
                out |= s.probes
        return out

    def matching(self, p: ProcInfo) -> tuple[int, ...]:
        """Indices of the selectors that match a process."""
        return tuple(i for i, s in enumerate(self.selectors) if s.matches(p))

    def exe_probes(self, exe: str) -> frozenset[str]:
        """What a process of ``exe`` may get: the union over the selectors whose
        exe glob matches (the kernel adopts it with these until we decide)."""
        out: frozenset[str] = frozenset()
        for s in self.selectors:
            if fnmatch.fnmatchcase(exe, s.exe):
                out |= s.probes
        return out

    def exe_may_match(self, exe: str) -> bool:
        """Whether any selector's exe glob matches: decided before reading /proc."""
        return any(fnmatch.fnmatchcase(exe, s.exe) for s in self.selectors)

    def _calls(self, attr: str) -> float:
        return sum(getattr(s, attr) for s in self.selectors if "calls" in s.probes)

    @property
    def max_rate(self) -> float:
        """The host's call row budget: the sum of the calls selectors' (each has
        its own in the kernel; see budgets.py)."""
        return self._calls("max_rate")

    @property
    def breaker_rate(self) -> float:
        """The host-wide breaker, the last resort that detaches: the sum too."""
        return self._calls("breaker_rate")

    def budget_rates(self) -> dict[int, budgets.Rates]:
        """Budget group (selector index + 1) -> its rates, for the calls selectors."""
        return {i + 1: budgets.Rates(s.breaker_rate, s.max_rate, s.process_breaker_rate,
                                     s.process_max_rate)
                for i, s in enumerate(self.selectors) if "calls" in s.probes}

    def budget_group(self, p: ProcInfo) -> int:
        """The budget group of a process: its first matching selector with calls."""
        for i, s in enumerate(self.selectors):
            if "calls" in s.probes and s.matches(p):
                return i + 1
        return 0


def load(path: str | Path) -> Config:
    """Read and validate ``path``; raises ConfigError with one line."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(raw, path)


def parse(raw: dict, path: Path = Path("<config>")) -> Config:
    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {why}")

    def known(table: dict, allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                name = f"{where}.{key}" if where else key
                raise fail(name, f"unknown key (known: {', '.join(sorted(allowed))})")

    def number(table: dict, key: str, where: str, default: float, minimum: float = 0) -> float:
        v = table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < minimum:
            raise fail(f"{where}.{key}", f"must be a number >= {minimum:g}, not {v!r}")
        return float(v)

    def size(table: dict, key: str, where: str, default: int) -> int:
        v = table.get(key, default)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
        if isinstance(v, str):
            try:
                return parse_size(v, f"{where}.{key}")
            except ScopeError as e:
                raise ConfigError(f"{path}: {e}") from None
        raise fail(f"{where}.{key}", f"must be a size like \"64MB\", not {v!r}")

    def table(key: str) -> dict:
        v = raw.get(key, {})
        if not isinstance(v, dict):
            raise fail(key, "must be a table")
        return v

    known(raw, _TOP, "")
    host = raw.get("host") or socket.gethostname()
    if not isinstance(host, str) or not _HOST_RE.match(host):
        raise fail("host", f"must be 1-64 letters, digits, '.', '_' or '-' (it names a "
                           f"partition directory), not {host!r}")
    out = table("output")
    known(out, _OUTPUT, "output")
    root = out.get("root", "/var/lib/scope-ebpf")
    if not isinstance(root, str) or not os.path.isabs(root):
        raise fail("output.root", f"must be an absolute path, not {root!r}")
    group = out.get("group")
    if group is not None:
        if not isinstance(group, str | int) or isinstance(group, bool):
            raise fail("output.group", "must be a group name or gid")
        group = str(group)
        try:
            group_id(group)
        except ScopeError as e:
            raise fail("output.group", str(e)) from None
    redact = raw.get("redact", [])
    if not isinstance(redact, list) or not all(isinstance(r, str) for r in redact):
        raise fail("redact", "must be a list of regular expressions")
    try:
        Redactor(redact)
    except ScopeError as e:
        raise fail("redact", str(e).removeprefix("--redact: ")) from None
    no_redact = raw.get("no_redact", False)
    if not isinstance(no_redact, bool):
        raise fail("no_redact", "must be true or false")
    budget = table("budget")
    known(budget, _BUDGET, "budget")
    limits = table("limits")
    known(limits, _LIMITS, "limits")

    sels = raw.get("select", [])
    if not isinstance(sels, list) or not sels:
        raise fail("select", "at least one [[select]] table is needed (which processes to trace)")
    if len(sels) >= budgets.MAX_GROUPS:  # each may be a budget group of its own
        raise fail("select", f"at most {budgets.MAX_GROUPS - 1} [[select]] tables")
    selectors = []
    for i, s in enumerate(sels):
        where = f"select[{i}]"
        if not isinstance(s, dict):
            raise fail(where, "must be a table")
        known(s, _SELECT, where)
        selectors.append(_selector(s, where, fail, number))

    ship = None
    if "ship" in raw:
        sh = table("ship")
        known(sh, _SHIP, "ship")
        if not isinstance(sh.get("bucket"), str) or not sh["bucket"]:
            raise fail("ship.bucket", "is required to ship files")
        for key in ("endpoint", "prefix", "region"):
            if key in sh and not isinstance(sh[key], str):
                raise fail(f"ship.{key}", "must be a string")
        ship = Shipping(sh.get("endpoint"), sh["bucket"], sh.get("prefix", "").strip("/"),
                        sh.get("region", "us-east-1"),
                        number(sh, "interval_seconds", "ship", 10, 0.1),
                        bool(sh.get("delete_after_upload", True)))

    return Config(
        path=path, host=host, root=Path(root), selectors=tuple(selectors),
        rotate_seconds=number(out, "rotate_seconds", "output", 60, 1),
        rotate_bytes=size(out, "rotate_bytes", "output", 64 * 1024**2),
        retain_bytes=size(out, "retain_bytes", "output", 10 * 1024**3),
        retain_days=number(out, "retain_days", "output", 7),
        max_cpu=number(budget, "max_cpu", "budget", 5.0),
        ship=ship,
        max_targets=int(number(limits, "max_targets", "limits", 4096, 16)),
        max_threads=int(number(limits, "max_threads", "limits", 16384, 64)),
        group=group, redact=tuple(redact), no_redact=no_redact,
        raw=raw,
    )


def _selector(s: dict, where: str, fail, number) -> Selector:
    exe = s.get("exe", "*")
    if not isinstance(exe, str) or not exe:
        raise fail(f"{where}.exe", "must be a glob string")
    cmdline = None
    if "cmdline" in s:
        text = s["cmdline"]
        if not isinstance(text, str):
            raise fail(f"{where}.cmdline", "must be a string: \"re:REGEX\" or a glob")
        try:
            cmdline = (re.compile(text[3:]) if text.startswith("re:")
                       else re.compile(fnmatch.translate(text)))
        except re.error as e:
            raise fail(f"{where}.cmdline", f"bad regular expression {text[3:]!r}: {e}") from None
    user = s.get("user")
    if user is not None:
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)
        if not isinstance(user, str):
            raise fail(f"{where}.user", "must be a user name or uid")
    cgroup = s.get("cgroup")
    if cgroup is not None and not isinstance(cgroup, str):
        raise fail(f"{where}.cgroup", "must be a glob string")
    probes = s.get("probes", sorted(DEFAULT_PROBES))
    if not isinstance(probes, list) or not probes or not all(isinstance(p, str) for p in probes):
        raise fail(f"{where}.probes", f"must be a list of names from {', '.join(PROBE_SETS)}")
    unknown = set(probes) - set(PROBE_SETS)
    if unknown:
        raise fail(f"{where}.probes", f"unknown probe set {', '.join(sorted(unknown))} "
                                      f"(choose from {', '.join(PROBE_SETS)})")
    calls = "calls" in probes
    max_rate = number(s, "max_rate", where, DEFAULT_MAX_RATE if calls else 0, 1 if calls else 0)
    breaker = number(s, "breaker_rate", where, DEFAULT_BREAKER_RATE if calls else 0,
                     1 if calls else 0)
    pmax = number(s, "process_max_rate", where, max_rate, 1 if calls else 0)
    pbreaker = number(s, "process_breaker_rate", where, breaker, 1 if calls else 0)
    return Selector(exe, cmdline, user, cgroup, frozenset(probes), max_rate, breaker,
                    pmax, pbreaker, s.get("cmdline"))
