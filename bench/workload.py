"""The benchmark's call-heavy CPython workload (run by bench/bench.py).

usage: workload.py SIZE [SEMAPHORE_ADDR | stdin | count] [REPEAT_SECONDS]

Recursive calls plus a realistic mix (methods, a generator, a little file
I/O), under the same profile hook `scope-ebpf run` installs on 3.11, so the
hook's own cost is in the baseline. With a semaphore address it first waits
until the function__entry probe is live in this process (a tracer attached),
so every variant times the same, fully traced section; with `stdin` it waits
for a line instead (for a tracer that says when it is ready). `count` reports
how many Python calls the section makes instead. REPEAT_SECONDS repeats the
section for that long (the memory soak).
"""

import json
import os
import sys
import tempfile
import time

START_NS = time.time_ns()


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def norm2(self):
        return self.x * self.x + self.y * self.y

    def moved(self, dx):
        return Point(self.x + dx, self.y)


def squares(n):
    for i in range(n):
        yield i * i


def io(path, i):
    with open(path, "w") as f:
        f.write(str(i))
    with open(path) as f:
        return len(f.read())


def work(size):
    total = fib(size)
    p = Point(1, 2)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x")
        for i in range(size * 1000):
            p = p.moved(1)
            total += p.norm2() % 7
            total += sum(squares(5))
            if i % 2000 == 0:
                total += io(path, i)
    return total


def semaphore(addr):
    with open("/proc/self/mem", "rb") as f:
        f.seek(addr)
        return int.from_bytes(f.read(2), "little")


def main():
    size = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    if mode == "count":
        calls = 0

        def count(frame, event, arg):
            nonlocal calls
            if event == "call":
                calls += 1

        sys.setprofile(count)
        work(size)
        sys.setprofile(None)
        print(json.dumps({"calls": calls - 1}))  # minus the setprofile(None) return path
        return
    if sys.version_info[:2] == (3, 11):
        sys.setprofile(slice)  # the hook `scope-ebpf run` installs on 3.11
    if mode == "stdin":
        sys.stdin.readline()
    elif mode:
        addr, deadline = int(mode, 0), time.monotonic() + 60
        while semaphore(addr) == 0:
            if time.monotonic() > deadline:
                sys.exit("probes never became live")
            time.sleep(0.01)
    repeat = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    t0 = time.perf_counter()
    work(size)
    while time.perf_counter() - t0 < repeat:
        work(size)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"elapsed_s": elapsed, "start_ns": START_NS}), flush=True)


main()
