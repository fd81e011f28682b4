"""Compile and load the BPF program in a short-lived child process.

bcc links LLVM/clang into the process that imports it (about 60 MB of code
pages) and compiling adds about 100 MB of heap that is never returned. The
tracer only needs the results: program and map fds. So a child compiles and
loads, passes every fd back over a Unix socket (SCM_RIGHTS) with what each
one is, and exits; the kernel objects live on in the tracer's fds. The child
attaches nothing that outlives it (bcc's automatic tracepoint attachments
die with it); the tracer attaches everything itself.

Run as ``python -P loader.py FD`` with a JSON request on stdin; it imports
nothing from this package.
"""

from __future__ import annotations

import ctypes
import json
import socket
import sys


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    req = json.loads(sys.stdin.read())
    from bcc import BPF

    try:
        b = BPF(text=_source(req["src"]).encode(), cflags=req["cflags"])
    except Exception as e:  # bcc raises bare Exception; its compiler output is on stderr
        sys.exit(f"compile failed: {e}")
    fds: list[int] = []
    meta: dict = {"progs": {}, "maps": {}}
    for name in req["kprobes"]:
        meta["progs"][name] = len(fds)
        fds.append(b.load_func(name.encode(), BPF.KPROBE, attach_type=req["attach_type"]).fd)
    for name in req.get("perf_events", ()):
        meta["progs"][name] = len(fds)
        fds.append(b.load_func(name.encode(), BPF.PERF_EVENT).fd)
    for tp in req["tracepoints"]:
        fn = "tracepoint__" + tp.replace(":", "__")
        meta["progs"][tp] = len(fds)
        fds.append(b.load_func(fn.encode(), BPF.TRACEPOINT).fd)
    for name in req["maps"]:
        t = b.get_table(name)
        meta["maps"][name] = {
            "fd": len(fds), "type": t.ttype, "key_size": _size(t, "Key"),
            # per-CPU tables: bcc's Leaf is an array over CPUs, sLeaf one CPU's value
            "value_size": _size(t, "sLeaf" if hasattr(t, "sLeaf") else "Leaf"),
            "max_entries": t.max_entries}
        fds.append(t.map_fd)
    socket.send_fds(sock, [json.dumps(meta).encode()], fds)


def _source(path: str) -> str:
    """The program's text with its ``#include "NAME.bpf.c"`` lines replaced by those
    files: bcc treats only functions of the main file as programs (and rewrites map
    calls only there), so per-probe-set sources are spliced in, not included."""
    import os
    import re

    with open(path) as f:
        text = f.read()

    def splice(m: re.Match) -> str:
        with open(os.path.join(os.path.dirname(path), m.group(1))) as f:
            return f.read()

    return re.sub(r'^#include "([\w.]+\.bpf\.c)"$', splice, text, flags=re.M)


def _size(table, attr: str) -> int:
    try:
        return ctypes.sizeof(getattr(table, attr))
    except (AttributeError, TypeError):  # ring buffers have no key/value type
        return 0


if __name__ == "__main__":
    main()
