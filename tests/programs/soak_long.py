"""A long-lived program for the daemon soak: a few calls and a collection
every half second until its time is up (argv: tag, seconds)."""

import gc
import sys
import time


def f(i):
    return i


END = time.monotonic() + float(sys.argv[2])
while time.monotonic() < END:
    for i in range(20):
        f(i)
    gc.collect(0)
    time.sleep(0.5)
