"""Names from a traced program never reach a terminal raw: every text output
shows control characters (C0, DEL, C1, ESC sequences, CR, BEL, bidi) escaped."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import PY311, program, scope

from scope_ebpf import analysis, report
from scope_ebpf.textsafe import json_text, safe

# What a terminal acts on; "\n" is allowed only as our own line break.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")
NAMES = ["\x1b]52;c;aGFja2Vk\x07clip", "\x1b[2Jclear", "cr\rforged", "bell\x07ding",
         "csi\x9b31mred", "nl\nforged", "bidi\u202eevil"]
SHOWN = ["\\x1b]52;c;aGFja2Vk\\x07clip", "\\x1b[2Jclear", "cr\\rforged", "bell\\x07ding",
         "csi\\x9b31mred", "nl\\nforged", "bidi\\u202eevil"]
FILE_SHOWN = "\\x1b[2J\\x1b]0;title\\x07evil\\r.py"


def test_safe_escapes_controls_and_keeps_text():
    assert [safe(n) for n in NAMES] == SHOWN
    assert safe("\x00\x7f\x80\x9f\u2028\u2066") == "\\x00\\x7f\\x80\\x9f\\u2028\\u2066"
    plain = "tâche_été (C:\\dir\\x.py:12) — 北京 …"
    assert safe(plain) == plain
    assert safe(42) == "42"


def test_json_text_is_the_same_value_without_raw_controls():
    value = [{"function": n, "n": 1} for n in NAMES] + [{"é": "北京"}]
    text = json_text(value)
    assert json.loads(text) == value
    assert not RAW.search(text)
    assert "北京" in text  # readable, not \u-escaped


def test_report_text_escapes_findings_and_recommendations():
    a = analysis.Analysis(tables={"calls": 1}, span_ns=None)
    a.findings = [analysis.Finding("latency", NAMES[0], f"{NAMES[0]} was 9x slower", "")]
    a.recommendations = [{"title": f"{NAMES[2]} is I/O-bound", "evidence": NAMES[5]}]
    a.lost = [f"1 {NAMES[1]}"]
    a.top = [{"function": NAMES[4], "file": "/x/" + NAMES[3], "line": 1, "pid": 1,
              "calls": 1, "total_ns": 1, "mean_ns": 1, "p50_ns": 1, "p90_ns": 1,
              "p99_ns": 1, "max_ns": 1}]
    out = report.text(a)
    assert not RAW.search(out)
    for shown in (SHOWN[0], SHOWN[1], SHOWN[2], SHOWN[3], SHOWN[4]):
        assert shown in out
    # the recommendation's evidence is one line of its own, its newline escaped
    assert "    because nl\\nforged" in out.splitlines()


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evil") / "out"
    r = scope("run", "-o", str(out), "--", PY311, program("evilnames.py"))
    assert r.returncode == 0, r.stderr
    assert not RAW.search(r.stderr)
    return out


@pytest.mark.kernel
def test_report_and_query_outputs_show_hostile_names_escaped(evil, tmp_path):
    r = scope("report", str(evil), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    assert not RAW.search(r.stdout) and not RAW.search(r.stderr)
    for shown in SHOWN:
        assert shown in r.stdout, shown
    assert FILE_SHOWN in r.stdout
    r = scope("report", str(evil), "-q", "--format", "folded", "-o", str(tmp_path / "f.txt"))
    assert r.returncode == 0, r.stderr
    folded = (tmp_path / "f.txt").read_text()
    assert not RAW.search(folded)
    # one stack per line even with a newline in a name: the weight ends every line
    assert all(re.fullmatch(r".+ \d+", ln) for ln in folded.splitlines())
    assert any(SHOWN[5] in ln for ln in folded.splitlines())

    sql = ("SELECT function, file, count(*) AS n FROM calls WHERE file LIKE '%evil%.py' "
           "AND function <> '<module>' GROUP BY ALL ORDER BY function")
    for fmt in ("table", "csv"):
        r = scope("query", str(evil), sql, "--format", fmt)
        assert r.returncode == 0, r.stderr
        assert not RAW.search(r.stdout), fmt
        for shown in SHOWN:
            assert shown in r.stdout, (fmt, shown)
        assert r.stdout.count(FILE_SHOWN) == len(NAMES)
    r = scope("query", str(evil), sql, "--format", "csv")
    assert len(r.stdout.splitlines()) == 1 + len(NAMES)
    r = scope("query", str(evil), sql, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert not RAW.search(r.stdout)
    got = json.loads(r.stdout)
    assert sorted(g["function"] for g in got) == sorted(NAMES)  # the exact names, escaped
    assert {g["file"] for g in got} == {"/tmp/\x1b[2J\x1b]0;title\x07evil\r.py"}
    for named in ("--top", "--offcpu"):
        r = scope("query", str(evil), named)
        assert r.returncode == 0 and not RAW.search(r.stdout), named
        assert SHOWN[0] in r.stdout, named


def test_paths_in_status_errors_and_probes_are_escaped(tmp_path):
    evil = tmp_path / "\x1b]0;pwned\x07\x9b2J"
    r = scope("query", str(evil), "SELECT 1")
    assert r.returncode == 2 and not RAW.search(r.stderr)
    assert "\\x1b]0;pwned\\x07\\x9b2J" in r.stderr and r.stderr.count("\n") == 1
    shutil.copy("/bin/true", evil)
    r = scope("probes", "--binary", str(evil))
    assert r.returncode == 4 and not RAW.search(r.stdout) and not RAW.search(r.stderr)
    assert "\\x1b]0;pwned\\x07\\x9b2J" in r.stdout
