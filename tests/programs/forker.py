import os
import sys

sys.setprofile(slice)


def in_child():
    return 1


def in_parent():
    return 2


pid = os.fork()
if pid == 0:
    for _ in range(7):
        in_child()
    os._exit(0)
os.waitpid(pid, 0)
for _ in range(3):
    in_parent()
print(pid, flush=True)
