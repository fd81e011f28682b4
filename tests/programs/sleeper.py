import threading
import time


def nap():
    time.sleep(0.1)


def worker():
    nap()


t = threading.Thread(target=worker, name="napper")
t.start()
t.join()
