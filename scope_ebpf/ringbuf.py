"""Batch reader for BPF ring buffers, without a Python callback per record.

The kernel exposes a ring buffer as two mappings of its map fd: the consumer
page (read-write) and the producer page followed by the data area (read-only,
data mapped twice so a record never wraps). Every buffer here carries records
of one fixed size, so the span between the consumer and producer positions is
an array of equally spaced records that numpy decodes in one step (two when
it wraps: the second mapping is never read, see peek()).
"""

from __future__ import annotations

import mmap

import numpy as np

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
PAGE = mmap.PAGESIZE


class RingReader:
    """Drains one ring buffer map whose records all have dtype ``payload``."""

    def __init__(self, map_fd: int, size: int, payload: np.dtype) -> None:
        self.size = size
        self.mask = size - 1
        self.dtype = np.dtype([("_len", "<u4"), ("_pgoff", "<u4")]
                              + [(n, payload.fields[n][0]) for n in payload.names])
        self.stride = (self.dtype.itemsize + 7) & ~7
        if self.stride != self.dtype.itemsize:
            raise ValueError("record payload size must be a multiple of 8")
        self.payload = payload
        self._cons_map = mmap.mmap(map_fd, PAGE, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data_map = mmap.mmap(map_fd, PAGE + 2 * size, mmap.MAP_SHARED,
                                   mmap.PROT_READ, offset=PAGE)
        self._cons = np.frombuffer(self._cons_map, "<u8", count=1)
        self._prod = np.frombuffer(self._data_map, "<u8", count=1)
        self._data = np.frombuffer(self._data_map, np.uint8, offset=PAGE)

    def pending_bytes(self) -> int:
        return int(self._prod[0]) - int(self._cons[0])

    def peek(self) -> tuple[list[np.ndarray], int]:
        """Every committed record, as views into the ring, and the position to
        release() once they are decoded: no copy, but the views die at release.

        Only the first mapping of the data area is read: a span that wraps comes
        as two views, and the one record cut by the end of the area as a copy.
        Reading through the second mapping would make its pages resident too,
        up to the ring's size again in RSS, for no data."""
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        n = (prod - cons) // self.stride
        if n <= 0:
            return [], cons
        start = cons & self.mask
        parts: list[np.ndarray] = []
        if start + n * self.stride <= self.size:
            parts.append(self._data[start:start + n * self.stride].view(self.dtype))
        else:
            k = (self.size - start) // self.stride  # whole records before the end
            if k:
                parts.append(self._data[start:start + k * self.stride].view(self.dtype))
            cut = start + k * self.stride
            rest = 0
            if cut < self.size:  # one record straddles the end: reassemble it
                head = self.size - cut
                rec = np.empty(self.stride, np.uint8)
                rec[:head] = self._data[cut:self.size]
                rec[head:] = self._data[:self.stride - head]
                parts.append(rec.view(self.dtype))
                rest, k = self.stride - head, k + 1
            if n > k:
                parts.append(self._data[rest:rest + (n - k) * self.stride].view(self.dtype))
        out: list[np.ndarray] = []
        used = 0
        for recs in parts:
            busy = (recs["_len"] & _BUSY) != 0
            stop = bool(busy.any())
            if stop:  # a producer is still writing: stop before it
                recs = recs[:int(busy.argmax())]
            used += len(recs)
            discarded = (recs["_len"] & _DISCARD) != 0
            if discarded.any():
                recs = recs[~discarded]
            if len(recs):
                out.append(recs)
            if stop:
                break
        return out, cons + used * self.stride

    def release(self, pos: int) -> None:
        self._cons[0] = pos

    def drain(self) -> np.ndarray:
        """Return every committed record (a copy) and release their space."""
        parts, pos = self.peek()
        out = np.concatenate(parts) if parts else np.empty(0, self.dtype)
        self.release(pos)
        return out

    def close(self) -> None:
        for name in ("_cons", "_prod", "_data"):
            setattr(self, name, None)
        self._cons_map.close()
        self._data_map.close()
