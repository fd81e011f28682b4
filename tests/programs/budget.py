"""A process for the budgets test (argv: tag, mode, amount): "hot" calls f()
in a loop for `amount` seconds of its own CPU; "calm" calls g() `amount`
times, 2 ms apart."""

import sys
import time


def f():
    pass


def g():
    pass


if sys.argv[2] == "hot":
    end = time.thread_time() + float(sys.argv[3])
    while time.thread_time() < end:
        for _ in range(1000):
            f()
else:
    for _ in range(int(sys.argv[3])):
        g()
        time.sleep(0.002)
