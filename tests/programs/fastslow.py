import time


def fast():
    return 1


def slow():
    time.sleep(0.003)


for _ in range(200):
    fast()
for _ in range(20):
    slow()
