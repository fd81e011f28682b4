"""Kernel-side control: matchers, min-duration, sampling, the breaker, bad options."""

from __future__ import annotations

import pytest
from conftest import PY311, program, rows, scope, session_count

from scope_ebpf import usdt

pytestmark = pytest.mark.kernel


def run(tmp_path, *args, opts=()):
    out = tmp_path / "out"
    r = scope("run", "-o", str(out), *opts, "--", PY311, *args)
    assert r.returncode == 0, r.stderr
    return out, r


def test_include_keeps_only_matching_rows_and_the_rest_stays_in_the_kernel(tmp_path):
    out, _ = run(tmp_path, program("abc.py"), "3000", "2000", "1000", opts=("--include", "*:b"))
    assert rows(out, "SELECT function, count(*) FROM calls GROUP BY 1") == [("b", 2001)]
    # exact counts for every function, rows or not
    assert rows(out, "SELECT function, sum(calls) FROM functions WHERE function IN ('a','b','c') "
                     "GROUP BY 1 ORDER BY 1") == [("a", 3001), ("b", 2001), ("c", 1001)]
    # the loops ran after the verdicts: those calls never left the kernel
    assert session_count(out, "kernel.calls_filtered") >= 3000 + 1000


def test_exclude_wins_over_include_and_regex(tmp_path):
    out, _ = run(tmp_path, program("abc.py"), "10", "20", "30",
                 opts=("--include", "re:abc\\.py:[abc]$", "--exclude", "*:c"))
    assert rows(out, "SELECT function, count(*) FROM calls GROUP BY 1 ORDER BY 1") == [
        ("a", 11), ("b", 21)]


def test_min_duration_keeps_slow_calls_and_counts_all(tmp_path):
    out, _ = run(tmp_path, program("fastslow.py"), opts=("--min-duration", "2ms"))
    assert rows(out, "SELECT function, count(*), min(duration_ns) >= 2e6 FROM calls "
                     "WHERE function IN ('fast', 'slow') GROUP BY ALL") == [("slow", 20, True)]
    assert rows(out, "SELECT function, sum(calls) FROM functions WHERE function IN "
                     "('fast', 'slow') GROUP BY 1 ORDER BY 1") == [("fast", 200), ("slow", 20)]
    assert session_count(out, "kernel.calls_short") >= 200


def test_sampling_holds_the_row_budget_and_weights_estimate_exact_counts(tmp_path):
    out, _ = run(tmp_path, program("recursive.py"), "27", opts=("--max-rate", "20000"))
    exact = 2 * 317811 - 1  # fib(27) calls
    assert rows(out, "SELECT sum(calls) FROM functions WHERE function = 'fib'") == [(exact,)]
    n, weights, span_s = rows(out, """
        SELECT count(*), sum(weight),
               (max(start_ns) - min(start_ns)) / 1e9
        FROM calls""")[0]
    assert n / span_s <= 20000 * 1.10, (n, span_s)
    # unbiased within 5 standard errors (the weights' own, Horvitz-Thompson)
    (fib_weights, stderr), = rows(out, "SELECT sum(weight), sqrt(sum(weight * (weight - 1))) "
                                       "FROM calls WHERE function = 'fib'")
    assert stderr < 0.03 * exact
    assert abs(fib_weights - exact) <= 5 * stderr, (fib_weights, exact, stderr)
    changes = rows(out, "SELECT new_k FROM sampling WHERE function = 'fib' ORDER BY ts_ns")
    assert changes and changes[0][0] > 1
    assert weights >= n


def _semaphore_addr() -> int:
    return next(p.semaphore_addr for p in usdt.read_probes(PY311) if p.name == "function__entry")


def _marks(stdout: str) -> dict[str, float]:
    return {k: float(v) for k, v in (line.split() for line in stdout.splitlines())}


