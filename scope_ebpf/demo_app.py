"""The workload ``make demo`` traces: about a second of deterministic Python.

It runs on its own (``python3 demo_app.py``) and uses only the standard library,
so the demo can start it with the system interpreter that has the USDT probes.
Each part exercises one thing the tracer records:

* ``fib``                      -- a recursive function (many short calls, deep stacks)
* ``Vector`` / ``Body.step``   -- classes and methods (a tiny n-body simulation)
* ``primes``                   -- a generator (each resumption is a call)
* ``make_cycles`` + ``gc.collect()`` -- cyclic garbage and an explicit full collection
* ``sleeper``                  -- a thread that sleeps 50 ms (an off-CPU interval)
* ``write_files`` / ``read_files`` -- a little file I/O in a temporary directory
* ``crunch`` x 2 threads       -- CPU-bound threads that take turns with the GIL
"""

from __future__ import annotations

import gc
import itertools
import os
import tempfile
import threading
import time


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Vector:
    __slots__ = ("x", "y")

    def __init__(self, x: float, y: float) -> None:
        self.x = x
        self.y = y

    def add(self, other: Vector) -> Vector:
        return Vector(self.x + other.x, self.y + other.y)

    def scale(self, k: float) -> Vector:
        return Vector(self.x * k, self.y * k)


class Body:
    def __init__(self, i: int) -> None:
        self.pos = Vector(float(i), float(i * i % 7))
        self.vel = Vector(0.0, 0.0)

    def pull(self, other: Body) -> Vector:
        dx = other.pos.x - self.pos.x
        dy = other.pos.y - self.pos.y
        d2 = dx * dx + dy * dy + 0.01
        return Vector(dx / d2, dy / d2)

    def step(self, others: list[Body], dt: float) -> None:
        for o in others:
            if o is not self:
                self.vel = self.vel.add(self.pull(o).scale(dt))
        self.pos = self.pos.add(self.vel.scale(dt))


def simulate(n_bodies: int, steps: int) -> float:
    bodies = [Body(i) for i in range(n_bodies)]
    for _ in range(steps):
        for b in bodies:
            b.step(bodies, 0.001)
    return sum(b.pos.x for b in bodies)


def primes():
    """Every prime, lazily (trial division by the primes found so far)."""
    found: list[int] = []
    n = 2
    while True:
        if all(n % p for p in found if p * p <= n):
            found.append(n)
            yield n
        n += 1


def first_primes(count: int) -> list[int]:
    return list(itertools.islice(primes(), count))


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def make_cycles(count: int) -> list[Node]:
    """Pairs of objects that point at each other: only the cycle collector frees them."""
    nodes = []
    for _ in range(count):
        a, b = Node(), Node()
        a.other, b.other = b, a
        nodes.append(a)
    return nodes


def sleeper(seconds: float) -> None:
    time.sleep(seconds)


def crunch(n: int) -> int:
    """fib(n) in a thread: two at once wait for each other's GIL."""
    return fib(n)


def write_files(root: str, count: int) -> int:
    total = 0
    for i in range(count):
        path = os.path.join(root, f"part-{i}.txt")
        with open(path, "w") as f:
            total += f.write(f"line {i}\n" * 2000)
            f.flush()
            os.fsync(f.fileno())
    return total


def read_files(root: str) -> int:
    total = 0
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name)) as f:
            total += sum(1 for _ in f)
    return total


def main() -> None:
    t = threading.Thread(target=sleeper, args=(0.05,), name="sleeper")
    t.start()
    print(f"fib(23) = {fib(23)}")
    print(f"simulate: {simulate(12, 60):.3f}")
    print(f"primes: the 1000th is {first_primes(1000)[-1]}")
    cycles = make_cycles(20_000)
    del cycles  # now 40,000 unreachable objects (and their dicts) wait in an old generation
    print(f"gc.collect() freed {gc.collect()} objects")
    with tempfile.TemporaryDirectory(prefix="scope-demo-") as root:
        written = write_files(root, 5)
        print(f"files: wrote {written} bytes, read back {read_files(root)} lines")
    crunchers = [threading.Thread(target=crunch, args=(22,), name=f"cruncher-{i}")
                 for i in range(2)]
    for c in crunchers:
        c.start()
    for c in crunchers:
        c.join()
    print("crunchers: two fib(22) in threads, one GIL")
    t.join()


if __name__ == "__main__":
    main()
