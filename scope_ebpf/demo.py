"""``make demo``: trace the bundled workload and summarise what was recorded.

Runs ``scope-ebpf run -o scope-demo -- /usr/bin/python3.11 demo_app.py`` (the
real CLI, as a subprocess), then reads the Parquet output back with DuckDB
through :func:`scope_ebpf.query.connect` and prints a few small tables, the
same numbers a user would get with ``scope-ebpf query``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .query import connect
from .textsafe import safe

PYTHON = "/usr/bin/python3.11"  # Debian's build: it has the USDT probes
OUTPUT = Path("scope-demo")
APP = Path(__file__).resolve().parent / "demo_app.py"
SCOPE = Path(sys.executable).parent / "scope-ebpf"
TIMEOUT = 300

# Module-level code (the script, every import) is left out: it contains
# everything else. Total time counts a recursive function once per outermost
# call: a call is
# left out when an earlier call of the same function on the same thread is
# still open (calls of one function on one thread are nested or disjoint).
# Open calls (duration NULL) count as never ending, so they hide their
# recursive children but add nothing themselves.
TOP_FUNCTIONS = """
WITH c AS (
    SELECT pid, tid, function, file, line, duration_ns,
           start_ns AS t0, coalesce(end_ns, 9223372036854775807) AS t1
    FROM calls
    WHERE function IS DISTINCT FROM '<module>'
), marked AS (
    SELECT *, t0 < coalesce(max(t1) OVER (
                   PARTITION BY pid, tid, function, file, line ORDER BY t0
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS nested
    FROM c
)
SELECT function, file, line, count(*) AS calls,
       sum(duration_ns) FILTER (WHERE NOT nested) / 1e6 AS total_ms,
       avg(duration_ns) AS mean_ns
FROM marked
GROUP BY function, file, line
ORDER BY total_ms DESC NULLS LAST, calls DESC
LIMIT 5
"""

GC_BY_GENERATION = """
SELECT generation, count(*) AS n, sum(duration_ns) / 1e6 AS pause_ms,
       max(duration_ns) / 1e6 AS max_ms, sum(collected) AS collected
FROM gc GROUP BY generation ORDER BY generation
"""

LONGEST_OFF_CPU = """
SELECT tid, tid = pid AS main, state, duration_ns / 1e6 AS ms, function, file, line
FROM sched WHERE duration_ns IS NOT NULL
ORDER BY duration_ns DESC LIMIT 5
"""

OVERVIEW = """
SELECT
    (SELECT sum(calls) FROM functions) AS calls,
    (SELECT count(DISTINCT (function, file, line)) FROM calls) AS functions,
    (SELECT count(*) FROM gc) AS gcs,
    (SELECT count(*) FROM sched) AS offcpu,
    (SELECT (max(coalesce(end_ns, start_ns)) - min(start_ns)) / 1e6 FROM calls) AS span_ms
"""

EXAMPLES = (
    "SELECT function, sum(calls) AS calls, round(sum(total_ns) / sum(calls) / 1e3, 1) AS mean_us "
    "FROM functions GROUP BY 1 ORDER BY calls DESC LIMIT 10",
    "SELECT state, function, count(*) AS n, round(sum(duration_ns) / 1e6, 2) AS ms "
    "FROM sched GROUP BY ALL ORDER BY ms DESC LIMIT 10",
)


def _where(file: str | None, line: int | None) -> str:
    if file is None:
        return ""
    name = file if file.startswith("<") else os.path.basename(file)
    return f"{name}:{line}" if line is not None else name


def _duration(ns: float | None) -> str:
    """Nanoseconds in the largest unit that keeps at least one whole digit."""
    if ns is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.1f} {unit}"
    return f"{ns:.0f} ns"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _table(names: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool],
           indent: str = "  ") -> list[str]:
    """Aligned columns: numbers right-aligned, text left-aligned."""
    if not rows:
        return [indent + "(none)"]
    rows = [[safe(c) for c in r] for r in rows]  # names from the traced program
    widths = [max(len(n), *(len(r[i]) for r in rows)) for i, n in enumerate(names)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w)
                 for c, w, r in zip(cells, widths, right, strict=True)]
        return (indent + "  ".join(parts)).rstrip()

    return [line(names), *(line(r) for r in rows)]


def _shell_path(path: Path) -> str:
    """A path as the user can type it from the current directory."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)


def trace() -> subprocess.CompletedProcess:
    if OUTPUT.is_symlink() or OUTPUT.is_file():
        OUTPUT.unlink()
    elif OUTPUT.exists():
        shutil.rmtree(OUTPUT)
    # every call of this small program is kept (no sampling), so rows are exact
    cmd = [str(SCOPE), "run", "-o", str(OUTPUT), "--max-rate", "0", "--", PYTHON, str(APP)]
    print("$ " + shlex.join([_shell_path(SCOPE), *cmd[1:-1], _shell_path(APP)]), flush=True)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        msg = f"{err or ''}timed out after {TIMEOUT} s\n"
        return subprocess.CompletedProcess(cmd, 124, "", msg)


def summary(root: Path) -> list[str]:
    con = connect(root)
    try:
        calls, functions, gcs, offcpu, span_ms = con.execute(OVERVIEW).fetchone()
        top = con.execute(TOP_FUNCTIONS).fetchall()
        gc = con.execute(GC_BY_GENERATION).fetchall()
        off = con.execute(LONGEST_OFF_CPU).fetchall()
    finally:
        con.close()

    out = [
        f"{calls:,} calls of {functions:,} Python functions in {_num(span_ms)} ms, "
        f"{gcs:,} garbage collections, {offcpu:,} off-CPU intervals",
        "",
        "Top functions by total time (module code left out; recursion counted once)",
    ]
    out += _table(
        ("function", "where", "calls", "total ms", "mean"),
        [(f or "?", _where(file, line), f"{n:,}", _num(total), _duration(mean))
         for f, file, line, n, total, mean in top],
        (False, False, True, True, True),
    )
    out += ["", "Garbage collections"]
    out += _table(
        ("generation", "count", "pause ms", "longest ms", "objects freed"),
        [(str(g), f"{n:,}", _num(p, 2), _num(m, 2), f"{c or 0:,}") for g, n, p, m, c in gc],
        (True, True, True, True, True),
    )
    out += ["", "Longest off-CPU intervals"]
    out += _table(
        ("thread", "state", "ms", "Python function"),
        [(f"{tid}{' (main)' if main else ''}", state, _num(ms),
          f"{func} ({_where(file, line)})" if func else "(no Python frame)")
         for tid, main, state, ms, func, file, line in off],
        (False, False, True, False),
    )
    scope = _shell_path(SCOPE)
    out += ["", "Try:"]
    out += [f"  {scope} query {OUTPUT} {shlex.quote(sql)}" for sql in EXAMPLES]
    out.append(f"  {scope} schema    # every table and column")
    return out


def main() -> int:
    proc = trace()
    if proc.returncode != 0 or not OUTPUT.is_dir():
        sys.stderr.write(proc.stderr)
        print(f"demo: the tracer failed (exit status {proc.returncode})", file=sys.stderr)
        return proc.returncode or 1
    status = [ln for ln in proc.stderr.splitlines() if ln.startswith("scope-ebpf: traced")]
    if status:
        print(status[-1])
    print()
    print("\n".join(summary(OUTPUT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
