import sys
import threading


def work(n):
    return n if n < 2 else work(n - 1) + work(n - 2)


threads = [threading.Thread(target=work, args=(12,)) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
