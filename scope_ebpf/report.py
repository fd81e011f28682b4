"""``scope-ebpf report``: the analysis as terminal tables, a self-contained HTML
page (inline CSS, JS and SVG; no network fetches), or flame graph exports in
the folded and speedscope formats. The numbers come from analysis.py."""

from __future__ import annotations

import html
import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .analysis import Analysis, Finding, window_ns
from .analysis import ns_text as _ns
from .query import format_table
from .textsafe import safe

TOTAL_RULE = ("total: a function's wall time, call to return, summed over its calls; a call "
              "made inside another call of the same function (recursion) is not counted "
              "again, so a recursive function's total is its outermost calls'")


def _top_rows(a: Analysis) -> tuple[list[str], list[list]]:
    names = ["function", "where", "pid", "calls", "total", "mean", "p50", "p90", "p99", "max"]
    return names, [[r["function"], a.where(r.get("file"), r.get("line")), r["pid"],
                    f"{int(r['calls']):,}", _ns(r["total_ns"]), _ns(r["mean_ns"]),
                    _ns(r["p50_ns"]), _ns(r["p90_ns"]), _ns(r["p99_ns"]), _ns(r["max_ns"])]
                   for r in a.top]


def _self_rows(a: Analysis, rows: list[dict] | None = None) -> tuple[list[str], list[list]]:
    """Self time per function: the exact rows' figures, and the samples' estimate
    of on-CPU self time beside them where the stacks set ran (with no call rows,
    the samples' figures alone)."""
    names = ["function", "where", "pid", "calls", "self on-CPU", "self off-CPU",
             "of which GIL", "self wall", "total"]
    rows = a.self_top if rows is None else rows
    sampled = bool(a.sampled) and any("sampled_cpu_ns" in r for r in rows)
    if sampled:
        names.insert(5, "sampled on-CPU")
    out = []
    for r in rows:
        row = [r["function"], a.where(r.get("file"), r.get("line")), r["pid"],
               "-" if r["calls"] is None else f"{int(r['calls']):,}", _ns(r["self_cpu_ns"]),
               _ns(r["self_offcpu_ns"]), _ns(r["self_gil_ns"]), _ns(r["self_ns"]),
               _ns(r["total_ns"])]
        if sampled:
            row.insert(5, _ns(r.get("sampled_cpu_ns")))
        out.append(row)
    return names, out


def _hot_source(a: Analysis) -> str:
    """Where the hot code table's figures come from, when not only the exact rows."""
    if not a.sampled or not a.self_top:
        return ""
    if a.self_top[0]["calls"] is None:
        return f" (from stack samples: {a.sample_hz} a second, no call rows)"
    return " (exact rows; 'sampled on-CPU' from stack samples, free of probe overhead)"


def _gc_rows(a: Analysis) -> tuple[list[str], list[list]]:
    names = ["generation", "collections", "total pause", "median", "longest", "collected"]
    return names, [[r["generation"], r["collections"], _ns(r["total_ns"]), _ns(r["p50_ns"]),
                    _ns(r["max_ns"]), r["collected"]] for r in a.gc_by_gen]


def _longest_rows(a: Analysis) -> tuple[list[str], list[list]]:
    names = ["start", "pid", "tid", "gen", "pause", "collected", "running"]
    return names, [[str(r["start"]), r["pid"], r["tid"], r["generation"], _ns(r["duration_ns"]),
                    r["collected"],
                    a.label(r["running"], r.get("running_file"), r.get("running_line"))
                    if r.get("running") else ""] for r in a.gc_longest]


def _trigger_rows(a: Analysis) -> tuple[list[str], list[list]]:
    names = ["running when GC started", "collections", "total pause", "max generation"]
    return names, [[a.label(r["function"], r["file"], r["line"]) if r.get("file") else
                    r["function"], r["collections"], _ns(r["total_ns"]), r["max_generation"]]
                   for r in a.gc_triggers]


def _gil_rows(a: Analysis) -> tuple[list[str], list[list]]:
    names = ["thread", "waits", "waiting for the GIL", "longest"]
    return names, [[thread_label(a, r["pid"], r["tid"]), f"{r['intervals']:,}",
                    _ns(r["total_ns"]), _ns(r["max_ns"])] for r in a.gil]


