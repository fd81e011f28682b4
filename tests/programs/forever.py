import os
import sys
import time


def tick():
    time.sleep(0.01)


def main(seconds):
    print(os.getpid(), flush=True)
    end = time.monotonic() + seconds
    sys.setprofile(slice)  # CPython 3.11 fires function probes only under a hook
    while time.monotonic() < end:
        tick()


main(float(sys.argv[1]))
