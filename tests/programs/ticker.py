"""Ticks (10 ms sleeps) until the file argv[1] exists, then argv[2] more, then exits:
a tracer attaches while it waits, and the test creates the file once it has."""
import os
import sys
import time


def tick():
    time.sleep(0.01)


def main(go, after):
    print(os.getpid(), flush=True)
    sys.setprofile(slice)  # CPython 3.11 fires function probes only under a hook
    while not os.path.exists(go):
        tick()
    for _ in range(after):
        tick()


main(sys.argv[1], int(sys.argv[2]))
