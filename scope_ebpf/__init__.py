"""scope-ebpf: an eBPF tracer for CPython processes."""

__version__ = "0.1.0"
