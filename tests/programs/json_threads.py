"""Named threads: json-1 and json-2 call encode() 300 and 200 times, the others
less; blip ends at once (a thread shorter than the tracer's poll interval).

Prints "name native_id" per thread. The threads wait before working, so that
--thread-name (decided when the name is known) selects them before their first
call; argv[1]: how long (default 1 s)."""
import json
import sys
import threading
import time

N = {"json-1": 300, "json-2": 200, "other-1": 100, "a-long-thread-name-json-1": 50, "blip": 0}


def work(name):
    if not N[name]:
        return
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
    for i in range(N[name]):
        encode({"i": i})


def encode(obj):
    return json.dumps(obj)


threads = [threading.Thread(target=work, args=(name,), name=name) for name in N]
for t in threads:
    t.start()
for t in threads:
    t.join()
for t in threads:
    print(t.name, t.native_id)