def _offcpu_rows(a: Analysis) -> tuple[list[str], list[list]]:
    names = ["function", "where", "state", "intervals", "off-CPU", "longest"]
    return names, [[r["function"], a.where(r["file"], r.get("line")) if r.get("file") else "",
                    r["state"], r["intervals"], _ns(r["total_ns"]), _ns(r["max_ns"])]
                   for r in a.offcpu]


def text(a: Analysis) -> str:
    """The terminal summary. Names in it come from the traced program: tables
    (format_table) and every other line show control characters escaped."""
    out: list[str] = []

    def section(title: str, table: tuple[list[str], list[list]] | None = None,
                lines: Sequence[str] = ()) -> None:
        out.append(f"== {title} ==")
        if table is not None and table[1]:
            out.append(format_table(*table).rstrip("\n"))
        out.extend(safe(line) for line in lines)
        out.append("")

    counts = ", ".join(f"{t} {n:,}" for t, n in a.tables.items() if n)
    if a.notes:  # several sessions: one span across them would mislead
        out += [f"note: {a.notes[0]}"] + [f"  {n}" for n in a.notes[1:]]
        out.append(f"tables: {counts}\n")
    elif a.span_ns:
        span = (a.span_ns[1] - a.span_ns[0])
        out.append(f"trace: {_ns(span)} | {counts}\n")
    for m in a.lost:  # first: what the figures below lack
        out.append(safe(f"warning: {m}"))
    for m in a.missing:
        out.append(safe(f"missing: {m}"))
    if a.missing or a.lost:
        out.append("")
    if a.top:
        out.append(textwrap.fill(TOTAL_RULE + ".", 100))
    if a.path_prefix:
        out.append(safe(f"files: relative to {a.path_prefix}"))
    if a.top or a.path_prefix:
        out.append("")
    if a.top:
        section("top functions by total time (exact counts)", _top_rows(a))
    if a.self_top:
        section("hot code: top functions by on-CPU self time" + _hot_source(a), _self_rows(a))
    if a.waiting:
        section("waiting code: top functions by off-CPU self time (sleep, I/O, locks, "
                "the GIL, preemption)", _self_rows(a, a.waiting))
    if a.gil:
        section("GIL waits per thread", _gil_rows(a))
    if a.gc_by_gen:
        section("garbage collection", _gc_rows(a))
        section("longest GC pauses", _longest_rows(a))
    if a.gc_triggers:
        section("functions running when collections started", _trigger_rows(a))
    if a.offcpu:
        rq = a.runq
        section("off-CPU time", _offcpu_rows(a), [
            f"run-queue latency: p50 {_ns(rq['p50_ns'])}, p90 {_ns(rq['p90_ns'])}, "
            f"p99 {_ns(rq['p99_ns'])}, max {_ns(rq['max_ns'])} over {rq['intervals']:,} "
            "wake-ups"])
    section("anomalies", None, [f"- [{f.kind}] {f.text}" for f in a.findings] or ["none found"])
    section("recommendations", None,
            [line for r in a.recommendations
             for line in (f"- {r['title']}", f"    because {r['evidence']}")] or ["none"])
    return "\n".join(out)


# -- exports ----------------------------------------------------------------

def default_graph(a: Analysis) -> str:
    """The graph an export shows unless told: the exact one where there are call
    rows, else the samples' CPU graph, else the off-CPU one."""
    return "calls" if a.thread_stacks else "cpu" if a.cpu_stacks else \
        "offcpu" if a.offcpu_stacks else "calls"


def graph_stacks(a: Analysis, graph: str):
    """The paths and weights of a graph: the exact calls', the samples' or the
    sched stacks'."""
    return {"calls": a.thread_stacks, "cpu": a.cpu_stacks}.get(graph, a.offcpu_stacks)


def folded_text(a: Analysis, graph: str = "calls") -> str:
    """Brendan Gregg's folded format: one "frame;frame;frame weight" per line
    (a line break or control character in a name is shown escaped). ``graph``:
    the exact calls' on-CPU self time, or the samples' CPU time ("cpu") or the
    sched stacks' off-CPU time ("offcpu"), weights in ns either way."""
    if graph == "calls":
        return "".join(f"{safe(stack)} {w}\n" for stack, w in a.folded)
    stacks = graph_stacks(a, graph)
    multi = len({pid for (pid, _tid), _paths in stacks}) > 1
    total: dict[str, int] = {}
    for (pid, _tid), paths in stacks:
        for path, w in paths:
            names = [f"pid {pid}"] if multi else []
            names += [_folded_frame(f) for f in path]
            key = ";".join(names)
            total[key] = total.get(key, 0) + w
    return "".join(f"{safe(k)} {w}\n" for k, w in sorted(total.items()) if w > 0)


