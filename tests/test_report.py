"""`scope-ebpf report` on traces of programs with known behaviour: the numbers
it gives equal direct DuckDB queries, every view gives a function the same
total, the speedscope export is well formed, the page renders in headless
Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import PY311, program, rows, scope

from scope_ebpf import analysis, report
from scope_ebpf.analysis import ns_text
from scope_ebpf.query import connect
from scope_ebpf.writer import OutputDir

pytestmark = pytest.mark.kernel
APP = program("report_app.py")
HOT = f"hot ({APP}:20)"  # frames of the folded export: function (full path:line)
T0 = 1_700_000_000_000_000_000  # synthetic traces' first instant


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    """report_app.py, unsampled (--max-rate 0: fib's burst would be sampled)."""
    out = tmp_path_factory.mktemp("report") / "out"
    r = scope("run", "--max-rate", "0", "-o", str(out), "--", PY311, APP)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def result(trace) -> analysis.Analysis:
    con = connect(trace)
    try:
        return analysis.analyze(con)
    finally:
        con.close()


def by_function(items: list[dict], name: str) -> dict:
    found = [r for r in items if r["function"] == name]
    assert len(found) == 1, (name, items)
    return found[0]


def test_hot_function_and_self_time_match_direct_queries(trace, result):
    hot = by_function(result.top, "hot")
    assert hot["calls"] == 300
    assert hot["total_ns"] == rows(trace, "SELECT sum(total_ns) FROM functions "
                                          "WHERE function = 'hot'")[0][0]
    assert hot["p50_ns"] == pytest.approx(rows(trace, "SELECT quantile_cont(duration_ns, 0.5) "
                                                      "FROM calls WHERE function = 'hot'")[0][0])
    # hot only calls spin: its self time is what is left of its duration
    assert result.self_top[0]["function"] == "spin"
    hot_self = by_function(result.self_top, "hot")["self_ns"]
    spin_under_hot = rows(trace, """
        SELECT sum(c.duration_ns) FROM calls c JOIN calls p ON p.tid = c.tid
          AND p.depth = c.depth - 1 AND c.start_ns >= p.start_ns
          AND c.start_ns < p.end_ns
        WHERE c.function = 'spin' AND p.function = 'hot'""")[0][0]
    assert hot_self == hot["total_ns"] - spin_under_hot
    # the (on-CPU) flame graph holds hot's time on the CPU under hot, exactly: the
    # kernel's self times and off-CPU times add up along every path
    under_hot = sum(w for stack, w in result.folded if HOT in stack)
    assert under_hot == rows(trace, "SELECT sum(duration_ns - offcpu_ns) FROM calls "
                                    "WHERE function = 'hot'")[0][0]


def test_sleep_gc_and_the_slow_window_are_named(trace, result):
    nap = {r["state"]: r for r in result.offcpu if r["function"] == "nap"}
    # (on a shared CPU its thread may also wait to run again after a sleep)
    assert "sleeping" in nap and set(nap) <= {"sleeping", "preempted"}, nap
    assert sum(r["total_ns"] for r in nap.values()) == rows(
        trace, "SELECT sum(duration_ns) FROM sched WHERE function = 'nap'")[0][0]
    assert 195e6 <= nap["sleeping"]["total_ns"] < 260e6
    gens = {r["generation"]: r for r in result.gc_by_gen}
    assert gens[2]["collections"] == rows(trace, "SELECT count(*) FROM gc "
                                                 "WHERE generation = 2")[0][0]
    # the three explicit full collections run inside churn (gc.collect is C code)
    churn = by_function(result.gc_triggers, "churn")
    assert churn["collections"] == 3 and churn["max_generation"] == 2
    assert (churn["file"], churn["line"]) == (APP, 28)
    latency = [f for f in result.findings if f.kind == "latency"]
    assert [f.subject for f in latency] == ["steady"], [f.text for f in result.findings]
    ratio = float(re.search(r"was (\d+)x slower", latency[0].text).group(1))
    # a preempted spin runs past its end: under load the slow median grows, never shrinks
    assert 30 <= ratio <= 200 and "40 calls" in latency[0].text
    # the rows behind the finding are the 40 slow calls
    assert len(rows(trace, latency[0].sql)) == 40
    titles = [r["title"] for r in result.recommendations]
    assert any("gc.freeze()" in t for t in titles)
    assert any(t.startswith("nap sleeps") for t in titles)


def test_report_command_exports_and_named_queries(trace, tmp_path):
    r = scope("report", str(trace), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    assert "[latency] steady" in r.stdout and "gc.freeze()" in r.stdout
    page = (tmp_path / "r.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    r = scope("report", str(trace), "-q", "--format", "folded", "-o", str(tmp_path / "f.txt"))
    assert r.returncode == 0, r.stderr
    folded = [ln.rsplit(" ", 1) for ln in (tmp_path / "f.txt").read_text().splitlines()]
    total = sum(int(w) for _s, w in folded)
    # every call's on-CPU self time, which adds up to the outermost calls' on-CPU time
    top_level = rows(trace, "SELECT sum(duration_ns - offcpu_ns) FROM calls WHERE depth = 0 "
                            "AND duration_ns IS NOT NULL")[0][0]
    assert total == top_level

    r = scope("query", str(trace), "--top", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert any(ln.startswith("hot,") and ",300," in ln for ln in r.stdout.splitlines())
    r = scope("query", str(trace), "--offcpu", "--format", "csv")
    assert "nap," in r.stdout and "sleeping" in r.stdout
    r = scope("query", str(trace), "--gc", "--format", "csv")
    assert r.returncode == 0 and r.stdout.count("\n") == 4  # header + 3 generations
    r = scope("query", str(trace), "--gc", "--pid", "1", "--format", "csv")
    assert r.stdout.count("\n") == 1
    r = scope("query", str(trace), "SELECT count(*) FROM gc", "--since", "+100s",
              "--format", "csv")
    assert r.stdout.split() == ["count_star()", "0"]
    r = scope("query", str(trace), "--since", "yesterday", "--top")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1


# fib's outermost calls: no fib above them on their kernel-recorded path
OUTER_FIB = """
    SELECT count(*), sum(c.duration_ns) FROM calls c JOIN stacks s USING (pid, stack_id)
    WHERE c.function = 'fib' AND NOT list_contains(s.path[:-2], 'fib')"""


def test_a_recursive_function_has_one_total_in_every_view(trace, result):
    """fib(17) and fib(18) recurse: fib's total is its two outermost calls'
    durations, not the sum over its 13,528 nested activations, and the tables,
    the flame graph's tooltip data and the text summary all show that figure."""
    (outer_calls, outer), = rows(trace, OUTER_FIB)
    (calls, every), = rows(trace, "SELECT count(*), sum(duration_ns) FROM calls "
                                  "WHERE function = 'fib'")
    assert outer_calls == 2 and calls == 5167 + 8361 and every > 3 * outer
    fib = by_function(result.top, "fib")
    assert fib["total_ns"] == outer and fib["calls"] == calls
    assert by_function(result.self_top, "fib")["total_ns"] == outer
    (key, total), = [(k, t) for k, t in result.totals.items() if k[1] == "fib"]
    assert total["total_ns"] == outer and key[2:] == (APP, 39)
    # a function that does not recurse: its total is the sum of its calls
    assert by_function(result.top, "hot")["total_ns"] == rows(
        trace, "SELECT sum(duration_ns) FROM calls WHERE function = 'hot'")[0][0]

    shown = ns_text(outer)
    text = report.text(result)
    assert report.TOTAL_RULE in " ".join(text.split())
    top = text.split("== top functions", 1)[1].split("\n\n", 1)[0]
    fib_line, = [ln for ln in top.splitlines() if ln.startswith("fib ")]
    assert fib_line.split()[1:6] == [f"{APP}:39", str(key[0]), f"{calls:,}", *shown.split()]
    data = report.page_data(result)
    frame = data["frames"].index(["fib", APP, 39, f"fib ({APP}:39)"])
    assert data["flame"]["totals"][f"{key[0]}:{frame}"][:3] == [calls, outer, shown]
    page = report.page(result, "t")
    top_table = page.split("<table class='top'>", 1)[1].split("</table>", 1)[0]
    fib_row, = [r for r in top_table.split("<tr>") if r.startswith("<td>fib</td>")]
    assert f"<td>{shown}</td>" in fib_row and report.TOTAL_RULE in page


def test_nested_calls_are_told_by_function_file_and_line(tmp_path):
    """Written by the real writer (no kernel): a -> b -> a is recursion (a's
    total is its outer call's), x.py's __init__ -> y.py's __init__ is not (two
    functions), x.py's __init__ under itself is. A function with no rows (all
    filtered) keeps the exact total of `functions`."""
    out = OutputDir(tmp_path / "trace")
    m, x, y = "/app/m.py", "/app/x.py", "/app/y.py"
    calls = [("a", m, 1, 0, 1000), ("b", m, 5, 100, 900), ("a", m, 1, 200, 600),
             ("__init__", x, 3, 300, 500), ("__init__", y, 9, 350, 450),
             ("__init__", x, 3, 360, 400)]
    out.writer("calls").write(pa.table({
        "start_ns": pa.array([T0 + c[3] for c in calls], pa.int64()),
        "duration_ns": pa.array([c[4] - c[3] for c in calls], pa.int64()),
        "end_ns": pa.array([T0 + c[4] for c in calls], pa.int64()),
        "pid": [7] * 6, "tid": [7] * 6, "depth": list(range(6)),
        "function": [c[0] for c in calls], "file": [c[1] for c in calls],
        "line": [c[2] for c in calls], "weight": [1] * 6, "stack_id": list(range(1, 7)),
        "self_ns": [200, 400, 200, 100, 60, 40], "offcpu_ns": [0] * 6,
        "self_offcpu_ns": [0] * 6}))
    out.writer("stacks").write(pa.table({
        "pid": [7] * 6, "stack_id": list(range(1, 7)), "parent_stack_id": [None, 1, 2, 3, 4, 5],
        "depth": list(range(6)), "function": [c[0] for c in calls],
        "file": [c[1] for c in calls], "line": [c[2] for c in calls],
        "path": [[c[0] for c in calls[:i + 1]] for i in range(6)]}))
    fns = [("a", m, 1, 2, 1400), ("b", m, 5, 1, 800), ("__init__", x, 3, 2, 240),
           ("__init__", y, 9, 1, 100), ("leaf", m, 20, 5, 50)]
    out.writer("functions").write(pa.table({
        "ts_ns": pa.array([T0 + 2000] * 5, pa.int64()), "pid": [7] * 5,
        "function": [f[0] for f in fns], "file": [f[1] for f in fns],
        "line": [f[2] for f in fns], "calls": pa.array([f[3] for f in fns], pa.int64()),
        "total_ns": pa.array([f[4] for f in fns], pa.int64()),
        "dropped": pa.array([0, 0, 0, 0, 5], pa.int64()), "lost": pa.array([0] * 5, pa.int64()),
        "hist": [[0]] * 5, "self_ns": pa.array([0] * 5, pa.int64()),
        "self_offcpu_ns": pa.array([0] * 5, pa.int64()),
        "self_gil_ns": pa.array([0] * 5, pa.int64())}))
    out.close()
    con = connect(tmp_path / "trace")
    try:
        a = analysis.analyze(con)
    finally:
        con.close()
    assert {(k[1], k[2]): (t["calls"], t["total_ns"]) for k, t in a.totals.items()} == {
        ("a", m): (2, 1000), ("b", m): (1, 800), ("__init__", x): (2, 200),
        ("__init__", y): (1, 100), ("leaf", m): (5, 50)}
    assert [(r["function"], r["total_ns"]) for r in a.top] == [
        ("a", 1000), ("b", 800), ("__init__", 200), ("__init__", 100), ("leaf", 50)]
    assert a.path_prefix == "/app" and a.where(m, 1) == "m.py:1"


# The speedscope file format (https://www.speedscope.app/file-format-schema.json),
# the parts scope-ebpf writes
FRAME = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "file": {"type": "string"}, "line": {"type": "number"}}}
EVENT = {"type": "object", "required": ["type", "frame", "at"], "properties": {
    "type": {"enum": ["O", "C"]}, "frame": {"type": "number"}, "at": {"type": "number"}}}
PROFILE = {"type": "object", "properties": {
    "type": {"enum": ["evented", "sampled"]}, "name": {"type": "string"},
    "unit": {"enum": ["bytes", "microseconds", "milliseconds", "nanoseconds", "none",
                      "seconds"]},
    "startValue": {"type": "number"}, "endValue": {"type": "number"},
    "events": {"type": "array", "items": EVENT},
    "samples": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
    "weights": {"type": "array", "items": {"type": "number"}}},
    "anyOf": [{"properties": {"type": {"const": "evented"}},
               "required": ["type", "name", "unit", "startValue", "endValue", "events"]},
              {"properties": {"type": {"const": "sampled"}},
               "required": ["type", "name", "unit", "startValue", "endValue", "samples",
                            "weights"]}]}
SPEEDSCOPE = {"type": "object", "required": ["$schema", "shared", "profiles"], "properties": {
    "$schema": {"const": "https://www.speedscope.app/file-format-schema.json"},
    "shared": {"type": "object", "required": ["frames"],
               "properties": {"frames": {"type": "array", "items": FRAME}}},
    "profiles": {"type": "array", "items": PROFILE}, "name": {"type": "string"},
    "activeProfileIndex": {"type": "number"}, "exporter": {"type": "string"}}}


def _speedscope(out: Path, tmp_path: Path) -> tuple[dict, str]:
    r = scope("report", str(out), "-q", "--format", "speedscope", "-o", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "s.json").read_text())
    import jsonschema

    jsonschema.validate(doc, SPEEDSCOPE)
    return doc, r.stderr


def test_speedscope_export_is_evented_from_the_exact_rows(trace, tmp_path):
    doc, stderr = _speedscope(trace, tmp_path)
    assert "sampled" not in stderr
    # one profile per thread, named, frames with their file and line
    threads = rows(trace, """
        SELECT DISTINCT c.pid, c.tid, t.name FROM calls c LEFT JOIN (
            SELECT pid, tid, arg_max(coalesce(python_name, os_name), ts_ns) AS name
            FROM threads GROUP BY ALL) t USING (pid, tid) ORDER BY ALL""")
    assert [p["name"] for p in doc["profiles"]] == [
        f"{n} (tid {t})" if n else f"pid {p} tid {t}" for p, t, n in threads]
    assert doc["profiles"][0]["name"].startswith("MainThread (tid ")  # the 3.11 hook names it
    assert doc["profiles"][1]["name"].startswith("fib-worker (tid ")
    frames = doc["shared"]["frames"]
    hot = [f for f in frames if f["name"] == "hot"]
    assert hot == [{"name": "hot", "file": APP, "line": 20}]
    calls = dict(((t), n) for t, n in rows(trace, "SELECT tid, count(*) FROM calls GROUP BY 1"))
    fib = frames.index({"name": "fib", "file": APP, "line": 39})
    outer_fib = 0
    for (_pid, tid, _name), p in zip(threads, doc["profiles"], strict=True):
        assert p["type"] == "evented" and p["unit"] == "nanoseconds"
        events = p["events"]
        assert sum(e["type"] == "O" for e in events) == calls[tid]  # every row, once
        ats = [e["at"] for e in events]
        assert ats == sorted(ats) and p["startValue"] <= ats[0] and ats[-1] <= p["endValue"]
        stack: list[dict] = []
        for e in events:  # every open has its close, in nesting order
            if e["type"] == "O":
                stack.append(e)
                continue
            opened = stack.pop()
            assert opened["frame"] == e["frame"] and opened["at"] <= e["at"]
            if e["frame"] == fib and all(o["frame"] != fib for o in stack):
                outer_fib += e["at"] - opened["at"]
        assert stack == []
    # the evented profile's outermost fib calls last fib's total
    assert outer_fib == rows(trace, OUTER_FIB)[0][1]



@pytest.fixture(scope="module")
def sampled(tmp_path_factory) -> Path:
    """A small sampled trace written by the real writer (no kernel): main calls
    work three times, one row of work stands for 4 calls."""
    out = OutputDir(tmp_path_factory.mktemp("sampled") / "trace")
    out.writer("calls").write(pa.table({
        "start_ns": pa.array([T0, T0 + 1000, T0 + 5000], pa.int64()),
        "duration_ns": pa.array([9000, 3000, 1000], pa.int64()),
        "end_ns": pa.array([T0 + 9000, T0 + 4000, T0 + 6000], pa.int64()),
        "pid": [7, 7, 7], "tid": [7, 7, 7], "depth": [0, 1, 1],
        "function": ["main", "work", "work"], "file": ["/app/a.py"] * 3, "line": [1, 5, 5],
        "weight": [1, 1, 4], "stack_id": [1, 2, 2], "self_ns": [5000, 3000, 1000],
        "offcpu_ns": [0, 0, 0], "self_offcpu_ns": [0, 0, 0]}))
    out.writer("stacks").write(pa.table({
        "pid": [7, 7], "stack_id": [1, 2], "parent_stack_id": [None, 1], "depth": [0, 1],
        "function": ["main", "work"], "file": ["/app/a.py"] * 2, "line": [1, 5],
        "path": [["main"], ["main", "work"]]}))
    out.writer("session").write(
        pa.table({"key": ["stop_reason"], "value": ["target exited"],
                  "count": pa.array([0], pa.int64())}))
    out.close()
    return out.root


def test_speedscope_export_of_sampled_rows_is_sampled_and_says_why(sampled, tmp_path):
    doc, stderr = _speedscope(sampled, tmp_path)
    assert "sampled profiles of on-CPU self time, not evented: 1 call rows stand for " \
           "several calls" in stderr
    p, = doc["profiles"]
    assert p["type"] == "sampled" and p["name"] == "pid 7 tid 7"
    assert sum(p["weights"]) == 5000 + 3000 + 4 * 1000
    assert doc["shared"]["frames"] == [{"name": "main", "file": "/app/a.py", "line": 1},
                                       {"name": "work", "file": "/app/a.py", "line": 5}]


def test_partial_traces_say_what_is_missing(tmp_path):
    out = tmp_path / "gc-only"
    r = scope("run", "-o", str(out), "--probes", "gc", "--", PY311, "-c", "import os; os._exit(0)")
    assert r.returncode == 0, r.stderr
    r = scope("report", str(out), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    assert "missing: no function calls were recorded" in r.stdout
    assert "no call rows" in (tmp_path / "r.html").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = scope("report", str(empty))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no scope-ebpf tables" in r.stderr


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


TICK = re.compile(r"\d+(\.\d+)? (s|ms|us|ns)")


def test_page_renders_in_chromium_and_the_flame_graph_zooms(trace, result, sampled, tmp_path):
    """The page in headless Chromium: the flame graph zooms, searches and shows
    one thread; hovering a frame gives its path and its function's total; the
    time-ordered view draws calls under a time axis and zooms. Screenshots at
    two zoom levels and after a search (in tmp_path); the checks read the DOM."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    page = tmp_path / "r.html"
    assert scope("report", str(trace), "-q", "-o", str(page)).returncode == 0
    fib_label = f"fib ({APP}:39)"
    (_n, fib_total), = rows(trace, OUTER_FIB)
    fib_cpu, = [t["total_cpu_ns"] for k, t in result.totals.items() if k[1] == "fib"]
    driver = _chromium()

    def names(css: str = "#flame rect") -> list[str]:  # one round trip, not one per rect
        return driver.execute_script("return [...document.querySelectorAll(arguments[0])]"
                                     ".map(r => r.getAttribute('data-name'))", css)

    def texts(css: str) -> list[str]:
        return driver.execute_script("return [...document.querySelectorAll(arguments[0])]"
                                     ".map(e => e.textContent)", css)

    def shot(name: str) -> None:
        driver.save_screenshot(str(tmp_path / name))
        assert os.path.getsize(tmp_path / name) > 10_000

    try:
        driver.get(page.as_uri())
        flame = driver.find_element(By.ID, "flamegraph")
        driver.execute_script("arguments[0].scrollIntoView()", flame)
        svg = driver.find_element(By.CSS_SELECTOR, "#flame svg")
        assert svg.get_attribute("data-zoom") == "all"
        everything = int(svg.get_attribute("data-total"))
        assert HOT in names() and fib_label in names()
        shot("flame.png")
        # zoom: the frame fills the width
        driver.find_element(By.CSS_SELECTOR, f"#flame rect[data-name='{HOT}']").click()
        svg = driver.find_element(By.CSS_SELECTOR, "#flame svg")
        assert svg.get_attribute("data-zoom") == HOT
        zoomed = driver.find_element(By.CSS_SELECTOR, f"#flame rect[data-name='{HOT}']")
        assert float(zoomed.get_attribute("width")) == pytest.approx(1000)
        assert fib_label not in names()
        shot("flame-zoomed.png")
        driver.find_element(By.ID, "flame-reset").click()

        # hover: the full path, the call path and fib's total as the tables give it
        fib = driver.find_element(By.CSS_SELECTOR, f"#flame rect[data-name='{fib_label}']")
        ActionChains(driver).move_to_element(fib).perform()
        tip = driver.find_element(By.ID, "tip").text
        assert tip.startswith(f"{fib_label}\ntotal of fib in pid ")
        assert f": {ns_text(fib_total)} wall, " in tip
        assert "call path, outermost first" in tip and "fibs (" in tip

        # search: matching frames highlighted, their share said (fib's on-CPU time)
        box = driver.find_element(By.ID, "flame-search")
        box.send_keys("fib (")
        hits = names("#flame rect[data-match]")
        assert hits and set(hits) == {fib_label}
        assert not any(n.startswith("fib (") for n in set(names()) - set(hits))
        matched = driver.find_element(By.ID, "flame-matched").text
        share = float(re.fullmatch(r"Matched: ([\d.]+)% \(.+ of .+\)", matched).group(1))
        assert share == pytest.approx(100 * fib_cpu / everything, abs=0.051)
        shot("flame-search.png")
        box.send_keys(Keys.BACKSPACE * len("fib ("))
        assert names("#flame rect[data-match]") == []
        assert driver.find_element(By.ID, "flame-matched").text == ""

        # one thread: fib-worker's frames only, then MainThread's only
        pick = Select(driver.find_element(By.ID, "flame-thread"))
        options = [o.text for o in pick.options]
        assert options[0] == "all threads" and any(o.startswith("fib-worker (tid ")
                                                   for o in options)
        pick.select_by_visible_text(next(o for o in options if o.startswith("fib-worker")))
        worker = set(names())
        assert fib_label in worker and HOT not in worker
        assert int(driver.find_element(By.CSS_SELECTOR, "#flame svg")
                   .get_attribute("data-total")) < everything
        pick.select_by_visible_text(next(o for o in options if o.startswith("MainThread")))
        main = set(names())
        assert HOT in main and fib_label not in main
        pick.select_by_visible_text("all threads")
        assert {fib_label, HOT} <= set(names())

        # the time-ordered view: calls as rectangles under a time axis, both lanes
        view = driver.find_element(By.ID, "calls-in-time")
        driver.execute_script("arguments[0].scrollIntoView()", view)
        svg = driver.find_element(By.CSS_SELECTOR, "#trace svg")
        ticks = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#trace .tick text")]
        assert len(ticks) >= 3 and all(TICK.fullmatch(t) for t in ticks), ticks
        assert "time since the start of the trace" in driver.find_element(
            By.CSS_SELECTOR, "#trace .axis-title").text
        lanes = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#trace .lane-name")]
        assert lanes[0].startswith("MainThread") and lanes[1].startswith("fib-worker")
        calls = names("#trace rect.call")
        assert int(svg.get_attribute("data-rects")) == len(calls) > 100
        assert {"main", "nap", "hot", "fibs"} <= {c.split(" (")[0] for c in calls}
        assert driver.find_elements(By.CSS_SELECTOR, "#trace rect.sampled") == []
        note = driver.find_element(By.ID, "trace-note").text
        assert re.match(r"The 5,000 longest of [\d,]+ calls \(the shortest shown lasted .+\): "
                        r"the [\d,]+ shorter ones are left out", note), note
        shot("trace.png")
        span = float(svg.get_attribute("data-v1")) - float(svg.get_attribute("data-v0"))
        for _ in range(3):
            driver.find_element(By.ID, "trace-in").click()
        svg = driver.find_element(By.CSS_SELECTOR, "#trace svg")
        v0, v1 = float(svg.get_attribute("data-v0")), float(svg.get_attribute("data-v1"))
        assert v1 - v0 == pytest.approx(span / 8)
        zoomed_ticks = [t.text for t in driver.find_elements(By.CSS_SELECTOR,
                                                             "#trace .tick text")]
        assert len(zoomed_ticks) >= 3 and zoomed_ticks != ticks
        # the wheel zooms in around the pointer
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(svg), 0, -100).perform()
        svg = driver.find_element(By.CSS_SELECTOR, "#trace svg")
        assert float(svg.get_attribute("data-v1")) - float(svg.get_attribute("data-v0")) \
            == pytest.approx((v1 - v0) * 0.8)
        shot("trace-zoomed.png")
        rect = driver.find_element(By.CSS_SELECTOR, "#trace rect.call")
        ActionChains(driver).move_to_element(rect).perform()
        assert "exact row" in driver.find_element(By.ID, "tip").text
        # the GC chart and the timeline: time axes with ticks and titles, a pause axis
        for chart in ("svg.chart", "svg.timeline"):
            ticks = texts(f"{chart} .tick text")
            assert len(ticks) >= 3 and all(TICK.fullmatch(t) for t in ticks), (chart, ticks)
            assert "time since the start of the trace" in texts(f"{chart} .axis-title")
        assert "GC pause per 0.1 s" in texts("svg.chart .axis-title")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []

        # sampled rows are marked, and the page says so
        other = tmp_path / "sampled.html"
        assert scope("report", str(sampled), "-q", "-o", str(other)).returncode == 0
        driver.get(other.as_uri())
        marked = driver.find_elements(By.CSS_SELECTOR, "#trace rect.sampled")
        assert [r.get_attribute("data-name") for r in marked] == ["work (a.py:5)"]
        assert "File paths are relative to /app." in driver.find_element(By.ID, "total-rule").text
        assert len(driver.find_elements(By.CSS_SELECTOR, "#trace rect.call")) == 3
        assert "1 rows are sampled (dashed outline)" in driver.find_element(
            By.ID, "trace-note").text
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()


def test_sampled_graphs_need_samples(trace) -> None:
    r = scope("report", str(trace), "--format", "folded", "--graph", "cpu")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (f"scope-ebpf: error: no stack samples in {trace}: --graph cpu "
                                "needs a trace with --probes stacks")
