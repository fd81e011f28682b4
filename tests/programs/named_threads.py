import ctypes
import threading
import time

libc = ctypes.CDLL(None)


def work():
    return 1


def worker(name, n):
    libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: the kernel's thread name
    time.sleep(1.5)  # --thread-name is resolved once a second
    for _ in range(n):
        work()


threads = [threading.Thread(target=worker, args=(name, n))
           for name, n in (("worker-a", 300), ("worker-b", 200))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(" ".join(str(t.native_id) for t in threads))