def _folded_frame(f: tuple) -> str:
    fn, file, line = f
    fn = (fn or "?").replace(";", ":")
    if file is None:  # a state ("off-CPU: sleeping") or a marker ("(no stack)")
        return fn
    return f"{fn} ({file.replace(';', ':')}:{'?' if line is None else line})"


def speedscope_note(a: Analysis) -> str | None:
    """Why the speedscope export is not evented (None when it is)."""
    if a.sampled_rows:
        return (f"speedscope: sampled profiles of on-CPU self time, not evented: "
                f"{a.sampled_rows:,} call rows stand for several calls each (weight > 1), "
                "so the calls' exact order in time is not known")
    if not a.thread_calls:
        return "speedscope: no call rows were read"
    return None


def speedscope(a: Analysis, name: str, graph: str = "calls") -> str:
    """speedscope's file format, one profile per thread named after it, frames
    with file and line. Unsampled (every row weight 1, and analyze(exact_rows=True)),
    `evented` profiles of wall time: each call opens at its start and closes at
    its end, times from the trace's start, as viztracer's trace shows them. With
    sampled rows, `sampled` profiles (as py-spy writes them) of on-CPU self time
    on each row's path; speedscope_note says why. ``graph`` "cpu" or "offcpu":
    `sampled` profiles of the samples' CPU time or the sched stacks' off-CPU
    time, per thread."""
    frames: dict[tuple, int] = {}
    profiles = []
    if graph == "calls" and speedscope_note(a) is None:
        end = a.span_ns[1] - a.span_ns[0] if a.span_ns else 0
        for (pid, tid), calls in a.thread_calls:
            profiles.append({"type": "evented", "name": thread_label(a, pid, tid),
                             "unit": "nanoseconds", "startValue": 0, "endValue": end,
                             "events": _events(calls, frames)})
    else:
        for (pid, tid), stacks in graph_stacks(a, graph):
            samples = [[frames.setdefault(f, len(frames)) for f in path] for path, _w in stacks]
            weights = [w for _path, w in stacks]
            profiles.append({"type": "sampled", "name": thread_label(a, pid, tid),
                             "unit": "nanoseconds", "startValue": 0, "endValue": sum(weights),
                             "samples": samples, "weights": weights})
    return json.dumps({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": [{"name": fn, **({"file": file} if file else {}),
                               **({"line": line} if line is not None else {})}
                              for fn, file, line in frames]},
        "profiles": profiles,
        "name": name, "exporter": f"scope-ebpf {__version__}", "activeProfileIndex": 0,
    })


def _events(calls: list[tuple], frames: dict[tuple, int]) -> list[dict]:
    """Open and close events of one thread's calls (start, end, depth, function,
    file, line; by start, callers first): balanced and in time order. A call
    open while the next one starts encloses it; one that would outlast its
    caller (never seen, but a clock could) is cut at its caller's end."""
    out: list[dict] = []
    open_: list[tuple[int, int]] = []  # (end, frame) of the enclosing calls

    def close_until(t: int) -> None:
        while open_ and open_[-1][0] <= t:
            end, frame = open_.pop()
            out.append({"type": "C", "frame": frame, "at": end})

    for start, end, _depth, fn, file, line in calls:
        close_until(start)
        frame = frames.setdefault((fn or "?", file, line), len(frames))
        if open_:
            end = min(end, open_[-1][0])
        out.append({"type": "O", "frame": frame, "at": start})
        open_.append((end, frame))
    close_until(math.inf)
    return out


# -- HTML -------------------------------------------------------------------

def _table(table: tuple[list[str], list[list]], cls: str = "") -> str:
    names, rows = table
    if not rows:
        return "<p class=none>none</p>"
    head = "".join(f"<th>{html.escape(str(n))}</th>" for n in names)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _step(span: float, target: int = 6) -> float:
    """A round tick step (1, 2 or 5 x 10^k) giving about ``target`` ticks."""
    raw = max(span, 1) / target
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if raw <= m * mag)


