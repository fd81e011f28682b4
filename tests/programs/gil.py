"""GIL contention: two threads spin in pure Python (no calls inside `spin`, so
every hand-over of the GIL happens inside it), a third sleeps in `nap`.

Prints one JSON line per thread: its name, native tid, wall and CPU seconds
(time.thread_time) of its work; for a spinner, wall - CPU is the time it
spent off the CPU, which on a machine with a core per thread is the time it
waited for the GIL.
"""

import json
import sys
import threading
import time

SPIN = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000
NAPS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
results = []


def spin(n):
    x = 0
    while n:
        x += n
        n -= 1
    return x


def nap(times):
    for _ in range(times):
        time.sleep(0.01)


def work(fn, arg):
    w0, c0 = time.perf_counter(), time.thread_time()
    fn(arg)
    results.append({"name": threading.current_thread().name, "tid": threading.get_native_id(),
                    "wall": time.perf_counter() - w0, "cpu": time.thread_time() - c0})


def main():
    threads = [threading.Thread(target=work, args=(spin, SPIN), name=f"spinner-{i}")
               for i in range(2)]
    threads.append(threading.Thread(target=work, args=(nap, NAPS), name="napper"))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        print(json.dumps(r))


main()
