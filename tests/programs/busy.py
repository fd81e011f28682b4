"""Calls as fast as it can for SECONDS (under the 3.11 profile hook)."""
import sys
import time


def f(n):
    return n + 1


def main(seconds):
    print("ready", flush=True)
    sys.setprofile(slice)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        for _ in range(1000):
            i = f(i)


main(float(sys.argv[1]))
