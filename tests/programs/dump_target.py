"""Threads that sit in known stacks, for `scope-ebpf dump` against py-spy.

Three named threads (alpha, beta, gamma) call a -> b -> c -> time.sleep with
different depths and lines; the main thread sleeps in main -> idle. Each
thread records its own stack (traceback.extract_stack on the line of its
sleep) under its native thread id; once all have, the main thread writes them
to READY (JSON, by rename: the handshake) on the line where it then sleeps. Optional DEPTH: a fourth
thread, "deep", recurses that many levels before sleeping.
Python 3.8+, no imports beyond the standard library.
"""

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
    try:  # the OS thread name (/proc/PID/task/TID/comm) = the Python one, on every version
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def record(frames):
    with lock:
        stacks[threading.get_native_id()] = {
            "name": threading.current_thread().name,
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
    name_os_thread("gamma")
    c(0)


def deep(n):
    if n:
        return deep(n - 1)
    record(traceback.extract_stack()); time.sleep(3600)  # noqa: E702 - same line


def named(name, fn, *args):
    def run():
        name_os_thread(name)
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
    threads = [named("alpha", a, 0), named("beta", a, 2),
               threading.Thread(target=gamma_entry, name="gamma", daemon=True)]
    if DEPTH:
        threads.append(named("deep", deep, DEPTH))
    for t in threads:
        t.start()
    for _ in threads:
        recorded.acquire()
    idle()


if __name__ == "__main__":
    name_os_thread("MainThread")
    main()
