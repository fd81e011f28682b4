"""A process for the daemon tests: TAG (in argv for selectors), DELAY s of
sleep (so the daemon has adopted it), then N calls of work() each followed by
an explicit gen-0 collection, then LINGER s of sleep."""

import gc
import sys
import time


def work(i):
    return i * 2


def main():
    _tag, delay, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    linger = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    time.sleep(delay)
    for i in range(n):
        work(i)
        gc.collect(0)
    print("done", flush=True)
    time.sleep(linger)


main()
