"""The ring buffer reader's arithmetic, on a fake ring: records that wrap the
end of the data area, one cut in two by it, busy and discarded headers, and
never a byte read past the data area's first mapping."""

from __future__ import annotations

import numpy as np

from scope_ebpf.ringbuf import _BUSY, _DISCARD, RingReader

PAYLOAD = np.dtype([("v", "<u8"), ("w", "<u8")])  # 24-byte records: 4096 % 24 = 16


def fake_ring(size: int = 4096) -> RingReader:
    r = RingReader.__new__(RingReader)
    r.size, r.mask, r.payload = size, size - 1, PAYLOAD
    r.dtype = np.dtype([("_len", "<u4"), ("_pgoff", "<u4"), ("v", "<u8"), ("w", "<u8")])
    r.stride = r.dtype.itemsize
    r._cons = np.zeros(1, "<u8")
    r._prod = np.zeros(1, "<u8")
    r._data = np.zeros(size, np.uint8)  # only the first mapping: reading beyond fails
    return r


def produce(r: RingReader, values: list[int], flags: int = 0) -> None:
    for v in values:
        rec = np.zeros(1, r.dtype)
        rec["_len"], rec["v"], rec["w"] = PAYLOAD.itemsize | flags, v, v * 2
        raw = rec.view(np.uint8)
        pos = int(r._prod[0])
        for i, b in enumerate(raw):
            r._data[(pos + i) & r.mask] = b
        r._prod[0] = pos + r.stride


def consume(r: RingReader) -> list[int]:
    parts, pos = r.peek()
    got = [int(v) for p in parts for v in p["v"]]
    for p in parts:
        assert (p["w"] == p["v"] * 2).all()
    r.release(pos)
    return got


def test_records_across_the_end_and_one_cut_by_it():
    r = fake_ring()
    seen: list[int] = []
    value = 0
    for batch in (100, 150, 37, 170, 1, 169):  # 627 records: wraps the 4 KiB area 3 times
        produce(r, list(range(value, value + batch)))
        value += batch
        seen += consume(r)
    assert seen == list(range(value))
    assert int(r._cons[0]) == value * r.stride


def test_busy_stops_and_discarded_are_skipped():
    r = fake_ring()
    produce(r, [0, 1])
    produce(r, [2], _DISCARD)
    produce(r, [3])
    produce(r, [4], _BUSY)
    produce(r, [5])
    assert consume(r) == [0, 1, 3]
    assert int(r._cons[0]) == 4 * r.stride  # the busy record and all after it wait
    r._data[4 * r.stride:4 * r.stride + 4] = np.frombuffer(
        np.uint32(PAYLOAD.itemsize).tobytes(), np.uint8)  # its producer commits
    assert consume(r) == [4, 5]
    assert r.drain().size == 0
