"""Functions enough to wrap the names ring buffer (argv: count per file):
first `n` in a file of a long name, then `n` in one of a short name, each
called once, paced so that the tracer drains the ring between them. Names
written over longer ones show what the kernel leaves after a NUL."""

import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
LONG = "/tmp/scope-tests/a_file_name_long_enough_to_leave_bytes_behind_it_in_the_ring.py"
SHORT = "s.py"

for prefix, file in (("l", LONG), ("s", SHORT)):
    ns: dict = {}
    src = "".join(f"def {prefix}{i}():\n    pass\n" for i in range(N))
    exec(compile(src, file, "exec"), ns)
    for i in range(N):
        ns[f"{prefix}{i}"]()
        if i % 20 == 19:
            time.sleep(0.002)
