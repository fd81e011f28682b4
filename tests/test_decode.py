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