def _tick_text(ns: float, step: float) -> str:
    """A tick's label in the unit its step calls for: "250 ms", "1.5 s"."""
    for unit, size in (("s", 1e9), ("ms", 1e6), ("us", 1e3), ("ns", 1)):
        if step >= size / 10 or unit == "ns":
            digits = max(0, -math.floor(math.log10(step / size) + 1e-9))
            return f"{ns / size:.{digits}f} {unit}"
    raise AssertionError("unreachable")


def _time_axis(span: float, width: float, y: float, title: str) -> str:
    """An x axis from 0 to span ns over width px at y: line, ticks, labels, title."""
    step = _step(span)
    parts = [f"<line class=axis x1='0' x2='{width}' y1='{y}' y2='{y}'/>"]
    t = 0.0
    while t <= span + step / 1e6:
        x = t / span * width if span else 0
        anchor = "start" if x < 20 else "end" if x > width - 20 else "middle"
        parts.append(f"<g class=tick><line x1='{x:.1f}' x2='{x:.1f}' y1='{y}' y2='{y + 4}'/>"
                     f"<text x='{x:.1f}' y='{y + 15}' text-anchor='{anchor}'>"
                     f"{_tick_text(t, step)}</text></g>")
        t += step
    parts.append(f"<text class=axis-title x='{width / 2}' y='{y + 29}' "
                 f"text-anchor='middle'>{html.escape(title)}</text>")
    return "".join(parts)


_GEN_COLORS = ("#4c78a8", "#f58518", "#e45756")


def _gc_chart(a: Analysis) -> str:
    """Pause time per window and generation: stacked bars, inline SVG, with a
    time axis (since the trace's start) and a pause axis."""
    if not a.gc_series or not a.span_ns:
        return ""
    span = max(1, a.span_ns[1] - a.span_ns[0])
    win_ns = window_ns(a.span_ns)
    per: dict[int, list[int]] = {}
    for r in a.gc_series:
        per.setdefault(r["win"], [0, 0, 0])[min(r["generation"], 2)] += r["total_ns"]
    peak = max(sum(v) for v in per.values()) or 1
    step = _step(peak, 3)
    top = math.ceil(peak / step) * step
    left, w, h = 60, 700, 150
    bars = []
    for win, gens in per.items():
        y = h
        x = left + win * win_ns / span * w
        bw = max(min(win_ns, span - win * win_ns) / span * w - 1, 1)
        for g, ns in enumerate(gens):
            if not ns:
                continue
            bh = ns / top * h
            y -= bh
            bars.append(f"<rect x='{x:.1f}' y='{y + 10:.1f}' width='{bw:.1f}' "
                        f"height='{bh:.1f}' fill='{_GEN_COLORS[g]}'><title>"
                        f"+{win * win_ns / 1e9:.1f} s to +{(win + 1) * win_ns / 1e9:.1f} s: "
                        f"gen {g} {html.escape(_ns(ns))}</title></rect>")
    yaxis = [f"<line class=axis x1='{left}' x2='{left}' y1='10' y2='{h + 10}'/>"]
    v = 0.0
    while v <= top + step / 1e6:
        y = h + 10 - v / top * h
        yaxis.append(f"<g class=tick><line x1='{left - 4}' x2='{left}' y1='{y:.1f}' "
                     f"y2='{y:.1f}'/><text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>"
                     f"{_tick_text(v, step)}</text></g>")
        v += step
    yaxis.append(f"<text class=axis-title transform='translate(12 {h / 2 + 10}) rotate(-90)' "
                 f"text-anchor='middle'>GC pause per {_tick_text(win_ns, win_ns)}</text>")
    legend = " ".join(f"<tspan fill='{c}'>&#9632; gen {g}</tspan>"
                      for g, c in enumerate(_GEN_COLORS))
    return (f"<svg class=chart width='{left + w + 10}' height='{h + 62}' "
            f"viewBox='0 0 {left + w + 10} {h + 62}'>{''.join(bars)}{''.join(yaxis)}"
            f"<g transform='translate({left} 0)'>"
            f"{_time_axis(span, w, h + 10, 'time since the start of the trace')}</g>"
            f"<text x='{left + w}' y='10' text-anchor='end' font-size='12'>{legend}</text>"
            "</svg>")


