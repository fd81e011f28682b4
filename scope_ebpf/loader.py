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

Compiling takes 3-4 s of CPU (clang and LLVM); loading the result takes tens
of milliseconds. So what bcc produced is kept in a cache (``CACHE_DIR``, root
only: bytecode from a place others can write would run in the kernel): each
program's instructions with the map fds bcc patched in replaced by map
numbers, and each map's definition as the kernel reports it. A later request
with the same key (the request, the spliced source and its headers, bcc's
version, the kernel release) creates the maps and loads the programs directly
with bpf(2), without bcc; the verifier still checks every program. An entry
that cannot be used is removed and the program compiled again.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import socket
import struct
import sys

CACHE_DIR = os.environ.get("SCOPE_EBPF_BPF_CACHE", "/var/cache/scope-ebpf/bpf")  # "off": none
_FORMAT = 1
CACHE_ENTRIES = 64                # entries kept (~200 KB each), the least recently used go
_NR_BPF = 321                     # x86-64
_MAP_CREATE, _PROG_LOAD, _OBJ_GET_INFO_BY_FD = 0, 5, 15
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1
_PROG_TYPES = {"kprobe": 2, "tracepoint": 5, "perf_event": 7}  # BPF_PROG_TYPE_*, bcc's too


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    req = json.loads(sys.stdin.read())
    source = _source(req["src"])
    key = _cache_key(req, source)
    cached = _load_cached(req, key) if key else None
    if cached is not None:
        meta, fds = cached
        socket.send_fds(sock, [json.dumps(meta).encode()], fds)
        return
    from bcc import BPF

    try:
        b = BPF(text=source.encode(), cflags=req["cflags"])
    except Exception as e:  # bcc raises bare Exception; its compiler output is on stderr
        sys.exit(f"compile failed: {e}")
    fds: list[int] = []
    meta: dict = {"progs": {}, "maps": {}}
    for name, kind, fn, attach in _programs(req):
        meta["progs"][name] = len(fds)
        fds.append(b.load_func(fn.encode(), _PROG_TYPES[kind], attach_type=attach).fd)
    for name in req["maps"]:
        t = b.get_table(name)
        meta["maps"][name] = {
            "fd": len(fds), "type": t.ttype, "key_size": _size(t, "Key"),
            # per-CPU tables: bcc's Leaf is an array over CPUs, sLeaf one CPU's value
            "value_size": _size(t, "sLeaf" if hasattr(t, "sLeaf") else "Leaf"),
            "max_entries": t.max_entries}
        fds.append(t.map_fd)
    if key:
        _store(key, req, b, meta, fds)
    socket.send_fds(sock, [json.dumps(meta).encode()], fds)


def _programs(req: dict) -> list[tuple[str, str, str, int]]:
    """(name the tracer knows it by, kind, function in the source, expected attach
    type or -1) of every program a request asks for."""
    return ([(n, "kprobe", n, req["attach_type"]) for n in req["kprobes"]]
            + [(n, "perf_event", n, -1) for n in req.get("perf_events", ())]
            + [(tp, "tracepoint", "tracepoint__" + tp.replace(":", "__"), -1)
               for tp in req["tracepoints"]])


# -- the cache ---------------------------------------------------------------

