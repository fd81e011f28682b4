"""Call paths, self time and off-CPU time with known answers.

shape: sleeper() sleeps 100 ms five times (off-CPU), spin() computes; both
       under main().
flat N: every function sits on exactly one path, so the exact per-function
       self times of `functions` are the exact per-path totals a sampled
       flame graph must estimate: main -> a -> leaf_a, main -> b -> leaf_b (x2).
"""

import sys
import time


def work(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


def sleeper():
    time.sleep(0.1)


def spin():
    return work(100000)


def leaf_a():
    s = 0
    for i in range(30):
        s += i * i
    return s


def leaf_b():
    s = 0
    for i in range(15):
        s += i * i
    return s


def a():
    s = 0
    for i in range(20):
        s += i * i
    return s + leaf_a()


def b():
    s = 0
    for i in range(10):
        s += i * i
    return s + leaf_b() + leaf_b()


def main(mode, n):
    if mode == "shape":
        for _ in range(5):
            sleeper()
            spin()
    else:
        for _ in range(n):
            a()
            b()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