_KIND_COLORS = {"call": "#6baed6", "gc": "#e45756", "off-cpu sleeping": "#bbbbbb",
                "off-cpu io": "#9467bd", "off-cpu preempted": "#ff9896"}


def _timeline(a: Analysis) -> str:
    if not a.timeline or not a.span_ns:
        return "<p class=none>nothing to show</p>"
    span = max(1, a.span_ns[1] - a.span_ns[0])
    lanes = sorted({(r["pid"], r["tid"]) for r in a.timeline})[:24]
    lane_of = {k: i for i, k in enumerate(lanes)}
    W, lane_h, row = 900, 64, 12
    rects = []
    for r in a.timeline:
        lane = lane_of.get((r["pid"], r["tid"]))
        if lane is None:
            continue
        x = r["start"] / span * W
        width = max(r["dur"] / span * W, 0.5)
        kind = r["kind"]
        level = r["level"] if kind == "call" else 4
        y = lane * lane_h + 14 + level * row
        color = _KIND_COLORS.get(kind, "#999")
        rects.append(f"<rect x='{x:.2f}' y='{y}' width='{width:.2f}' height='{row - 1}' "
                     f"fill='{color}'><title>{html.escape(kind)} {html.escape(r['label'])} "
                     f"{html.escape(_ns(r['dur']))} at +{r['start'] / 1e6:.1f} ms</title></rect>")
    labels = "".join(f"<text x='0' y='{i * lane_h + 10}' font-size='11'>"
                     f"{html.escape(thread_label(a, p, t))}</text>"
                     for (p, t), i in lane_of.items())
    height = len(lanes) * lane_h
    legend = " ".join(f"<span style='color:{c}'>&#9632; {html.escape(k)}</span>"
                      for k, c in _KIND_COLORS.items())
    return (f"<div class=legend>{legend}</div><svg class=timeline width='{W}' "
            f"height='{height + 36}' viewBox='0 0 {W} {height + 36}'>{labels}{''.join(rects)}"
            f"{_time_axis(span, W, height + 2, 'time since the start of the trace')}</svg>")


def thread_label(a: Analysis, pid: int, tid: int) -> str:
    """"worker-1 (tid 1234)" where the thread's name is known (threads table)."""
    name = a.thread_names.get((pid, tid))
    return f"{name} (tid {tid})" if name else f"pid {pid} tid {tid}"


def _findings(findings: list[Finding]) -> str:
    if not findings:
        return "<p class=none>none found</p>"
    items = "".join(
        f"<li id='{f.anchor}'><b>{html.escape(f.kind)}</b> {html.escape(f.text)} "
        f"<details><summary>rows behind it</summary><code>scope-ebpf query DIR "
        f"&quot;{html.escape(f.sql)}&quot;</code></details></li>" for f in findings)
    return f"<ul class=findings>{items}</ul>"


_ASSETS = Path(__file__).resolve().parent / "assets"


def _asset(name: str) -> str:
    """Inlined into the page: it must open with no network access."""
    return (_ASSETS / name).read_text()


class _Frames:
    """The page's frames, shared by the flame graph and the time-ordered view:
    [function, file, line, label] each, by index."""

    def __init__(self, a: Analysis) -> None:
        self.a = a
        self.index: dict[tuple, int] = {}
        self.rows: list[list] = []

    def __call__(self, fn: str | None, file: str | None, line: int | None) -> int:
        key = (fn or "?", file, line)
        if key not in self.index:
            self.index[key] = len(self.rows)
            label = key[0] if file is None and line is None else self.a.label(*key)
            self.rows.append([key[0], file, line, label])
        return self.index[key]


