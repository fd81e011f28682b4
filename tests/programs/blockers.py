"""Threads that block in known stacks, for off-CPU stacks (tests/test_offcpu.py).

argv: GO RESULT SECONDS. Prints its pid, waits until the file GO exists, then,
in three named threads at once: a -> b -> time.sleep(SECONDS); c -> d ->
lock.acquire() on a lock main holds for SECONDS; e -> os.read of a pipe main
writes to after SECONDS. Each thread measures its own blocked time with
time.monotonic (the oracle). Then f -> g -> gc.collect() in main, and there
the audit event scope.test (sys.audit, 3.8+). Writes RESULT
(JSON, by rename: tids, blocked seconds) and exits when its stdin closes (the
tracer resolves stacks from the living process's memory).
"""
import gc
import json
import os
import sys
import threading
import time

TIMES = {}
LOCK = threading.Lock()
PIPE = os.pipe()


def b(seconds):
    t0 = time.monotonic()
    time.sleep(seconds)
    TIMES["sleep"] = time.monotonic() - t0


def a(seconds):
    b(seconds)


def d():
    t0 = time.monotonic()
    LOCK.acquire()
    TIMES["lock"] = time.monotonic() - t0
    LOCK.release()


def c():
    d()


def e():
    t0 = time.monotonic()
    os.read(PIPE[0], 1)
    TIMES["read"] = time.monotonic() - t0


def g():
    gc.collect()
    sys.audit("scope.test", 1)


def f():
    g()


def main(go, result, seconds):
    print(os.getpid(), flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    LOCK.acquire()
    threads = [threading.Thread(target=a, args=(seconds,), name="sleeper"),
               threading.Thread(target=c, name="locker"),
               threading.Thread(target=e, name="reader")]
    for t in threads:
        t.start()
    time.sleep(seconds)
    LOCK.release()
    os.write(PIPE[1], b"x")
    for t in threads:
        t.join()
    tids = {t.name: t.native_id for t in threads}
    f()
    tmp = result + ".tmp"
    with open(tmp, "w") as out:
        json.dump({"pid": os.getpid(), "main": threading.get_native_id(), "tids": tids,
                   "times": TIMES, "version": sys.version}, out)
    os.rename(tmp, result)
    sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
