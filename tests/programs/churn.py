"""A short-lived program for the daemon's churn test (~50 ms with start-up):
known calls and explicit collections from its first lines, then it ends."""

import gc
import sys
import time

T0 = time.perf_counter()
CALLS = int(sys.argv[2]) if len(sys.argv) > 2 else 200


def f(i):
    return i


def g(n):
    for i in range(n):
        yield f(i)


total = sum(g(CALLS))  # f: CALLS calls
gc.collect(0)
gc.collect(1)
gc.collect(2)
while time.perf_counter() - T0 < 0.03:  # no Python calls: perf_counter is C
    pass
