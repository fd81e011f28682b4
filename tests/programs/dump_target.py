"""Threads that sit in known stacks, for `scope-ebpf dump` against py-spy.

Three threads started by ``threading`` (alpha, beta with its attributes in a
dict, gamma-γ of a Thread subclass and a name that is not Latin-1) call a -> b
-> c -> time.sleep with different depths and lines; a fourth, started by
``_thread.start_new_thread`` and never passing through ``threading``, has no
Python name; the main thread sleeps in main -> idle.
Python and OS names differ: beta's OS name is set to "os-beta" (prctl), the
others are left as the OS has them (the executable's name; 3.14+ sets it from
``Thread.name``). Each thread records its own stack (traceback.extract_stack on
the line of its sleep) and Python name (None for the _thread one) under its
native thread id; once all have, the main thread writes them to READY (JSON, by
rename: the handshake) on the line where it then sleeps. Optional DEPTH: a
fifth thread, "deep", recurses that many levels before sleeping.
Python 3.8+, no imports beyond the standard library.
"""

import _thread
import ctypes
import json
import os
import sys
import threading
import time
import traceback

READY = sys.argv[1]
DEPTH = int(sys.argv[2]) if len(sys.argv) > 2 else 0
stacks = {}
lock = threading.Lock()
recorded = threading.Semaphore(0)


def name_os_thread(name):
    ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME: comm


def record(frames, python_name=True):
    # current_thread() would register a _thread thread in threading (as Dummy-N)
    name = threading.current_thread().name if python_name else None
    with lock:
        stacks[threading.get_native_id()] = {
            "name": name,
            "frames": [[f.name, f.filename, f.lineno] for f in reversed(frames)],
        }
    recorded.release()


def c(n):
    if n > 0:
        return c(n - 1)
    record(traceback.extract_stack()); time.sleep(3600)  # noqa: E702 - same line


def b(n):
    x = n + 1
    return c(x - 1)


def a(n):
    return b(n)


def gamma_entry():
    c(0)


def unnamed_entry():
    record(traceback.extract_stack(), False); time.sleep(3600)  # noqa: E702 - same line


def deep(n):
    if n:
        return deep(n - 1)
    record(traceback.extract_stack()); time.sleep(3600)  # noqa: E702 - same line


class Worker(threading.Thread):
    """A subclass with an attribute of its own: its instances have keys of their own."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.extra = 1


def named(name, fn, *args, os_name=None):
    def run():
        if os_name:
            name_os_thread(os_name)
        fn(*args)
    return threading.Thread(target=run, name=name, daemon=True)


def idle():
    finish(traceback.extract_stack()); time.sleep(3600)  # noqa: E702 - same line


def finish(frames):
    """Record the main thread, then write every stack to READY."""
    record(frames)
    with lock:
        data = {str(k): v for k, v in stacks.items()}
    with open(READY + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "threads": data}, f)
    os.rename(READY + ".tmp", READY)


def main():
    threads = [named("alpha", a, 0), named("beta", a, 2, os_name="os-beta"),
               Worker(target=gamma_entry, name="gamma-\u03b3", daemon=True)]
    if DEPTH:
        threads.append(named("deep", deep, DEPTH))
    vars(threads[1])  # beta's attributes in a dict of its own (3.11+ keep them without one)
    for t in threads:
        t.start()
    ended = threading.Thread(target=int)  # leaves a deleted entry in threading._active
    ended.start()
    ended.join()
    _thread.start_new_thread(unnamed_entry, ())
    for _ in range(len(threads) + 1):
        recorded.acquire()
    idle()


if __name__ == "__main__":
    main()
