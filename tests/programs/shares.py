"""CPU-bound with known time shares, for the stack sampler (tests/test_stacks.py).

argv: GO RESULT SECONDS DEPTH. Prints its pid, waits until the file GO exists,
then runs rounds of f, g and h (the same inner loop, 6:3:1 iterations, and a
filler of varying length between rounds) for
SECONDS of its own CPU time, measuring each one's CPU time with
time.thread_time (the oracle); then recurses DEPTH frames deep and spins there
for a while. Writes RESULT (JSON, by rename) and exits: the shares, its tid,
the call chain (function, first line, current line) of f's inner loop as the
interpreter sees it, and the frame count at the bottom of the recursion.
"""
import json
import os
import sys
import threading
import time

UNIT = 20000
CHAIN = []


def spin(n):
    x = 0
    for i in range(n):
        x += i
    return x


def f():
    if not CHAIN:  # once: the frames to here, this one at its call of spin (below)
        code = f.__code__
        CHAIN.extend(chain(2) + [[code.co_name, code.co_filename, code.co_firstlineno,
                                  code.co_firstlineno + 5]])
    return spin(6 * UNIT)


def g():
    return spin(3 * UNIT)


def h():
    return spin(1 * UNIT)


def chain(skip):
    """The frames from ``skip`` frames up to the outermost, outermost first."""
    frame = sys._getframe(skip)
    out = []
    while frame is not None:
        code = frame.f_code
        out.append([getattr(code, "co_qualname", code.co_name), code.co_filename,
                    code.co_firstlineno, frame.f_lineno])
        frame = frame.f_back
    return out[::-1]


def deep(n, seconds):
    if n > 1:
        return deep(n - 1, seconds)
    frames = len(chain(1)) + 1  # this frame and its callers, and spin
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        spin(UNIT)
    return frames


def main(go, result, seconds, depth):
    print(os.getpid(), flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    spent = {"f": 0.0, "g": 0.0, "h": 0.0}
    work = {"f": f, "g": g, "h": h}
    start = time.thread_time()
    rounds = 0
    while time.thread_time() - start < seconds:
        for name, fn in work.items():
            t0 = time.thread_time()
            fn()
            spent[name] += time.thread_time() - t0
        # a filler (main's own spin call, not counted) of a length that moves each
        # round's phase against a periodic sampler evenly (golden ratio steps): no
        # aliasing, and errors far below random sampling's
        rounds += 1
        spin(int(rounds * 0.6180339887 % 1.0 * 2 * UNIT))
    total = sum(spent.values())
    frames = deep(depth, 0.4) if depth else 0
    out = {"pid": os.getpid(), "tid": threading.get_native_id(),
           "shares": {k: v / total for k, v in spent.items()},
           "chain": CHAIN, "spin": [spin.__code__.co_firstlineno,
                                         spin.__code__.co_firstlineno + 4],
           "deep_frames": frames, "version": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    with open(result + ".tmp", "w") as fh:
        json.dump(out, fh)
    os.rename(result + ".tmp", result)


main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