def page_data(a: Analysis) -> dict:
    """What the page's scripts draw: frames, the flame graph per thread with
    each function's total (the tables' figure, as text too), the time-ordered
    view's calls."""
    frame = _Frames(a)
    threads = [[pid, tid, thread_label(a, pid, tid),
                [[[frame(*f) for f in path], w] for path, w in stacks]]
               for (pid, tid), stacks in a.thread_stacks]
    totals = {}
    for (pid, fn, file, line), t in a.totals.items():
        i = frame.index.get((fn, file, line))
        if i is not None:
            totals[f"{pid}:{i}"] = [t["calls"], t["total_ns"], _ns(t["total_ns"]),
                                    t["total_cpu_ns"], _ns(t["total_cpu_ns"])]
    def graph(stacks: list) -> dict | None:
        if not stacks:
            return None
        ts = [[pid, tid, thread_label(a, pid, tid),
               [[[frame(*f) for f in path], w] for path, w in paths]]
              for (pid, tid), paths in stacks]
        return {"threads": ts, "totals": totals, "multi": len({t[0] for t in ts}) > 1}

    lanes: dict[tuple[int, int], int] = {}
    calls = []
    for r in a.trace_calls:
        lane = lanes.setdefault((r["pid"], r["tid"]), len(lanes))
        calls.append([lane, r["start"], r["dur"], r["level"],
                      frame(r["function"], r["file"], r["line"]), r["weight"], int(r["open"])])
    span = a.span_ns[1] - a.span_ns[0] if a.span_ns else 0
    return {
        "frames": frame.rows,
        "flame": {"threads": threads, "totals": totals,
                  "multi": len({t[0] for t in threads}) > 1},
        "cpuflame": graph(a.cpu_stacks),
        "offflame": graph(a.offcpu_stacks),
        "trace": {"span": span, "calls": calls,
                  "lanes": [thread_label(a, p, t) for p, t in lanes]},
    }


def _trace_note(a: Analysis) -> str:
    """What the time-ordered view shows, and what it leaves out."""
    i = a.trace_info
    if not i.get("shown"):
        return ""
    if i["shown"] + i["deeper"] >= i["calls"]:
        shown = f"All {i['calls']:,} calls"
    else:
        shown = (f"The {i['shown']:,} longest of {i['calls']:,} calls (the shortest shown "
                 f"lasted {_ns(i['shortest_ns'])}): the {i['calls'] - i['shown'] - i['deeper']:,}"
                 " shorter ones are left out (query the calls table for them)")
    deeper = (f"; {i['deeper']:,} calls more than {i['levels']} levels below their thread's "
              "outermost call are left out" if i["deeper"] else "")
    sampled = (f" {a.sampled_rows:,} rows are sampled (dashed outline): each stands for "
               "weight calls, of which it is the one kept." if a.sampled_rows else "")
    running = (" Calls still running when the trace ended have a red outline."
               if any(r["open"] for r in a.trace_calls) else "")
    return f"<p class=note id=trace-note>{shown}{deeper}.{sampled}{running}</p>"


def _flame_controls(p: str) -> str:
    return (f"<div class=controls><label>show <select id={p}-thread></select></label> "
            f"<input id={p}-search type=search placeholder='search frames' size=28> "
            f"<span id={p}-matched></span> <button id={p}-reset>reset zoom</button> "
            f"<span id={p}-zoom></span></div>")


def _sampled_flames(a: Analysis) -> str:
    """The CPU flame graph from timer samples and the off-CPU one from the sched
    rows' stacks (stacks probe set), each saying where its time comes from."""
    out = ["<h2 id=cpu-flamegraph>CPU flame graph (sampled stacks)</h2>"]
    if a.cpu_stacks:
        n = sum(w for _t, paths in a.cpu_stacks for _p, w in paths)
        out.append(_flame_controls("cpuflame") + "<p class=note>From the samples table: "
                   f"each timer sample of a thread counts 1/{a.sample_hz} s ({_ns(n)} in all)"
                   "; whole Python stacks, with or without call probes. Where exact call rows "
                   "exist too, the flame graph above has their exact times.</p>"
                   "<div id=cpuflame></div>")
    else:
        out.append("<p class=none>no stack samples (--probes stacks)</p>")
    out.append("<h2 id=offcpu-flamegraph>Off-CPU flame graph</h2>")
    if a.offcpu_stacks:
        out.append(_flame_controls("offflame") + "<p class=note>From the sched table: "
                   "each off-CPU interval's duration on the Python stack the thread blocked "
                   "in, under its state ('gil' is a wait for the GIL); preemptions and "
                   "intervals over the walk budget have no stack (kernel.offcpu_*) and are "
                   "in the off-CPU table below only.</p><div id=offflame></div>")
    else:
        out.append("<p class=none>no off-CPU stacks (--probes stacks,sched)</p>")
    return "\n".join(out)


