"""Instantiation hot enough to be specialised (3.13 runs such __init__ inline
in the caller's eval loop): plain, nested, and raising ones."""


class Point:
    def __init__(self, x):
        self.x = x


class Outer:
    def __init__(self, x):
        self.p = Point(x)


class Bad:
    def __init__(self, x):
        if x % 3 == 0:
            raise ValueError(x)
        self.x = x


def make(n):
    failed = 0
    for i in range(n):
        Point(i)
        Outer(i)
        try:
            Bad(i)
        except ValueError:
            failed += 1
    return failed


print(make(3000))
