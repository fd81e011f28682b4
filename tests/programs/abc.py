import sys
import time


def a():
    return 1


def b():
    return 2


def c():
    return 3


a(), b(), c()   # first calls: the controller decides on each function once
time.sleep(0.3)
n_a, n_b, n_c = (int(x) for x in sys.argv[1:4])
for _ in range(n_a):
    a()
for _ in range(n_b):
    b()
for _ in range(n_c):
    c()