def page(a: Analysis, title: str) -> str:
    """The self-contained HTML report."""
    data = json.dumps(page_data(a)).replace("</", "<\\/")
    missing = "".join(f"<p class=missing>{html.escape(m)}</p>" for m in a.missing) + "".join(
        f"<p class=missing>warning: {html.escape(m)}</p>" for m in a.lost)
    missing = "".join(f"<p class=missing>{html.escape(n)}</p>" for n in a.notes) + missing
    span = (f"{len(a.sessions)} sessions" if a.notes else
            f"{_ns(a.span_ns[1] - a.span_ns[0])}" if a.span_ns else "no events")
    counts = ", ".join(f"{t} {n:,}" for t, n in a.tables.items() if n)
    recs = "".join(f"<li><b>{html.escape(r['title'])}</b><br>because "
                   f"{html.escape(r['evidence'])}</li>" for r in a.recommendations)
    rq = a.runq
    runq = (f"<p>Run-queue latency (wake-up to on-CPU): p50 {_ns(rq['p50_ns'])}, p90 "
            f"{_ns(rq['p90_ns'])}, p99 {_ns(rq['p99_ns'])}, max {_ns(rq['max_ns'])} over "
            f"{rq['intervals']:,} intervals.</p>") if rq else ""
    prefix = (f" File paths are relative to <code>{html.escape(a.path_prefix)}</code>."
              if a.path_prefix else "")
    flame = (_flame_controls("flame") + "<p class=note>From the exact call rows. On-CPU "
             "time: a frame's width is its calls' on-CPU time on that "
             "path (self and children, x weight). Click a frame to zoom, hover for its "
             "file, its call path and its function's total; search highlights matching "
             "frames (function or file) and gives their share.</p>"
             "<div id=flame></div>") if a.thread_stacks else "<p class=none>no call rows</p>"
    trace = ("<div class=controls><button id=trace-in>zoom in</button> "
             "<button id=trace-out>zoom out</button> <button id=trace-reset>reset</button> "
             "<span class=note>wheel to zoom, drag to pan, hover for details</span></div>"
             f"{_trace_note(a)}<div id=trace></div>") if a.trace_calls else \
        "<p class=none>no call rows</p>"
    scripts = "".join(_asset(n) for n in ("common.js", "flame.js", "trace.js"))
    return f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>
<style>{_asset('report.css')}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Trace span {html.escape(span)} — {html.escape(counts)}. scope-ebpf {__version__}.</p>
{missing}
<p class=note id=total-rule>Every view gives a function the same total: {TOTAL_RULE}.{prefix}</p>
<h2 id=recommendations>Recommendations</h2>
{f"<ul>{recs}</ul>" if recs else "<p class=none>none</p>"}
<h2 id=anomalies>Anomalies</h2>
{_findings(a.findings)}
<h2 id=top>Top functions by total time</h2>
{_table(_top_rows(a), "top")}
<h2 id=self>Hot code: top functions by on-CPU self time{html.escape(_hot_source(a))}</h2>
{_table(_self_rows(a), "self")}
<h2 id=waiting>Waiting code: top functions by off-CPU self time</h2>
{_table(_self_rows(a, a.waiting), "waiting")}
<h2 id=flamegraph>Flame graph</h2>
{flame}
{_sampled_flames(a)}
<h2 id=calls-in-time>Calls in time</h2>
<p class=note>Each thread's calls from the exact rows, callers above callees, as they ran.</p>
{trace}
<h2 id=gc>Garbage collection</h2>
{_gc_chart(a)}
{_table(_gc_rows(a))}
<h3>Longest pauses</h3>
{_table(_longest_rows(a))}
<h3>Functions running when collections started</h3>
{_table(_trigger_rows(a))}
<h2 id=offcpu>Off-CPU time</h2>
{_table(_offcpu_rows(a))}
<h3 id=gil>GIL waits per thread</h3>
{_table(_gil_rows(a)) if a.gil else "<p class=none>no thread waited for the GIL</p>"}
{runq}
<h2 id=timeline>Timeline</h2>
{_timeline(a)}
<div id=tip></div>
<script type="application/json" id="report-data">{data}</script>
<script>{scripts}</script>
</body></html>
"""