def _cache_key(req: dict, source: str) -> str | None:
    """The cache entry's name, or None if there is no usable cache."""
    if CACHE_DIR == "off" or os.geteuid() != 0 or os.uname().machine != "x86_64":
        return None  # (the bpf(2) number and the instructions' layout are x86-64's)
    bcc_version = _bcc_version()
    if bcc_version is None:
        return None
    h = hashlib.sha256()
    bpf_dir = os.path.dirname(req["src"])
    for part in (str(_FORMAT), json.dumps(req, sort_keys=True), source, bcc_version,
                 os.uname().release):
        h.update(part.encode() + b"\0")
    for name in sorted(os.listdir(bpf_dir)):  # the headers the source includes
        if name.endswith((".h", ".c")):
            with open(os.path.join(bpf_dir, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def _bcc_version() -> str | None:
    """bcc's version, read from its package without importing it (that loads LLVM)."""
    import importlib.util

    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        with open(os.path.join(list(spec.submodule_search_locations)[0], "version.py")) as f:
            return f.read()
    except OSError:
        return None


def _safe_dir(path: str, create: bool) -> bool:
    """True if ``path`` is a directory only root can write (made so if asked)."""
    try:
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    r = libc.syscall(_NR_BPF, cmd, attr, len(attr))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _map_info(fd: int) -> dict:
    info = ctypes.create_string_buffer(88)
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
    _bpf(_OBJ_GET_INFO_BY_FD, attr)
    mtype, _id, ksize, vsize, entries, flags = struct.unpack_from("<6I", info, 0)
    name = info.raw[24:40].split(b"\0", 1)[0].decode()
    return {"type": mtype, "key_size": ksize, "value_size": vsize, "max_entries": entries,
            "flags": flags, "name": name}


def _store(key: str, req: dict, b, meta: dict, fds: list[int]) -> None:
    """Write what bcc made (programs' instructions, maps' definitions) under ``key``;
    nothing if the programs use anything but plain map references."""
    try:
        maps: list[dict] = []
        by_fd: dict[int, int] = {}
        progs = {}
        for name, kind, fn, attach in _programs(req):
            insns = bytearray(b.dump_func(fn.encode()))
            fixups = []
            for i in range(0, len(insns), 8):
                if insns[i] == _LD_IMM64 and insns[i + 1] >> 4:
                    if insns[i + 1] >> 4 != _PSEUDO_MAP_FD:
                        return  # global data or BTF objects: not cached
                    fd = struct.unpack_from("<i", insns, i + 4)[0]
                    if fd not in by_fd:
                        by_fd[fd] = len(maps)
                        maps.append(_map_info(fd))
                    fixups.append((i // 8, by_fd[fd]))
                    struct.pack_into("<i", insns, i + 4, 0)
            progs[name] = {"kind": kind, "fn": fn, "attach_type": attach,
                           "insns": insns.hex(), "fixups": fixups}
        named = {}
        for name, m in meta["maps"].items():
            fd = fds[m["fd"]]
            if fd not in by_fd:  # a map no program uses: not kept here
                by_fd[fd] = len(maps)
                maps.append(_map_info(fd))
            named[name] = by_fd[fd]
        from bcc import lib

        entry = {"format": _FORMAT, "maps": maps, "progs": progs, "meta": meta, "named": named,
                 "license": lib.bpf_module_license(b.module).decode(),
                 "kern_version": lib.bpf_module_kern_version(b.module)}
        if not _safe_dir(CACHE_DIR, create=True):
            return
        path = os.path.join(CACHE_DIR, key + ".json")
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, path)
        _prune(CACHE_DIR)
    except (OSError, ValueError, KeyError) as e:
        print(f"bpf cache: not stored: {e}", file=sys.stderr)


def _prune(directory: str, keep: int = CACHE_ENTRIES) -> None:
    """Remove all but the ``keep`` entries used last (a hit touches its entry):
    every new version or checkout of the program adds one."""
    entries = []
    for name in os.listdir(directory):
        if name.endswith(".json"):
            try:
                entries.append((os.stat(os.path.join(directory, name)).st_mtime, name))
            except OSError:
                continue
    for _mtime, name in sorted(entries, reverse=True)[keep:]:
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _load_cached(req: dict, key: str) -> tuple[dict, list[int]] | None:
    """(meta, fds) as a compile would give them, from the cache; None on a miss."""
    path = os.path.join(CACHE_DIR, key + ".json")
    if not _safe_dir(CACHE_DIR, create=False):
        return None
    made: list[int] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & 0o022:
            return None
        with os.fdopen(fd) as f:
            entry = json.load(f)
        if entry.get("format") != _FORMAT:
            raise ValueError("old format")
        map_fds = []
        for m in entry["maps"]:
            attr = ctypes.create_string_buffer(72)
            struct.pack_into("<7I", attr, 0, m["type"], m["key_size"], m["value_size"],
                             m["max_entries"], m["flags"], 0, 0)
            attr[28:28 + len(m["name"][:15])] = m["name"][:15].encode()
            map_fds.append(_bpf(_MAP_CREATE, attr))
            made.append(map_fds[-1])
        license = ctypes.create_string_buffer(entry["license"].encode())
        prog_fds = {}
        for name, p in entry["progs"].items():
            insns = bytearray.fromhex(p["insns"])
            for idx, m in p["fixups"]:
                struct.pack_into("<i", insns, idx * 8 + 4, map_fds[m])
            buf = (ctypes.c_char * len(insns)).from_buffer(insns)
            attr = ctypes.create_string_buffer(128)
            struct.pack_into("<IIQQIIQII", attr, 0, _PROG_TYPES[p["kind"]], len(insns) // 8,
                             ctypes.addressof(buf), ctypes.addressof(license), 0, 0, 0,
                             entry["kern_version"], 0)
            pname = p["fn"][:15].encode()
            attr[48:48 + len(pname)] = pname
            struct.pack_into("<I", attr, 68, max(p["attach_type"], 0))
            prog_fds[name] = _bpf(_PROG_LOAD, attr)
            made.append(prog_fds[name])
        os.utime(path)  # used: kept by _prune
        meta = entry["meta"]
        fds: list[int] = []
        for name in list(meta["progs"]):
            meta["progs"][name] = len(fds)
            fds.append(prog_fds[name])
        for name, m in meta["maps"].items():
            m["fd"] = len(fds)
            fds.append(map_fds[entry["named"][name]])
        meta["cached"] = True
        if set(meta["progs"]) != {name for name, *_ in _programs(req)} or (
                set(meta["maps"]) != set(req["maps"])):
            raise ValueError("entry does not answer the request")
        return meta, fds
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as e:
        for fd in made:
            os.close(fd)
        print(f"bpf cache: entry not used ({e}): compiling", file=sys.stderr)
        try:
            os.unlink(path)
        except OSError:
            pass
        return None


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