def test_breaker_trips_detaches_and_recovers(tmp_path):
    sem = hex(_semaphore_addr())
    out, r = run(tmp_path, program("breaker.py"), sem,
                 opts=("--no-hook", "--breaker-rate", "300000", "--max-rate", "0"))
    m = _marks(r.stdout)  # the program waited until its own semaphore read 0
    states = rows(out, "SELECT state, ts_ns, rate FROM breaker ORDER BY ts_ns")
    assert [s for s, _, _ in states] == ["open", "half-open", "closed"]
    opened = states[0][1]
    assert opened - m["flood"] <= 100e6  # tripped within 100 ms of the flood
    assert states[0][2] > 300000
    # detached: the program saw its probes' semaphore fall to 0 (it says so after),
    # and no call was recorded while the breaker was open. (Its speed then is
    # make bench's to check: on a shared CPU it was 85 % of the untraced run's.)
    assert m["detached"] > opened
    assert rows(out, f"SELECT count(*) FROM calls WHERE start_ns > {opened} "
                     f"AND start_ns < {states[1][1]}")[0][0] == 0
    # gc rows kept coming while the breaker was open
    gc_open = rows(out, f"SELECT count(*) FROM gc WHERE start_ns BETWEEN {opened} "
                        f"AND {states[1][1]}")[0][0]
    assert gc_open >= 2
    # after recovery the function probes record calls again
    assert rows(out, f"SELECT count(*) FROM calls WHERE function = 'f' "
                     f"AND start_ns > {states[2][1]}")[0][0] == 100
    assert session_count(out, "breaker_trips") == 1


@pytest.mark.parametrize("args, message", [
    (("--include", "re:("), "bad --include pattern 're:('"),
    (("--exclude", "*:get[0-9"), "bad --exclude pattern"),
    (("--min-duration", "500"), "--min-duration needs a unit"),
    (("--min-duration", "-5ms"), "--min-duration must not be negative"),
    (("--max-rate", "lots"), "--max-rate needs a number"),
    (("--breaker-rate", "-1"), "--breaker-rate must not be negative"),
    (("--max-output", "12"), "--max-output needs a unit"),
    (("--duration", "0"), "--duration must be positive"),
    (("--probes", "gc", "--include", "*:f"), "--include needs the calls probes"),
])
def test_bad_options_one_line_nothing_attached(tmp_path, args, message):
    r = scope("run", "-o", str(tmp_path / "o"), *args, "--", PY311, "-c", "pass")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "compiling" not in r.stderr  # rejected before anything was loaded
    assert not (tmp_path / "o").exists()


def test_max_output_stops_cleanly(tmp_path):
    out, r = run(tmp_path, program("recursive.py"), "27",
                 opts=("--max-output", "1KB", "--max-rate", "0"))
    stop = rows(out, "SELECT value FROM session WHERE key = 'stop_reason'")[0][0]
    assert stop.startswith("--max-output")
    for f in out.rglob("*"):
        assert not f.name.endswith(".tmp")





def test_thread_name_and_tid_filters(tmp_path):
    out, r = run(tmp_path, program("named_threads.py"), opts=("--thread-name", "worker-a"))
    tid_a, tid_b = (int(x) for x in r.stdout.split())
    assert rows(out, "SELECT tid, count(*) FROM calls WHERE function = 'work' GROUP BY 1") \
        == [(tid_a, 300)]
    assert rows(out, "SELECT sum(calls) FROM functions WHERE function = 'work'") == [(500,)]
    assert session_count(out, "kernel.calls_tid_filtered") >= 200


def test_max_cpu_degrades_sampling_first(tmp_path):
    out, _ = run(tmp_path, "-c", "import time\nt = time.time()\nwhile time.time() - t < 4.5: "
                 "sum(range(100))", opts=("--max-cpu", "0.001"))
    reasons = rows(out, "SELECT reason, budget FROM sampling WHERE function IS NULL "
                        "ORDER BY ts_ns")
    assert reasons and reasons[0] == ("controller cpu", 80000.0)
