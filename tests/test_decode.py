"""Decoding kernel records: pure logic, synthetic records."""

from __future__ import annotations

import numpy as np

from scope_ebpf import events
from scope_ebpf.decode import Decoder

C = events.constants()


def _funcs(*items):
    recs = np.zeros(len(items), events.dtypes()["func_event"])
    for r, (fid, name, file, flags) in zip(recs, items, strict=True):
        r["func_id"], r["name"], r["file"], r["flags"], r["line"] = fid, name, file, flags, 7
    return recs


def _calls(*items):
    recs = np.zeros(len(items), events.dtypes()["call_event"])
    for r, (fid, flags) in zip(recs, items, strict=True):
        r["func_id"], r["flags"], r["duration_ns"], r["return_line"] = fid, flags, 5, 9
        r["weight"] = 1
    return recs


def test_null_and_invalid_utf8_names_become_null_and_unknown_ids_too():
    d = Decoder(1_000)
    d.functions.add(_funcs(
        (0x101, b"ok", b"/a.py", 0),
        (0x201, b"", b"/b.py", C["FUNC_NAME_NULL"]),
        (0x301, b"bad\xff\xfe", b"caf\xc3\xa9.py", 0),
    ))
    batch = d.calls(_calls((0x101, 0), (0x201, 0), (0x301, 0), (0x999, 0)))
    t = batch.to_pydict()
    assert t["function"] == ["ok", None, None, None]
    assert t["file"] == ["/a.py", "/b.py", "café.py", None]
    assert t["line"] == [7, 7, 7, None]
    assert t["weight"] == [1, 1, 1, 1]


def test_open_calls_and_calls_without_return_line():
    d = Decoder(0)
    d.functions.add(_funcs((0x101, b"f", b"/f.py", 0)))
    t = d.calls(_calls((0x101, 0), (0x101, C["CALL_OPEN"]),
                       (0x101, C["CALL_NO_RETURN_LINE"]))).to_pydict()
    assert t["duration_ns"] == [5, None, 5]
    assert t["return_line"] == [9, None, None]


def test_function_ids_arrive_out_of_order_and_in_batches():
    d = Decoder(0)
    d.functions.add(_funcs((0x302, b"c", b"/c.py", 0), (0x101, b"a", b"/a.py", 0)))
    d.functions.add(_funcs((0x201, b"b", b"/b.py", 0)))
    t = d.calls(_calls((0x201, 0), (0x302, 0), (0x101, 0))).to_pydict()
    assert t["function"] == ["b", "c", "a"]


def test_row_filter_drops_and_thins_without_bias():
    d = Decoder(0)
    d.functions.add(_funcs((0x101, b"keep", b"/k.py", 0), (0x201, b"drop", b"/d.py", 0),
                           (0x301, b"hot", b"/h.py", 0)))
    d.functions.set_keep([0x201], False)
    d.functions.set_k(0x301, 10)
    ids = np.array([0x101] * 100 + [0x201] * 100 + [0x301] * 100_000 + [0x999], np.uint32)
    weights = np.array([1] * 100 + [1] * 100 + [2] * 100_000 + [1], np.uint32)
    mask, w = d.functions.row_filter(d.functions.find(ids), weights, np.random.default_rng(1))
    assert mask[:100].all() and not mask[100:200].any() and mask[-1]
    hot = mask[200:-1]
    assert (w[200:-1] == 10).all()
    # each row stood for 2 calls; now each kept one stands for 10: same estimate
    assert abs(hot.sum() * 10 - 200_000) < 0.05 * 200_000


