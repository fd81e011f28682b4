"""`scope-ebpf report` on traces of programs with known behaviour: the numbers
it gives equal direct DuckDB queries, the page renders in headless Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import PY311, program, rows, scope

from scope_ebpf import analysis
from scope_ebpf.query import connect

pytestmark = pytest.mark.kernel
ARTIFACTS = Path(__file__).resolve().parent.parent / ".artifacts"


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    r = scope("run", "-o", str(out), "--", PY311, program("report_app.py"))
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
    under_hot = sum(w for stack, w in result.folded if "hot (report_app.py:17)" in stack)
    assert under_hot == rows(trace, "SELECT sum(duration_ns - offcpu_ns) FROM calls "
                                    "WHERE function = 'hot'")[0][0]


def test_sleep_gc_and_the_slow_window_are_named(trace, result):
    nap = [r for r in result.offcpu if r["function"] == "nap"]
    assert [r["state"] for r in nap] == ["sleeping"]
    assert nap[0]["total_ns"] == rows(trace, "SELECT sum(duration_ns) FROM sched "
                                             "WHERE function = 'nap'")[0][0]
    assert 195e6 <= nap[0]["total_ns"] < 260e6
    gens = {r["generation"]: r for r in result.gc_by_gen}
    assert gens[2]["collections"] == rows(trace, "SELECT count(*) FROM gc "
                                                 "WHERE generation = 2")[0][0]
    # the three explicit full collections run inside churn (gc.collect is C code)
    churn = by_function(result.gc_triggers, "churn (report_app.py:25)")
    assert churn["collections"] == 3 and churn["max_generation"] == 2
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
    r = scope("report", str(trace), "-q", "--format", "speedscope",
              "-o", str(tmp_path / "s.json"))
    doc = json.loads((tmp_path / "s.json").read_text())
    # one profile per thread, named, frames with their file and line
    threads = rows(trace, """
        SELECT DISTINCT c.pid, c.tid, t.name FROM calls c LEFT JOIN (
            SELECT pid, tid, arg_max(coalesce(python_name, os_name), ts_ns) AS name
            FROM threads GROUP BY ALL) t USING (pid, tid) ORDER BY ALL""")
    assert [p["name"] for p in doc["profiles"]] == [
        f"{n} (tid {t})" if n else f"pid {p} tid {t}" for p, t, n in threads]
    assert doc["profiles"][0]["name"].startswith("MainThread (tid ")  # the 3.11 hook names it
    assert sum(sum(p["weights"]) for p in doc["profiles"]) == total
    hot = [f for f in doc["shared"]["frames"] if f["name"] == "hot"]
    assert len(hot) == 1 and hot[0]["file"].endswith("report_app.py") and hot[0]["line"] == 17

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


def test_page_renders_in_chromium_and_the_flame_graph_zooms(trace, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    page = tmp_path / "r.html"
    assert scope("report", str(trace), "-q", "-o", str(page)).returncode == 0
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(page.as_uri())
        svg = driver.find_element(By.CSS_SELECTOR, "#flame svg")
        assert svg.get_attribute("data-zoom") == "all"
        target = driver.find_element(By.CSS_SELECTOR, "#flame rect[data-name^='hot (']")
        target.click()
        svg = driver.find_element(By.CSS_SELECTOR, "#flame svg")
        assert svg.get_attribute("data-zoom") == "hot (report_app.py:17)"
        zoomed = driver.find_element(By.CSS_SELECTOR, "#flame rect[data-name^='hot (']")
        assert float(zoomed.get_attribute("width")) == pytest.approx(1000)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "report.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()
    assert os.path.getsize(ARTIFACTS / "report.png") > 10_000
