"""What a running daemon traces now: the file it keeps, and `daemon --status`.

The daemon rewrites ``/run/scope-ebpf/status-<hash of its output root>.json``
(root only, by rename; outside the output tree, which tools walk) every few
seconds and removes it when it stops: its pid, config, processes per selector, row rates over
the last interval, losses, breaker, output size, shipping, and its own CPU and
RSS. ``daemon --status`` reads it (the config names the root) and prints it;
a file whose daemon is gone, or that stopped being rewritten, is said to be so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import ScopeError
from ..units import human_bytes

RUN_DIR = Path(os.environ.get("SCOPE_EBPF_RUN_DIR", "/run/scope-ebpf"))
STALE_S = 30.0     # a status older than this: the daemon is stuck or gone


def path(root: Path) -> Path:
    """The status file of the daemon writing to ``root`` (one per output root)."""
    key = hashlib.sha256(str(Path(root).absolute()).encode()).hexdigest()[:16]
    return RUN_DIR / f"status-{key}.json"


def write(root: Path, status: dict[str, Any]) -> None:
    """Replace the status file (0600; never a half-written one)."""
    final = path(root)
    RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = RUN_DIR.lstat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not RUN_DIR.is_dir():
        raise OSError(f"{RUN_DIR} is not a directory only we can write")
    tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(status, f)
    os.replace(tmp, final)


def remove(root: Path) -> None:
    """At a clean stop: no status, no daemon."""
    try:
        path(root).unlink()
    except OSError:
        pass


def read(root: Path) -> dict[str, Any]:
    """The last status; ScopeError (one line) if there is none or its daemon is gone."""
    p = path(root)
    try:
        with open(p) as f:
            st = json.load(f)
    except FileNotFoundError:
        raise ScopeError(f"no running daemon writes to {root} (no status in {RUN_DIR})"
                         ) from None
    except (OSError, ValueError) as e:
        raise ScopeError(f"cannot read {p}: {e}") from None
    if not _alive(st.get("pid")):
        raise ScopeError(f"no running daemon writes to {root}: its last status is from pid "
                         f"{st.get('pid')}, which is gone ({_ago(st.get('updated'))})")
    return st


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"scope-ebpf" in cmdline or b"scope_ebpf" in cmdline


def _ago(ts: object) -> str:
    if not isinstance(ts, (int, float)):
        return "time unknown"
    s = max(time.time() - ts, 0)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else \
        f"{s / 3600:.1f} h ago"


def text(st: dict[str, Any]) -> str:
    """The status for a terminal."""
    up = time.time() - st["started"]
    lines = [f"daemon pid {st['pid']}, up {_span(up)}, config {st['config']}, host "
             f"{st['host']}, output {st['root']}"]
    age = time.time() - st["updated"]
    if age > STALE_S:
        lines.append(f"warning: this status is {age:.0f} s old: the daemon is not updating it")
    n = st["processes"]
    lines.append(f"tracing {n} process{'es' * (n != 1)} (probe sets: {st['probes']})")
    for sel in st["selectors"]:
        k = sel["processes"]
        lines.append(f"  selector {sel['index']} ({sel['match']}): {k} "
                     f"process{'es' * (k != 1)}, {','.join(sel['probes'])}")
    ad = st.get("adoption") or {}
    lines.append(f"adopted at exec: {ad.get('adopted', 0):,} processes, "
                 f"{ad.get('confirmed', 0):,} confirmed, {ad.get('ignored', 0):,} ignored "
                 f"({ad.get('discarded_rows', 0):,} rows discarded); "
                 f"{len(st.get('watched') or ())} interpreter file(s) watched")
    maps = ", ".join(f"{k} {n:,}/{m:,}" for k, (n, m) in (st.get("maps") or {}).items())
    if maps:
        lines.append(f"kernel maps: {maps}")
    rates = ", ".join(f"{t} {r:,.0f}" for t, r in st["rates"].items() if r) or "none"
    lines.append(f"rows/s over the last {st['interval_s']:.0f} s: {rates}")
    lost = ", ".join(f"{k} {v:,}" for k, v in st["lost"].items() if v) or "none"
    lines.append(f"lost: {lost}")
    b = st["breaker"]
    line = f"breaker: {b['state']} ({b['trips']} trip{'s' * (b['trips'] != 1)})"
    bu = st.get("budgets")
    if bu:
        by = ", ".join(f"selector {g} {t}" for g, t in bu["trips_by_selector"].items() if t)
        line += (f"; selector budgets: {bu['trips']:,} trips ({by or 'none'}), "
                 f"{bu['skipped']:,} hits skipped, {bu['sampled']:,} rows sampled")
    lines.append(line)
    out = f"output: {human_bytes(st['output_bytes'])} in {st['parts']:,} parts"
    if st.get("ship") is not None:
        sh = st["ship"]
        out += (f"; shipped {sh['files']:,} files ({human_bytes(sh['bytes'])}), "
                f"{sh['failures']:,} failures, last upload {_ago(sh['last_upload'])}"
                if sh["files"] else f"; nothing shipped yet ({sh['failures']:,} failures)")
    lines.append(out)
    lines.append(f"daemon: CPU {st['cpu_percent']:.1f} % of a core, RSS "
                 f"{human_bytes(st['rss_bytes'])}, {st['reloads']} reload(s); status "
                 f"written {_ago(st['updated'])}")
    return "\n".join(lines)


def _span(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
