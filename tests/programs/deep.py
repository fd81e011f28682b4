"""Recursion past the tracer's shadow stack, a hot function and an excluded one.
argv: depth, repeats."""
import sys

sys.setrecursionlimit(10_000)


def down(n):
    return 0 if n == 0 else 1 + down(n - 1)


def hot(i):
    return i + 1


def leaf(i):
    return i


def main(depth, repeats):
    for _ in range(repeats):
        down(depth)
    for i in range(300_000):
        hot(i)
    for i in range(200_000):
        leaf(i)


main(int(sys.argv[1]), int(sys.argv[2]))
