"""BPF maps through the bpf() syscall: the tracer's view of the kernel state.

Keys and values are raw bytes laid out as in bpf/scope.h (numpy records from
events.dtypes() or struct.pack). Per-CPU maps hold one value per possible
CPU, each padded to 8 bytes, as the kernel hands them to user space.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from functools import cache

from .attach import bpf_syscall

_LOOKUP, _UPDATE, _DELETE, _NEXT_KEY = 1, 2, 3, 4
_LOOKUP_BATCH = 24
_DELETE_BATCH = 27
_BATCH_ATTR = struct.Struct("<QQQQIIQQ")  # in_batch, out_batch, keys, values, count, fd, ...
_PERCPU_TYPES = {5, 6, 10}  # BPF_MAP_TYPE_PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
_ATTR = struct.Struct("<IIQQQ")  # map_fd, pad, key, value/next_key, flags


@cache
def possible_cpus() -> int:
    """CPUs the kernel may ever bring up: the length of per-CPU values."""
    with open("/sys/devices/system/cpu/possible") as f:
        n = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            n = max(n, int(hi or lo) + 1)
        return n


class Map:
    def __init__(self, fd: int, map_type: int, key_size: int, value_size: int,
                 max_entries: int) -> None:
        self.fd = fd
        self.type = map_type
        self.key_size = key_size
        self.max_entries = max_entries
        self.percpu = map_type in _PERCPU_TYPES
        self.cpu_size = (value_size + 7) & ~7
        self.value_size = self.cpu_size * possible_cpus() if self.percpu else value_size
        self._attr = ctypes.create_string_buffer(_ATTR.size)
        self._batch: _Batch | None = None

    def _call(self, cmd: int, key: bytes | None, value=None, flags: int = 0) -> None:
        kbuf = ctypes.create_string_buffer(key, self.key_size) if key is not None else None
        _ATTR.pack_into(self._attr, 0, self.fd, 0,
                        ctypes.addressof(kbuf) if kbuf is not None else 0,
                        ctypes.addressof(value) if value is not None else 0, flags)
        bpf_syscall(cmd, self._attr)

    def lookup(self, key: bytes) -> bytes | None:
        out = ctypes.create_string_buffer(self.value_size)
        try:
            self._call(_LOOKUP, key, out)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return out.raw

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if self.percpu and len(value) == self.cpu_size:  # same value on every CPU
            value = value * possible_cpus()
        buf = ctypes.create_string_buffer(value, self.value_size)
        self._call(_UPDATE, key, buf, flags)

    def delete(self, key: bytes) -> None:
        try:
            self._call(_DELETE, key)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    def keys(self) -> Iterator[bytes]:
        nxt = ctypes.create_string_buffer(self.key_size)
        key: bytes | None = None
        while True:
            try:
                self._call(_NEXT_KEY, key, nxt)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            key = nxt.raw
            yield key

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def dump(self) -> tuple[bytes, bytes, int]:
        """Every (key, value) in a few BPF_MAP_LOOKUP_BATCH calls instead of two
        syscalls per entry: (keys, values, count), keys and values concatenated.
        The buffers are kept between calls and grow with the map's contents:
        a per-CPU map of 4,096 entries costs megabytes to allocate each time."""
        if self._batch is None:
            self._batch = _Batch(self, min(self.max_entries, 256))
        b = self._batch
        out_k, out_v, n_total = [], [], 0
        first = True
        while True:
            _BATCH_ATTR.pack_into(b.attr, 0, 0 if first else ctypes.addressof(b.token_in),
                                  ctypes.addressof(b.token_out), ctypes.addressof(b.keys),
                                  ctypes.addressof(b.values), b.chunk, self.fd, 0, 0)
            done = False
            try:
                bpf_syscall(_LOOKUP_BATCH, b.attr)
            except OSError as e:
                if e.errno == errno.ENOSPC and first and b.chunk < self.max_entries:
                    # a hash bucket holds more than a batch: start over with more room
                    b = self._batch = _Batch(self, min(self.max_entries, b.chunk * 4))
                    out_k, out_v, n_total = [], [], 0
                    continue
                if e.errno != errno.ENOENT:
                    raise
                done = True  # the last (possibly partial) batch
            n = struct.unpack_from("<I", b.attr, 32)[0]
            out_k.append(ctypes.string_at(b.keys, n * self.key_size))
            out_v.append(ctypes.string_at(b.values, n * self.value_size))
            n_total += n
            if done:
                if n_total > b.chunk and b.chunk < min(self.max_entries, 4096):
                    self._batch = _Batch(self, min(self.max_entries, 4096, n_total))
                return b"".join(out_k), b"".join(out_v), n_total
            ctypes.memmove(b.token_in, b.token_out, 8)
            first = False

    def delete_many(self, keys: list[bytes]) -> None:
        """Delete these keys in a few BPF_MAP_DELETE_BATCH calls (one syscall per
        key costs ~1 µs each: an exited process leaves thousands); keys that
        are gone already are skipped."""
        i = 0
        attr = ctypes.create_string_buffer(_BATCH_ATTR.size)
        # one buffer, walked by offset: a batch stops at each key that is gone
        buf = ctypes.create_string_buffer(b"".join(k.ljust(self.key_size, b"\0")
                                                   for k in keys))
        while i < len(keys):
            n = min(len(keys) - i, 4096)
            _BATCH_ATTR.pack_into(attr, 0, 0, 0, ctypes.addressof(buf) + i * self.key_size, 0,
                                  n, self.fd, 0, 0)
            try:
                bpf_syscall(_DELETE_BATCH, attr)
                i += n
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                # stopped at a key that is gone: those before it are deleted
                i += struct.unpack_from("<I", attr, 32)[0] + 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Batch:
    """Buffers of one BPF_MAP_LOOKUP_BATCH call of ``chunk`` entries."""

    def __init__(self, m: Map, chunk: int) -> None:
        self.chunk = max(chunk, 1)
        self.keys = ctypes.create_string_buffer(m.key_size * self.chunk)
        self.values = ctypes.create_string_buffer(m.value_size * self.chunk)
        self.token_in = ctypes.create_string_buffer(8)
        self.token_out = ctypes.create_string_buffer(8)
        self.attr = ctypes.create_string_buffer(_BATCH_ATTR.size)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)
