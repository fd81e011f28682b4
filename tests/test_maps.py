"""BPF maps through the bpf() syscall (scope_ebpf/maps.py), on real kernel maps."""

from __future__ import annotations

import ctypes
import struct

import pytest

from scope_ebpf.attach import bpf_syscall
from scope_ebpf.maps import Map, u32

pytestmark = pytest.mark.kernel

_MAP_CREATE, _HASH = 0, 1


def _hash_map(entries: int) -> Map:
    attr = ctypes.create_string_buffer(struct.pack("<IIIII", _HASH, 4, 8, entries, 0), 128)
    return Map(bpf_syscall(_MAP_CREATE, attr), _HASH, 4, 8, entries)


def test_delete_many_skips_keys_that_are_gone_and_deletes_every_other():
    """A batch delete stops at each key the map lacks: every key present is
    deleted all the same, in one pass over one buffer (it was rebuilt for each
    missing key: the fleet soak's daemon spent its CPU there), and keys not
    asked for stay."""
    m = _hash_map(20_000)
    try:
        for k in range(0, 12_000, 2):
            m.update(u32(k), struct.pack("<Q", k))
        m.delete_many([u32(k) for k in range(10_000)])  # half of them not in the map
        left = sorted(struct.unpack("<I", k)[0] for k in m.keys())
        assert left == list(range(10_000, 12_000, 2))
        m.delete_many([])
        m.delete_many([u32(1), u32(3)])  # none present
        assert len(list(m.keys())) == 1_000
    finally:
        m.close()
