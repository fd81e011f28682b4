"""A program with known behaviour for the report tests:
- hot(): most of the CPU time, 300 calls;
- nap(): one 200 ms sleep, off-CPU;
- three forced full collections over a large object graph (GC pauses);
- steady(i): 400 calls of ~50 us, calls 200-239 made 50x slower (~2.5 ms);
- fib(): recursion (nested activations of one function on one path), twice, in a
  thread named fib-worker that runs alone after the rest."""

import gc
import threading
import time


def spin(ns):
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def hot():
    spin(2_000_000)


def nap():
    time.sleep(0.2)


def churn():
    keep = [{"i": i, "l": [i] * 3} for i in range(300_000)]
    for _ in range(3):
        gc.collect()
    return len(keep)


def steady(i):
    spin(2_500_000 if 200 <= i < 240 else 50_000)


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def fibs():
    fib(17)
    fib(18)


def main():
    for _ in range(300):
        hot()
    nap()
    churn()
    for i in range(400):
        steady(i)
    worker = threading.Thread(target=fibs, name="fib-worker")
    worker.start()
    worker.join()


main()
