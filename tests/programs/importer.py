import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scope_test_mod  # noqa: E402

with open(sys.argv[1], "w") as f:
    f.write(str(scope_test_mod.VALUE))