def test_forgotten_functions_and_their_strings_go_and_the_rest_decode_the_same():
    d = Decoder(0)
    f = d.functions
    # pid 1 runs /keep.py; pids 2..9 each ran their own script and exited
    recs = _funcs((0x101, b"main", b"/keep.py", 0), (0x102, b"", b"/keep.py",
                                                     C["FUNC_NAME_NULL"]),
                  *[(0x200 + i, f"f{i}".encode(), f"/tmp/s{i}.py".encode(), 0)
                    for i in range(8)])
    recs["pid"] = [1, 1] + list(range(2, 10))
    f.add(recs)
    f.set_keep([0x101], False)
    f.set_k(0x102, 4)
    f.forget(f.ids_of({3, 4}))
    assert len(f) == 8 and len(f._strings) == 18  # few strings unused: kept
    f.forget(f.ids_of(set(range(2, 10))))
    assert len(f) == 2
    assert f._strings == ["main", "/keep.py"]  # the dead's strings are gone
    t = d.calls(_calls((0x101, 0), (0x102, 0), (0x205, 0))).to_pydict()
    assert t["function"] == ["main", None, None]
    assert t["file"] == ["/keep.py", "/keep.py", None]
    # the decisions stay with their functions
    keep, w = f.row_filter(f.find(np.array([0x101, 0x102], np.uint32)),
                           np.array([1, 4], np.int32), np.random.default_rng(0))
    assert keep.tolist() == [False, True] and w.tolist() == [1, 4]
    # a function learnt afterwards interns its strings again
    f.add(_funcs((0x301, b"f3", b"/tmp/s3.py", 0)))
    assert d.calls(_calls((0x301, 0))).to_pydict()["function"] == ["f3"]


def test_exec_names_end_at_their_nul_and_adoptions_carry_what_the_kernel_saw():
    """The ring's memory is not zeroed: an exec's file name is followed by old
    bytes, and an adoption's argv by the environment (argc says how many)."""
    recs = np.zeros(3, events.dtypes()["proc_event"])
    recs[0]["kind"], recs[0]["pid"] = C["PROC_EXEC"], 10
    recs[0]["filename"] = b"/usr/bin/python3.11\0stale bytes of an older event"
    recs[1]["kind"], recs[1]["pid"], recs[1]["other_pid"] = C["PROC_ATTACH"], 11, 3
    recs[1]["filename"], recs[1]["argc"] = b"python3\0app.py\0--x\0HOME=/root\0", 3
    recs[1]["uid"], recs[1]["cgroup_id"] = 1000, 77
    recs[2]["kind"], recs[2]["pid"], recs[2]["other_pid"] = C["PROC_ATTACH"], 12, C["NO_COOKIE"]
    rows = Decoder(0).proc_events(recs)
    assert rows[0]["event"] == "exec" and rows[0]["exe"] == "/usr/bin/python3.11"
    assert rows[1]["event"] == "start" and rows[1]["argv"] == ["python3", "app.py", "--x"]
    assert (rows[1]["cookie"], rows[1]["uid"], rows[1]["cgroup_id"]) == (3, 1000, 77)
    assert rows[2]["cookie"] is None and "argv" not in rows[2]  # adopted at another probe


def test_strings_of_every_record_end_at_their_nul():
    """The kernel copies a string up to its NUL into ring memory it does not
    zero: what follows is an older record's bytes, never part of the name."""
    d = Decoder(0)
    d.functions.add(_funcs((0x101, b"f\0ld_name", b"s.py\0ong_file_name.py", 0),
                           (0x201, b"g", b"s.py", 0)))
    t = d.calls(_calls((0x101, 0), (0x201, 0))).to_pydict()
    assert t["function"] == ["f", "g"] and t["file"] == ["s.py", "s.py"]
    imp = np.zeros(3, events.dtypes()["import_event"])
    imp["module"] = [b"json\0coder", b"json", b"os\0\xff\xfe"]
    b = d.imports(imp)
    assert b.column("module").to_pylist() == ["json", "json", "os"]
    assert len(b.column("module").dictionary) == 2  # one string per distinct name
    aud = np.zeros(2, events.dtypes()["audit_event"])
    aud["event"] = [b"open\0ort", b"import"]
    assert d.audit(aud).column("event").to_pylist() == ["open", "import"]
